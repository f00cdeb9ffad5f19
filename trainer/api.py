"""Admin routes: trigger a retrain, read the status, metrics and health. Thin: they delegate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from inkwell.errors import InkwellError, RetryLaterError
from inkwell.web.http import require_key
from trainer.worker import Worker

router = APIRouter()


class AdminDisabledError(InkwellError):
    code = "admin_disabled"
    status_code = 503


class TrainerNotReadyError(RetryLaterError):
    code = "trainer_not_ready"


def _not_ready(request: Request) -> TrainerNotReadyError:
    reason = request.app.state.not_ready or "The trainer is starting."
    return TrainerNotReadyError(
        f"The trainer is not ready: {reason} It retries by itself; retry this request later.",
        retry_after_s=request.app.state.database_retry_s,
    )


def get_worker(request: Request) -> Worker:
    """The worker; 503 with Retry-After while the trainer still waits for its database."""
    worker: Worker | None = request.app.state.worker
    if worker is None:
        raise _not_ready(request)
    return worker


WorkerDep = Annotated[Worker, Depends(get_worker)]


def require_api_key(worker: WorkerDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Checks `X-API-Key` against INKWELL_TRAINER_ADMIN_API_KEY (constant-time)."""
    expected = worker.settings.admin_api_key
    if expected is None:
        raise AdminDisabledError(
            "Manual retraining over HTTP is disabled: set INKWELL_TRAINER_ADMIN_API_KEY on the "
            "trainer, or run `inkwell trainer retrain` on its machine."
        )
    require_key(
        x_api_key,
        [expected.get_secret_value()],
        missing="Missing X-API-Key header; send the trainer's admin API key "
        "(INKWELL_TRAINER_ADMIN_API_KEY).",
        wrong="Wrong X-API-Key header; send the trainer's admin API key "
        "(INKWELL_TRAINER_ADMIN_API_KEY).",
    )


@router.post("/v1/retrain", status_code=202, dependencies=[Depends(require_api_key)])
async def request_retrain(worker: WorkerDep) -> dict[str, Any]:
    """Retrain at the next poll (202); 409 if one is running or nothing is pending."""
    pending = await run_in_threadpool(worker.request)
    return {"accepted": True, "pending": pending.count, "users": len(pending.per_user)}


@router.get("/v1/status")
async def status(worker: WorkerDep) -> dict[str, Any]:
    """Watermark, pending samples, the active and last job, stable/canary versions."""
    return await run_in_threadpool(worker.status)


@router.get("/metrics")
async def metrics(worker: WorkerDep) -> Response:
    """Prometheus metrics (`inkwell_trainer_*`)."""
    return Response(
        worker.retrainer.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    """Alive (also while waiting for the database), and whether the worker thread is polling."""
    worker: Worker | None = request.app.state.worker
    return {
        "status": "ok",
        "ready": worker is not None,
        "worker_alive": worker is not None and worker.alive,
    }


@router.get("/readyz")
async def readyz(worker: WorkerDep) -> dict[str, Any]:
    """200 once the sample database is open and the worker exists; 503 with the reason before."""
    return {"status": "ready", "worker_alive": worker.alive}
