"""The router's one error map: domain errors become `{"code", "message"}` JSON responses.

Errors a service returns pass through the proxy unchanged; this map covers only what the router
itself refuses (bad override header, oversize body, admin key, stable down, rollout conflicts).
"""

from __future__ import annotations

from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from inkwell.errors import InkwellError


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the router raises to one JSON shape."""

    async def inkwell_error(_: Request, exc: Exception) -> JSONResponse:
        error = cast(InkwellError, exc)
        return error_response(error.status_code, error.code, error.message)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in cast(RequestValidationError, exc).errors()
        )
        return error_response(422, "invalid_input", f"the request is not valid: {problems}")

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        error = cast(HTTPException, exc)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))

    app.add_exception_handler(InkwellError, inkwell_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
