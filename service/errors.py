"""The one error map: every failure becomes JSON `{"code", "message"}` with the right status.

Domain errors come from `inkwell.errors`; FastAPI/Starlette's own (unknown route, wrong method,
header validation) are translated here too, so no client ever sees another error format.
Responses on the Open Inference Protocol routes (`/v2/...`) also carry `error`, the field
KServe/Triton clients read.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inkwell.errors import InkwellError, OverloadedError, RetryLaterError

log = logging.getLogger("inkwell.service.errors")

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
    422: "invalid_request",
    429: "too_many_requests",
}
HTTP_MESSAGES = {
    404: "No such route. See /docs for the service's routes.",
    405: "This route does not accept that HTTP method. See /docs for the allowed methods.",
}


def error_body(path: str, code: str, message: str) -> dict[str, str]:
    body = {"code": code, "message": message}
    if path.startswith("/v2"):
        body["error"] = message
    return body


def error_response(
    request: Request, status: int, code: str, message: str, *, retry_after_s: int | None = None
) -> JSONResponse:
    """The JSON error response every handler (and the body-limit middleware) sends."""
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(
        error_body(request.url.path, code, message), status_code=status, headers=headers or None
    )


async def inkwell_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, InkwellError):  # pragma: no cover - registered for InkwellError
        raise exc
    retry_after = exc.retry_after_s if isinstance(exc, RetryLaterError) else None
    if exc.status_code >= 500 and not isinstance(exc, OverloadedError):  # shed load is counted
        log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(
        request, exc.status_code, exc.code, exc.message, retry_after_s=retry_after
    )


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    message = "The request is invalid: " + "; ".join(parts) + ". See /docs for the schema."
    return error_response(request, 422, "invalid_request", message)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    status = exc.status_code
    code = HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
    detail = exc.detail if isinstance(exc.detail, str) else None
    try:
        default = HTTPStatus(status).phrase
    except ValueError:
        default = "Error"
    message = HTTP_MESSAGES.get(status) or detail or default
    return error_response(request, status, code, message)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        request,
        500,
        "internal_error",
        "The service failed unexpectedly; the request was not processed. Retry, and report it "
        "if it persists.",
    )


def register_error_handlers(app: FastAPI) -> None:
    """Install the error map on `app`."""
    app.add_exception_handler(InkwellError, inkwell_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
