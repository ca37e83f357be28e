"""Reading a method's named parameters: each read checks the type, and :meth:`Params.done`
refuses names the method does not know (all as JSON-RPC -32602 invalid params)."""

from __future__ import annotations

from typing import Any

from saltline.client_sdk.daemon.rpc import invalid_params

#: Text parameters longer than this are refused (a message's own limit is the server's).
MAX_TEXT = 1 << 20


class Params:
    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params
        self._seen: set[str] = set()

    def _get(self, name: str) -> Any:
        self._seen.add(name)
        return self._params.get(name)

    def has(self, name: str) -> bool:
        return self._params.get(name) is not None

    def string(self, name: str) -> str:
        value = self._get(name)
        if value is None:
            raise invalid_params(f"missing parameter: {name}")
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            raise invalid_params(f"{name} must be a non-empty string")
        return value

    def opt_string(self, name: str) -> str | None:
        return None if self._get(name) is None else self.string(name)

    def text(self, name: str) -> str:
        """A string that may be empty (a caption, a title)."""
        value = self._get(name)
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise invalid_params(f"{name} must be a string")
        return value

    def integer(self, name: str, *, minimum: int = 0) -> int:
        value = self._get(name)
        if value is None:
            raise invalid_params(f"missing parameter: {name}")
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise invalid_params(f"{name} must be an integer >= {minimum}")
        return value

    def opt_integer(self, name: str, *, minimum: int = 0) -> int | None:
        return None if self._get(name) is None else self.integer(name, minimum=minimum)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid_params(f"{name} must be true or false")
        return value

    def strings(self, name: str) -> list[str]:
        value = self._get(name)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise invalid_params(f"{name} must be a non-empty list of strings")
        return value

    def obj(self, name: str) -> dict[str, Any]:
        value = self._get(name)
        if not isinstance(value, dict):
            raise invalid_params(f"{name} must be an object")
        return value

    def done(self) -> None:
        unknown = sorted(set(self._params) - self._seen)
        if unknown:
            raise invalid_params("unknown parameter(s): " + ", ".join(unknown))
