"""The ``id`` path convertor: a path segment written ``{account_id:id}`` matches only a 16-byte id
in canonical base64url (22 characters), so ``/v1/accounts/me/device-list`` and
``/v1/keys/claim`` are never taken for an account id. Routing then agrees with the OpenAPI
document: a path that is not an id reaches no parameterised route (404, or 405 with ``Allow``
naming the literal route's methods), and a 405 lists exactly the methods of that resource.

Registered with Starlette when :mod:`saltline.server.api` is imported (before any route is compiled).
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor

#: 16 bytes of canonical unpadded base64url (the last character carries 4 zero bits).
ID_REGEX = "[A-Za-z0-9_-]{21}[AQgw]"


class IdConvertor(Convertor[str]):
    regex = ID_REGEX

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def register() -> None:
    register_url_convertor("id", IdConvertor())


register()
