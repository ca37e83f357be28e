"""JSON-RPC 2.0 without I/O: parse a request (or a batch), dispatch it to a method table, and
encode the responses. Transports (:mod:`~saltline.client_sdk.daemon.stream`,
:mod:`~saltline.client_sdk.daemon.http`) only move the text.

Errors (``error.code``):

=========  ==========================================================================
-32700     parse error: the text is not JSON
-32600     invalid request: not a request object, an empty batch, a batch too long
-32601     method not found
-32602     invalid params: a missing, unknown or mistyped parameter, or an unknown profile
-32603     internal error: a bug in the daemon (details in its log, never in the answer)
-32000     a Saltline error: ``message`` is the SDK's message, ``data.code`` a stable code
           (:func:`error_data`), ``data.type`` the exception class; also an answer over
           ``max_result`` bytes (``data.code`` ``result_too_large``)
=========  ==========================================================================
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from saltline.client_sdk.errors import SaltlineError, ServerError
from saltline.crypto.errors import CryptoError

log = logging.getLogger("saltline.client_sdk.daemon")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SALTLINE_ERROR = -32000

#: Requests in one batch at most (each may do network work).
MAX_BATCH = 100
#: Bytes of one answer (a batch's answers together) at most; past it the request is answered with
#: a -32000 error whose ``data.code`` is ``result_too_large``.
MAX_RESULT = 8 << 20

P = TypeVar("P")  # what a transport tells a method about the caller (its connection)
Method = Callable[[dict[str, Any], P], Awaitable[Any]]


class RpcError(Exception):
    """An error answered as is: ``code``, ``message`` and optional ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


def _snake(name: str) -> str:
    name = name.removesuffix("Error") or name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_data(exc: BaseException) -> dict[str, Any]:
    """``data`` of a -32000 error: ``code`` (the exception class in snake case without ``Error``:
    ``usage``, ``not_allowed``, ``message_too_large``, ``network``, ``not_found``, ``auth``,
    ``identity_changed``, ``timeout``...), ``type`` (the class name); a server refusal adds
    ``status`` and ``server_code`` (the server's problem code)."""
    if isinstance(exc, TimeoutError):
        return {"code": "timeout", "type": "TimeoutError"}
    data: dict[str, Any] = {"code": _snake(type(exc).__name__), "type": type(exc).__name__}
    if isinstance(exc, ServerError):
        data["status"] = exc.status
        data["server_code"] = exc.code
    return data


def error_object(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error


def response_error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error_object(code, message, data), "id": request_id}


def notification(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def encode(message: Any) -> str:
    """One JSON text, ASCII only: no newline inside (the stream transports frame by lines, and
    U+2028, U+2029 and U+0085 are escaped too), and a lone surrogate is escaped, never an
    encoding error."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def result_too_large(request_id: Any, limit: int) -> dict[str, Any]:
    return response_error(
        request_id,
        SALTLINE_ERROR,
        f"result too large: the answer is over {limit} bytes (ask for less, e.g. a smaller limit)",
        {"code": "result_too_large", "type": "ResultTooLarge"},
    )


class Parsed:
    """A parsed text: ``message`` (the JSON value), or ``error`` (the answer to a text that is not JSON)."""

    def __init__(self, message: Any = None, error: dict[str, Any] | None = None) -> None:
        self.message = message
        self.error = error

    @property
    def weight(self) -> int:
        """How many requests it holds (a batch counts each of its requests)."""
        if isinstance(self.message, list):
            return max(1, min(len(self.message), MAX_BATCH))
        return 1


def parse(text: str | bytes) -> Parsed:
    try:
        return Parsed(json.loads(text))
    except RecursionError:
        return Parsed(error=response_error(None, PARSE_ERROR, "parse error: nested too deeply"))
    except (ValueError, UnicodeDecodeError) as exc:
        return Parsed(error=response_error(None, PARSE_ERROR, f"parse error: {exc}"))


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class Dispatcher(Generic[P]):
    """Answers JSON-RPC text with a method table. ``methods[name](params, peer)`` returns the
    result (anything :func:`json.dumps` takes) or raises :class:`RpcError`,
    :class:`SaltlineError` or :class:`TimeoutError`; anything else is an internal error."""

    def __init__(self, methods: Mapping[str, Method[P]], *, max_result: int = MAX_RESULT) -> None:
        self.methods = dict(methods)
        self.max_result = max_result

    async def handle_text(self, text: str | bytes | Parsed, peer: P) -> str | None:
        """The response text to ``text`` (a request or a batch), or None when nothing is
        answered (notifications only)."""
        parsed = text if isinstance(text, Parsed) else parse(text)
        if parsed.error is not None:
            return encode(parsed.error)
        result = await self.handle(parsed.message, peer)
        return None if result is None else encode(result)

    async def handle(self, message: Any, peer: P) -> Any:
        """The response (a dict, a list for a batch) to a parsed message, or None."""
        if isinstance(message, list):
            if not message:
                return response_error(None, INVALID_REQUEST, "invalid request: empty batch")
            if len(message) > MAX_BATCH:
                return response_error(
                    None, INVALID_REQUEST, f"invalid request: more than {MAX_BATCH} in a batch"
                )
            kept: list[dict[str, Any]] = []
            budget = self.max_result
            for item in message:
                answer = await self.handle_one(item, peer)
                if answer is None:
                    continue
                size = len(encode(answer))
                if size > budget:
                    answer = result_too_large(answer.get("id"), self.max_result)
                    size = len(encode(answer))
                budget -= size
                kept.append(answer)
            return kept or None
        return await self.handle_one(message, peer)

    async def handle_one(self, request: Any, peer: P) -> dict[str, Any] | None:
        if not isinstance(request, dict):
            return response_error(None, INVALID_REQUEST, "invalid request: not an object")
        request_id = request.get("id")
        if not _valid_id(request_id):
            return response_error(
                None, INVALID_REQUEST, "invalid request: id must be a string, an integer or null"
            )
        is_notification = "id" not in request
        method = request.get("method")
        params = request.get("params", {})
        if request.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return response_error(
                request_id, INVALID_REQUEST, 'invalid request: needs "jsonrpc": "2.0" and a method'
            )
        if not isinstance(params, (dict, list)):
            return response_error(request_id, INVALID_REQUEST, "invalid request: params must be an object")
        try:
            result = await self.call(method, params, peer)
        except RpcError as exc:
            answer = response_error(request_id, exc.code, exc.message, exc.data)
        except (SaltlineError, CryptoError, TimeoutError) as exc:
            answer = response_error(
                request_id, SALTLINE_ERROR, str(exc) or type(exc).__name__, error_data(exc)
            )
        except Exception:
            log.exception("method %s failed", method)
            answer = response_error(request_id, INTERNAL_ERROR, "internal error (see the daemon's log)")
        else:
            answer = {"jsonrpc": "2.0", "result": result, "id": request_id}
            try:
                if len(encode(answer)) > self.max_result:
                    answer = result_too_large(request_id, self.max_result)
            except (TypeError, ValueError, RecursionError):
                log.exception("method %s returned what JSON cannot hold", method)
                answer = response_error(request_id, INTERNAL_ERROR, "internal error (see the daemon's log)")
        return None if is_notification else answer

    async def call(self, method: str, params: dict[str, Any] | list[Any], peer: P) -> Any:
        fn = self.methods.get(method)
        if fn is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
        if isinstance(params, list):
            if params:
                raise invalid_params("params must be an object (named parameters)")
            params = {}
        return await fn(params, peer)
