"""Dependencies as `Annotated` aliases, so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from inkwell.errors import AuthError
from inkwell.store import SampleStore
from service.batching import MicroBatcher
from service.context import ServiceContext
from service.metrics import ServiceMetrics
from service.model import DigitModel
from service.settings import ServiceSettings


def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


ContextDep = Annotated[ServiceContext, Depends(get_context)]


def get_settings(context: ContextDep) -> ServiceSettings:
    return context.settings


def get_model(context: ContextDep) -> DigitModel:
    return context.model


def get_batcher(context: ContextDep) -> MicroBatcher:
    return context.batcher


def get_store(context: ContextDep) -> SampleStore:
    return context.store


def get_metrics(context: ContextDep) -> ServiceMetrics:
    return context.metrics


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
ModelDep = Annotated[DigitModel, Depends(get_model)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
StoreDep = Annotated[SampleStore, Depends(get_store)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
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


def require_api_key(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> None:
    """Uploads and sample statistics always need a key."""
    check_api_key(settings, x_api_key)


def prediction_access(settings: SettingsDep, x_api_key: ApiKeyHeader = None) -> None:
    """Predictions are open unless INKWELL_SERVICE_PREDICT_REQUIRES_KEY is set."""
    if settings.predict_requires_key:
        check_api_key(settings, x_api_key)


ApiKeyRequired = Depends(require_api_key)
PredictionAccess = Depends(prediction_access)
