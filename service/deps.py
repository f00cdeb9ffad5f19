"""Dependencies as `Annotated` aliases, so route signatures read like prose.

They are `async def` on purpose: FastAPI runs plain `def` dependencies in a worker thread,
which for these non-blocking look-ups costs more than the whole prediction.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Header, Request

from inkwell.errors import AuthError
from inkwell.store import SampleStore
from service.batching import MicroBatcher
from service.cheques import ChequeModel
from service.context import ServiceContext
from service.inputs import Decoding
from service.keys import KeyGrant
from service.metrics import ServiceMetrics
from service.model import DigitModel
from service.settings import ServiceSettings


async def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


ContextDep = Annotated[ServiceContext, Depends(get_context)]


async def get_settings(context: ContextDep) -> ServiceSettings:
    return context.settings


async def get_model(context: ContextDep) -> DigitModel:
    return context.model


async def get_batcher(context: ContextDep) -> MicroBatcher:
    return context.batcher


async def get_cheques(context: ContextDep) -> ChequeModel:
    return context.cheques


async def get_store(context: ContextDep) -> SampleStore:
    """The sample store (opened off the event loop); 503 while the database is down."""
    return await context.with_store(lambda store: store)


async def get_metrics(context: ContextDep) -> ServiceMetrics:
    return context.metrics


async def get_decoding(context: ContextDep) -> Decoding:
    return context.decoding


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
ModelDep = Annotated[DigitModel, Depends(get_model)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
StoreDep = Annotated[SampleStore, Depends(get_store)]
ChequeModelDep = Annotated[ChequeModel, Depends(get_cheques)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
DecodingDep = Annotated[Decoding, Depends(get_decoding)]
ApiKeyHeader = Annotated[
    str | None, Header(alias="X-API-Key", description="One of INKWELL_SERVICE_API_KEYS.")
]


def check_api_key(settings: ServiceSettings, key: str | None) -> None:
    """Raise AuthError unless `key` is configured; messages say how to fix it."""
    if not settings.api_keys:
        raise AuthError(
            "This route needs an API key, and none is configured on the service. Set "
            "INKWELL_SERVICE_API_KEYS (comma-separated) and send one in the X-API-Key header.",
            code="api_key_required",
        )
    if not key:
        raise AuthError(
            "Missing API key. Send one of the service's keys in the X-API-Key header.",
            code="api_key_required",
        )
    if not settings.accepts_key(key):
        raise AuthError(
            "The X-API-Key is not valid. Check the key, or ask for one.", code="invalid_api_key"
        )


async def require_api_key(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> None:
    """Uploads and sample statistics always need a key."""
    check_api_key(settings, x_api_key)


async def prediction_context(request: Request) -> ServiceContext:
    """The context for prediction routes, after the key check when predictions are keyed.

    One dependency reading the header itself: every resolved dependency costs tens of
    microseconds, and this is the hot path.
    """
    context: ServiceContext = request.app.state.context
    if context.settings.predict_requires_key:
        check_api_key(context.settings, request.headers.get("x-api-key"))
    return context


ApiKeyRequired = Depends(require_api_key)
PredictContextDep = Annotated[ServiceContext, Depends(prediction_context)]


async def prediction_access(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> None:
    """Prediction-like routes (cheques) need a key only when predictions are keyed."""
    if settings.predict_requires_key:
        check_api_key(settings, x_api_key)


PredictionAccess = Depends(prediction_access)


async def admit_upload(context: ContextDep, x_api_key: ApiKeyHeader = None) -> KeyGrant:
    """The uploading key's grant, once the key is valid and within its rate limit and quota."""
    check_api_key(context.settings, x_api_key)
    grant = context.settings.grant_for(x_api_key)
    if grant is None:  # pragma: no cover - check_api_key refused it
        raise AuthError("The X-API-Key is not valid.", code="invalid_api_key")
    context.upload_limiter.admit(grant.key)
    if context.upload_quota is not None:  # counted in the database: off the event loop
        await asyncio.to_thread(context.upload_quota.admit, grant.key)
    return grant


UploadGrantDep = Annotated[KeyGrant, Depends(admit_upload)]
