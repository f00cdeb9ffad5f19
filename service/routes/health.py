"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from inkwell.errors import ModelNotReadyError
from service.deps import ChequeModelDep, MetricsDep, ModelDep
from service.schemas import HealthPublic, ReadyPublic

router = APIRouter(tags=["health"])


def not_ready(model_name: str, variant: str) -> ModelNotReadyError:
    return ModelNotReadyError(
        f"No {model_name}@{variant} model is loaded yet. Register one and give it the alias "
        f"{variant!r} (e.g. `inkwell train`); the service picks it up within one poll interval."
    )


@router.get("/healthz", response_model=HealthPublic)
async def healthz() -> HealthPublic:
    """The process is alive (it answers even while no model is loaded)."""
    return HealthPublic(status="ok")


@router.get("/readyz", response_model=ReadyPublic, responses={503: {"description": "No model"}})
async def readyz(model: ModelDep, cheques: ChequeModelDep) -> ReadyPublic:
    """A model is loaded and predictions can be served."""
    served = model.current
    if served is None:
        raise not_ready(model.name, model.variant)
    return ReadyPublic(
        status="ready",
        model_name=served.name,
        model_version=served.version,
        variant=served.variant,
        cheque_model_version=cheques.version,
    )


@router.get("/metrics", response_class=Response)
async def metrics(service_metrics: MetricsDep) -> Response:
    """Prometheus text exposition of the service's metrics."""
    return Response(service_metrics.render(), media_type=service_metrics.content_type)
