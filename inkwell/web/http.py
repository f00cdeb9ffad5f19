"""The HTTP plumbing the service, the router and the trainer share: one error map, key checks
and key files.

Every failure becomes JSON `{"code", "message"}` with the right status, in one vocabulary of
codes (docs/service.md lists them): domain errors come from `inkwell.errors`; FastAPI and
Starlette's own (unknown route, wrong method, request validation) are translated here too, so
no client of any component sees another error format. Responses on the Open Inference
Protocol routes (`/v2/...`) also carry `error`, the field KServe/Triton clients read.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inkwell.errors import AuthError, InkwellError, OverloadedError, RetryLaterError

# The one code per meaning. Kept from the service (the public API, whose clients may read
# them); the router's `invalid_input` and `missing_api_key` and the trainer's `unauthorized`
# for the same meanings are gone.
INVALID_REQUEST = "invalid_request"  # the request does not fit the route's schema (422)
API_KEY_REQUIRED = "api_key_required"  # no key sent, or none configured (401)
INVALID_API_KEY = "invalid_api_key"  # a key was sent but it is not the right one (401)
INTERNAL_ERROR = "internal_error"

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: INVALID_REQUEST,
    429: "too_many_requests",
}
OIP_PREFIX = "/v2"

log = logging.getLogger("inkwell.web.http")


def error_body(path: str, code: str, message: str) -> dict[str, str]:
    """The JSON body of an error on `path` (OIP routes also get `error`)."""
    body = {"code": code, "message": message}
    if path.startswith(OIP_PREFIX):
        body["error"] = message
    return body


def error_response(
    status: int, code: str, message: str, *, path: str = "", retry_after_s: int | None = None
) -> JSONResponse:
    """The JSON error response every handler, middleware and proxy of every component sends."""
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(
        error_body(path, code, message), status_code=status, headers=headers or None
    )


def validation_message(exc: RequestValidationError, docs_hint: str) -> str:
    """What was wrong with each field of an invalid request, and where the schema is."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        what = str(err.get("msg", "invalid"))
        parts.append(f"{where}: {what}" if where else what)
    return f"The request is invalid: {'; '.join(parts)}. {docs_hint}".rstrip()


def register_error_handlers(
    app: FastAPI, *, name: str, routes_hint: str, docs_hint: str = ""
) -> None:
    """Install the one error map on `app`; the hints say where `name`'s routes are listed."""
    component_log = logging.getLogger(f"inkwell.{name}.errors")
    messages = {
        404: f"No such route. {routes_hint}",
        405: f"This route does not accept that HTTP method. {routes_hint}",
    }

    async def inkwell_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, InkwellError):  # pragma: no cover - registered for InkwellError
            raise exc
        retry_after = exc.retry_after_s if isinstance(exc, RetryLaterError) else None
        if exc.status_code >= 500 and not isinstance(exc, OverloadedError):  # shed is counted
            component_log.warning(
                "%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message
            )
        return error_response(
            exc.status_code,
            exc.code,
            exc.message,
            path=request.url.path,
            retry_after_s=retry_after,
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            raise exc
        message = validation_message(exc, docs_hint)
        return error_response(422, INVALID_REQUEST, message, path=request.url.path)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        status = exc.status_code
        code = HTTP_CODES.get(status, "http_error" if status < 500 else INTERNAL_ERROR)
        detail = exc.detail if isinstance(exc.detail, str) else None
        try:
            default = HTTPStatus(status).phrase
        except ValueError:
            default = "Error"
        message = messages.get(status) or detail or default
        return error_response(status, code, message, path=request.url.path)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        component_log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            INTERNAL_ERROR,
            f"The {name} failed unexpectedly; the request was not processed. Retry, and report "
            "it if it persists.",
            path=request.url.path,
        )

    app.add_exception_handler(InkwellError, inkwell_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def matching_key(presented: str | None, accepted: Sequence[str]) -> int | None:
    """The index of the accepted key `presented` is (constant-time compare), or None."""
    if not presented:
        return None
    given = presented.encode()
    found = None
    for index, key in enumerate(accepted):  # no early exit: the time does not tell which key
        if hmac.compare_digest(given, key.encode()):
            found = index
    return found


def require_key(
    presented: str | None,
    accepted: Sequence[str],
    *,
    missing: str,
    wrong: str,
    missing_code: str = API_KEY_REQUIRED,
    wrong_code: str = INVALID_API_KEY,
) -> str:
    """The accepted key `presented` is, else AuthError (401) with the `missing`/`wrong` advice.

    No accepted keys at all reads as missing: the message must say where the key is set.
    """
    if not presented or not accepted:
        raise AuthError(missing, code=missing_code)
    index = matching_key(presented, accepted)
    if index is None:
        raise AuthError(wrong, code=wrong_code)
    return accepted[index]


def new_key() -> str:
    """A fresh random API key."""
    return secrets.token_urlsafe(24)


def key_file(path: Path, *, create: bool = True) -> str | None:
    """The key kept in `path`, made (owner-only, atomically) on first use with `create`.

    An empty or missing file without `create` is None. When two processes start at once, both
    return the key the first one wrote.
    """
    if path.exists():
        key = path.read_text().strip()
        if key or not create:
            return key or None
    elif not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")  # per thread too
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, new_key().encode())
    finally:
        os.close(fd)
    try:
        # link, not rename: atomic, and it fails when another process made the key first
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
