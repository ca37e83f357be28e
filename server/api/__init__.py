from saltline.server.api import path_ids as _path_ids  # noqa: F401  (registers the ``id`` path convertor)
