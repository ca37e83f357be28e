"""Saltline: end-to-end encrypted multi-device messaging.

Subpackages: :mod:`saltline.client_sdk` (the SDK and the ``saltline`` CLI), :mod:`saltline.crypto`
(the cryptographic core, PyNaCl only) and :mod:`saltline.server` (the relay; needs the ``server``
extra: ``pip install 'saltline[server]'``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("saltline")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"
