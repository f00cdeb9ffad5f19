"""The trainer admin API's one error map: every failure becomes `{"code", "message"}` JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inkwell.errors import InkwellError, RetryLaterError

log = logging.getLogger("inkwell.trainer.errors")


def error_response(
    status: int, code: str, message: str, *, retry_after_s: int | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


async def _inkwell_error(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, InkwellError):  # pragma: no cover - registered for InkwellError
        raise exc
    if exc.status_code >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    retry_after = exc.retry_after_s if isinstance(exc, RetryLaterError) else None
    return error_response(exc.status_code, exc.code, exc.message, retry_after_s=retry_after)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    detail = "; ".join(str(err.get("msg", "invalid")) for err in exc.errors())
    return error_response(422, "invalid_request", f"The request is invalid: {detail}.")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {
        404: "No such route. The trainer serves /v1/retrain, /v1/status, /metrics, /healthz "
        "and /readyz.",
        405: "This route does not accept that HTTP method.",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message)


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InkwellError, _inkwell_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
