"""Render every error as ``application/problem+json`` (RFC 9457).

- :class:`saltline.server.errors.Problem` raised by services or routes;
- request validation errors (422 ``validation_failed``, with the failing locations but never the
  submitted values, which may be passwords);
- Starlette's own 404/405 and other HTTP errors;
- anything unexpected: logged by type and route only (no message, which could carry data) and
  answered with a 500 ``internal_error``. Bad input must never get here.

:class:`GuardMiddleware` also refuses bodies larger than ``max_body_bytes`` with 413.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saltline.server.api.openapi_strict import apply_settings_limits
from saltline.server.api.validation_codes import specific_problem
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH

log = logging.getLogger("saltline.server.errors")
PROBLEM_MEDIA_TYPE = "application/problem+json"

_STATUS_CODES: dict[int, ProblemCode] = {
    400: ProblemCode.VALIDATION_FAILED,
    401: ProblemCode.UNAUTHORIZED,
    403: ProblemCode.FORBIDDEN,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.CONFLICT,
    413: ProblemCode.PAYLOAD_TOO_LARGE,
    422: ProblemCode.VALIDATION_FAILED,
    429: ProblemCode.RATE_LIMITED,
    503: ProblemCode.SERVICE_UNAVAILABLE,
}


def problem_response(problem: Problem) -> Response:
    return Response(
        content=orjson.dumps(problem.to_dict()),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Locations, types and messages of validation errors, never the submitted values."""
    out = []
    for err in errors[:20]:
        out.append(
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "type": str(err.get("type", "")),
                "msg": str(err.get("msg", "")),
            }
        )
    return out


async def _on_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    code, field = specific_problem(errors, request.method, request.scope["path"])
    extra: dict[str, Any] = {"errors": validation_errors(errors)}
    if field is not None:
        extra["field"] = field
    detail = "the request does not match the schema"
    if code is not ProblemCode.VALIDATION_FAILED:
        detail = _SPECIFIC_DETAILS.get(code, detail)
    return problem_response(Problem(422, code, detail, **extra))


_SPECIFIC_DETAILS = {
    ProblemCode.USERNAME_INVALID: "usernames are 3-32 characters of a-z, 0-9, '_', '.', '-'",
    ProblemCode.PASSWORD_WEAK: (
        f"passwords are {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long"
    ),
    ProblemCode.MALFORMED_KEY: "a key, signature or binary field is not the expected unpadded base64url",
    ProblemCode.PREKEY_KIND_MISMATCH: "a prekey of another kind was sent in this field",
}


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, ProblemCode.VALIDATION_FAILED)
    detail = exc.detail if isinstance(exc.detail, str) else ""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app.routes, request.scope))
    return problem_response(Problem(exc.status_code, code, detail, headers=headers))


#: Methods a 405's ``Allow`` may name (HEAD: Starlette answers it for every GET route).
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(routes: Sequence[Any], scope: Scope) -> list[str]:
    """Every method for which some route of the app matches this request's path in full
    (Starlette's own 405 names only the first route that matched the path):
    ``/v1/accounts/me/device-list`` is both ``PUT /v1/accounts/me/device-list`` and ``GET
    /v1/accounts/{account_id}/device-list``. Asked of the routes themselves (``matches``), so
    included routers and parameterised paths are matched as the router would."""
    allowed = []
    for method in HTTP_METHODS:
        probe = {**scope, "type": "http", "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


async def _on_unexpected(_request: Request, _exc: Exception) -> Response:
    """Starlette's outermost ServerErrorMiddleware (an exception raised outside GuardMiddleware,
    e.g. in FastAPI's own middleware) answers this instead of its plain-text 500; the exception
    is then re-raised to the server, which logs it."""
    return problem_response(Problem(500, ProblemCode.INTERNAL_ERROR, "an unexpected error occurred"))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)


class GuardMiddleware:
    """Outermost safety net (pure ASGI): request body size limit, and a problem+json 500 for
    any exception that escaped the handlers, logged without its message."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, *, large_bodies: tuple[str, str, int] | None = None
    ) -> None:
        """``large_bodies``: ``(method, path prefix, limit)`` of requests allowed a larger body
        (attachment uploads, which their route bounds further by the upload's length)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.large_bodies = large_bodies

    def _limit(self, scope: Scope) -> int:
        if self.large_bodies is not None:
            method, prefix, limit = self.large_bodies
            if scope.get("method") == method and str(scope.get("path", "")).startswith(prefix):
                return limit
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_body_bytes = self._limit(scope)
        too_large = Problem(
            413, ProblemCode.PAYLOAD_TOO_LARGE, f"request body exceeds {max_body_bytes} bytes"
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length < 0 or length > max_body_bytes:
                    await problem_response(too_large)(scope, receive, send)
                    return

        received = 0
        started = False
        overflowed = False

        async def limited_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body_bytes:
                    overflowed = True
                    raise too_large
            return message

        async def tracking_send(message: Message) -> None:
            # A body without Content-Length (chunked) is only found too large while the app reads
            # it, and the app may turn the exception into its own answer (FastAPI: 400 "error
            # parsing the body"): once the limit is passed, the answer is the 413, whatever the app
            # sends.
            nonlocal started
            if overflowed:
                if not started:
                    started = True
                    await problem_response(too_large)(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Problem as problem:
            if not started:
                await problem_response(problem)(scope, receive, send)
        except Exception as exc:
            route = scope.get("route")
            path = getattr(route, "path", None) or "<unrouted>"
            # The message is left out (it could carry request data); the frames are code only.
            log.error(
                "unhandled %s in %s %s\n%s",
                type(exc).__name__,
                scope.get("method", ""),
                path,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            if not started:
                await problem_response(
                    Problem(500, ProblemCode.INTERNAL_ERROR, "an unexpected error occurred")
                )(scope, receive, send)


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; `code` is a stable ProblemCode value.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": [c.value for c in ProblemCode]},
    },
    "required": ["type", "title", "status", "detail", "code"],
    "additionalProperties": True,
}


def install_problem_openapi(app: FastAPI) -> None:
    """Document that errors are ``application/problem+json``: FastAPI's generated 422
    (``HTTPValidationError``) is replaced, and every operation gets a ``default`` problem response."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        settings = getattr(app.state, "settings", None)
        if settings is not None:
            apply_settings_limits(schema, settings)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = PROBLEM_SCHEMA
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                for status, response in responses.items():
                    if status.isdigit() and int(status) >= 400:
                        response["content"] = ref
                responses["default"] = {"description": "Problem details (RFC 9457)", "content": ref}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
