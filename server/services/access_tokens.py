"""Verification of the server's own HS256 access tokens, without PyJWT's generic machinery.

Every HTTP request and every delivery socket open verifies an access token; in the reconnect
storm (issue 13) PyJWT's ``decode`` was ~5 % of the server's time, most of it in
``HMACAlgorithm.prepare_key`` (which scans the key for PEM and SSH markers on every call) and in
its generic header and claim handling. The server only ever verifies tokens it issued itself
(``jwt.encode`` with HS256 and this secret), so the check here is narrow and strict:

1. exactly three dot-separated ASCII parts;
2. the HMAC-SHA256 of ``header.payload`` under the secret, base64url without padding, equal
   (constant time) to the third part; nothing is decoded before this passes;
3. the header is exactly ``{"alg":"HS256","typ":"JWT"}`` (no ``none``, no other algorithm, no
   ``crit`` or ``kid``);
4. the payload is a JSON object.

The claims themselves (``typ``, ``sub``, ``acc``, ``exp``, ``fam``) are checked by the caller
(:meth:`saltline.server.services.auth.AuthService.decode_access_token`), as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

_HEADER = {"alg": "HS256", "typ": "JWT"}


class InvalidToken(ValueError):
    """The token is not one this server issued (malformed, or its signature does not verify)."""


def _b64url_decode(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


class HS256Verifier:
    """Verifies tokens signed with HS256 under ``secret`` (the key is set up once)."""

    __slots__ = ("_mac",)

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)

    def sign(self, signing_input: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(signing_input)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims if its signature and header verify; :class:`InvalidToken` otherwise."""
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError as exc:
            raise InvalidToken("not ASCII") from exc
        signing_input, dot, signature = raw.rpartition(b".")
        if not dot or signing_input.count(b".") != 1:
            raise InvalidToken("not three parts")
        if not hmac.compare_digest(self.sign(signing_input), signature):
            raise InvalidToken("bad signature")
        header_b64, _, payload_b64 = signing_input.partition(b".")
        try:
            header = orjson.loads(_b64url_decode(header_b64))
            payload = orjson.loads(_b64url_decode(payload_b64))
        except (ValueError, orjson.JSONDecodeError) as exc:  # our own signature: cannot happen
            raise InvalidToken("undecodable") from exc
        if header != _HEADER or not isinstance(payload, dict):
            raise InvalidToken("unexpected header or payload")
        return payload
