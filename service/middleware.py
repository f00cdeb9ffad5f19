"""Pure ASGI middleware at the HTTP edge: the request-body limit, the in-flight limit, metrics.

Pure ASGI (not BaseHTTPMiddleware) because it runs on every request of a hot path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inkwell.errors import OverloadedError, PayloadTooLargeError
from inkwell.web.http import error_body
from service.metrics import ServiceMetrics

MODEL_VERSION_KEY = "model_version"


def too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than {limit:,} bytes. Send a smaller image, fewer images "
        "per batch, or raise INKWELL_SERVICE_MAX_BODY_BYTES."
    )


class BodyLimitMiddleware:
    """Rejects bodies over `limit` bytes: by Content-Length up front, else while streaming.

    The error is raised from `receive`, i.e. inside the route, so the error map answers it.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        limit = self.limit
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


# Probes and scrapes must answer under overload: an orchestrator that sees them fail restarts a
# process that is merely busy, which turns overload into an outage.
UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics", "/v2/health/")


class InFlightLimitMiddleware:
    """Sheds requests beyond `limit` processed at once with 503 + Retry-After, at no cost.

    Health checks and metrics are never counted nor shed.
    """

    def __init__(
        self, app: ASGIApp, limit: int, retry_after_s: int, metrics: ServiceMetrics
    ) -> None:
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.metrics.request_shed("in_flight")
            error = OverloadedError(
                f"The service is overloaded: {self.in_flight} requests are being processed "
                f"(limit {self.limit}). Retry after {self.retry_after_s} s, or send fewer "
                "concurrent requests.",
                retry_after_s=self.retry_after_s,
            )
            response = JSONResponse(
                error_body(str(scope["path"]), error.code, error.message),
                status_code=error.status_code,
                headers={"Retry-After": str(self.retry_after_s)},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class MetricsMiddleware:
    """Counts and times every request by route template, method, status and model version."""

    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, current_version: Callable[[], str | None]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.current_version = current_version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            version = state.get(MODEL_VERSION_KEY) or self.current_version()
            self.metrics.observe_request(
                path, scope["method"], status, version, time.perf_counter() - started
            )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
