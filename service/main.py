"""Wiring only: build the FastAPI app from settings.

Run with `inkwell service` or `uvicorn service.main:create_app --factory`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from inkwell import __version__
from inkwell.web.headers import SecurityHeadersMiddleware
from inkwell.web.http import register_error_handlers
from service.context import ServiceContext
from service.middleware import BodyLimitMiddleware, InFlightLimitMiddleware, MetricsMiddleware
from service.routes import cheque_samples, cheques, digits, health, oip, samples
from service.settings import ServiceSettings


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service app for one variant; nothing is loaded until the lifespan starts."""
    settings = settings or ServiceSettings()
    context = ServiceContext(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await context.start()
        try:
            yield
        finally:
            await context.stop()

    app = FastAPI(
        title=f"Inkwell service ({settings.variant})",
        version=__version__,
        summary="Handwritten digit predictions and labelled sample uploads.",
        lifespan=lifespan,
    )
    app.state.context = context
    register_error_handlers(
        app,
        name="service",
        routes_hint="See /docs for the service's routes.",
        docs_hint="See /docs for the schema.",
    )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(
        InFlightLimitMiddleware,
        limit=settings.max_in_flight,
        retry_after_s=settings.retry_after_s,
        metrics=context.metrics,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(
        MetricsMiddleware, metrics=context.metrics, current_version=lambda: context.model.version
    )
    app.include_router(health.router)
    app.include_router(digits.router)
    app.include_router(cheques.router)
    app.include_router(cheque_samples.router)
    app.include_router(samples.router)
    app.include_router(oip.router)
    return app
