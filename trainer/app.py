"""Wiring only: the trainer's admin app, with the worker thread run by its lifespan.

Run with `inkwell trainer` or `uvicorn trainer.app:create_app --factory`.

The sample database is opened by the lifespan, not before it: with the database down the app
still starts, /healthz answers, /readyz and the worker's routes answer 503 with Retry-After,
and a background task retries every `database_retry_seconds` until the store opens.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from inkwell import __version__
from inkwell.errors import StoreUnavailableError
from inkwell.web.http import register_error_handlers
from trainer.api import router
from trainer.cheque_digits import ChequeDigitCutter
from trainer.cheque_job import ChequeRetrainer
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker, prepare

log = logging.getLogger("inkwell.trainer")


async def open_worker(settings: TrainerSettings, app: FastAPI, *, wait: bool) -> Worker | None:
    """The worker once its sample database answers; with `wait`, log and retry until it does."""
    while True:
        try:
            retrainer = await run_in_threadpool(Retrainer, settings)
        except StoreUnavailableError as exc:
            app.state.not_ready = exc.message
            log.warning(
                "trainer waiting for its database (retry in %.0f s): %s",
                settings.database_retry_seconds,
                exc.message,
            )
            if not wait:
                return None
            await asyncio.sleep(settings.database_retry_seconds)
            continue
        cheques = ChequeRetrainer(settings, store=retrainer.store, registry=retrainer.registry)
        digits = (
            ChequeDigitCutter(settings, store=retrainer.store, registry=retrainer.registry)
            if settings.cheque_digits
            else None
        )
        return Worker(retrainer, settings, cheques=cheques, digits=digits)


def create_app(
    settings: TrainerSettings | None = None, *, worker: Worker | None = None, poll: bool = True
) -> FastAPI:
    """The admin app; with `poll` the worker thread polls the store while the app runs."""
    settings = settings or TrainerSettings()

    def serve(app: FastAPI, ready: Worker) -> None:
        app.state.worker = ready
        app.state.not_ready = None
        if poll:
            ready.start()

    async def keep_trying(app: FastAPI) -> None:
        await asyncio.sleep(settings.database_retry_seconds)
        ready = await open_worker(settings, app, wait=True)
        if ready is not None:
            log.info("trainer database reachable again; worker starting")
            serve(app, ready)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(prepare, settings)
        ready = worker or await open_worker(settings, app, wait=False)
        retrying = None
        if ready is None:  # the database is down: serve health now, open the store later
            retrying = asyncio.create_task(keep_trying(app))
        else:
            serve(app, ready)
        try:
            yield
        finally:
            if retrying is not None:
                retrying.cancel()
                with suppress(asyncio.CancelledError):
                    await retrying
            if app.state.worker is not None:
                app.state.worker.stop(timeout=5)

    app = FastAPI(
        title="Inkwell trainer",
        version=__version__,
        summary="Continual-learning worker: retrain status, manual trigger and metrics.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.not_ready = None if worker else "The trainer is starting."
    app.state.database_retry_s = math.ceil(settings.database_retry_seconds)
    register_error_handlers(
        app,
        name="trainer",
        routes_hint="The trainer serves /v1/retrain, /v1/status, /metrics, /healthz and /readyz.",
    )
    app.include_router(router)
    return app
