"""Everything one service process holds while it runs, built once and started in the lifespan.

Construction does no I/O; `start()` sets torch threads, opens the sample store, seeds an empty
registry from the models shipped in the package (`INKWELL_SEED_SHIPPED`), tries the first
model load (the service still starts, not ready, when MLflow or the alias is missing), starts
the micro-batcher and the alias poller; `stop()` undoes it in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import torch
from starlette.concurrency import run_in_threadpool

from inkwell.store import SampleStore
from service.batching import MicroBatcher
from service.cheques import ChequeModel
from service.metrics import ServiceMetrics
from service.model import DigitModel, RefreshOutcome
from service.settings import ServiceSettings

log = logging.getLogger("inkwell.service")


def configure_torch(threads: int) -> None:
    """Intra-op threads as configured; one inter-op thread (one forward pass at a time)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)


class ServiceContext:
    """The service's long-lived parts: settings, metrics, model, batcher, sample store."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(settings.variant)
        self.model = DigitModel(settings, settings.variant, optimize=settings.optimize_model)
        self.batcher = MicroBatcher(
            self.model.predict,
            max_size=settings.microbatch_max_size,
            max_wait_s=settings.microbatch_max_wait_ms / 1000.0,
            on_batch=self.metrics.observe_batch,
        )
        self.cheques = ChequeModel(settings, settings.variant)
        self._store: SampleStore | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def store(self) -> SampleStore:
        if self._store is None:
            raise RuntimeError("ServiceContext.start() was not called")
        return self._store

    async def start(self) -> None:
        # An unreachable tracking server must fail fast, not retry for minutes, so the poller
        # comes back and the last good model keeps serving meanwhile.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        configure_torch(self.settings.torch_threads)
        self._store = await run_in_threadpool(SampleStore, self.settings.resolved_database_url)
        if self.settings.seed_shipped:
            await run_in_threadpool(self.seed_shipped)
        await self.refresh_model()
        await self.refresh_cheque_model()
        await self.batcher.start()
        self._poller = asyncio.create_task(self._poll(), name="inkwell-alias-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.batcher.stop()
        if self._store is not None:
            self._store.engine.dispose()

    def seed_shipped(self) -> None:
        """Register the shipped models the registry lacks; a failure only leaves it unready."""
        from inkwell.shipped import seed_registry

        kinds = ("digits", "cheques") if self.settings.cheques_enabled else ("digits",)
        try:
            for info in seed_registry(self.settings, kinds=kinds):
                log.info("seeded %s v%s from the shipped model", info.name, info.version)
        except Exception as exc:  # e.g. an unreachable tracking server: the poller retries loads
            log.warning("could not seed the registry from the shipped models: %s", exc)

    async def refresh_model(self) -> RefreshOutcome:
        """Look at the alias once (off the event loop) and record what happened."""
        previous = self.model.version
        outcome = await run_in_threadpool(self.model.refresh)
        if outcome.swapped and outcome.version is not None:
            self.metrics.model_swapped(self.model.name, previous, outcome.version)
        elif outcome.error is not None:
            self.metrics.load_failed(outcome.error.code)
        return outcome

    async def refresh_cheque_model(self) -> RefreshOutcome | None:
        """The same for the (optional) cheque-amount model."""
        if not self.settings.cheques_enabled:
            return None
        previous = self.cheques.version
        outcome = await run_in_threadpool(self.cheques.refresh)
        if outcome.swapped and outcome.version is not None:
            self.metrics.cheque_model_swapped(self.cheques.name, previous, outcome.version)
        return outcome

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            await self.refresh_model()
            await self.refresh_cheque_model()
