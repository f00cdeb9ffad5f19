"""Wiring only: the trainer's admin app, with the worker thread run by its lifespan.

Run with `inkwell trainer` or `uvicorn trainer.app:create_app --factory`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from inkwell import __version__
from trainer.api import router
from trainer.cheque_job import ChequeRetrainer
from trainer.errors import register_error_handlers
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker, prepare


def create_app(
    settings: TrainerSettings | None = None, *, worker: Worker | None = None, poll: bool = True
) -> FastAPI:
    """The admin app; with `poll` the worker thread polls the store while the app runs."""
    settings = settings or TrainerSettings()
    worker = worker or Worker(Retrainer(settings), settings, cheques=ChequeRetrainer(settings))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(prepare, settings)
        if poll:
            worker.start()
        try:
            yield
        finally:
            worker.stop(timeout=5)

    app = FastAPI(
        title="Inkwell trainer",
        version=__version__,
        summary="Continual-learning worker: retrain status, manual trigger and metrics.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    register_error_handlers(app)
    app.include_router(router)
    return app
