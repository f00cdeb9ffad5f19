"""Everything one service process holds while it runs, built once and started in the lifespan.

Construction does no I/O; `start()` sets torch threads, tries to open the sample store, seeds an
empty registry from the models shipped in the package (`INKWELL_SEED_SHIPPED`), tries the first
model load (the service still starts, not ready, when MLflow or the alias is missing; a
pinned INKWELL_SERVICE_MODEL_VERSION the registry lacks stops it with a message instead),
starts the micro-batcher, freezes the start-up heap out of the garbage collector's way
(inkwell.heap) and starts the alias poller; `stop()` undoes it in reverse.

The sample store is a dependency of uploads only: with the database down the service starts and
predicts, uploads answer 503 with `Retry-After` at once (no call waits on a dead database more
than once per `store_retry_seconds`), and the store is reopened by the first upload after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import cv2
import torch
from starlette.concurrency import run_in_threadpool

from inkwell.errors import ModelNotFoundError, StoreFullError, StoreUnavailableError
from inkwell.heap import StartupFreeze
from inkwell.store import SampleStore
from service.batching import MicroBatcher
from service.cheques import ChequeModel
from service.hotswap import AliasFollowingModel, RefreshOutcome
from service.inputs import Decoding
from service.metrics import ServiceMetrics
from service.model import DigitModel
from service.settings import ServiceSettings

log = logging.getLogger("inkwell.service")
T = TypeVar("T")


def configure_torch(threads: int) -> None:
    """Intra-op threads as configured; one inter-op thread (one forward pass at a time)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)


def configure_opencv() -> None:
    """OpenCV works on the calling thread: decodes already run DECODE_THREADS at a time per
    worker, and its own pool (one thread per core) on top would oversubscribe the cores."""
    cv2.setNumThreads(0)


class ServiceContext:
    """The service's long-lived parts: settings, metrics, model, batcher, sample store."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.upload_limiter = settings.upload_limiter()
        self.upload_quota = settings.upload_quota(
            lambda key, day, quota: self.open_store().take_daily_quota(key, day, quota)
        )
        self.metrics = ServiceMetrics(settings.variant)
        self.model = DigitModel(
            settings,
            settings.variant,
            optimize=settings.optimize_model,
            pinned_version=settings.model_version,
        )
        self.batcher = MicroBatcher(
            self.model.predict,
            max_size=settings.microbatch_max_size,
            max_wait_s=settings.microbatch_max_wait_ms / 1000.0,
            max_queued=settings.max_queued_images,
            deadline_s=settings.request_deadline_ms / 1000.0,
            retry_after_s=settings.retry_after_s,
            on_batch=self.metrics.observe_batch,
            on_shed=self.metrics.request_shed,
        )
        self.cheques = ChequeModel(
            settings, settings.variant, pinned_version=settings.cheque_model_version
        )
        self._store: SampleStore | None = None
        self._decoding: Decoding | None = None
        self._store_lock = threading.Lock()
        self._store_down_until = 0.0  # monotonic time before which calls fail without trying
        self._store_error = ""
        self._store_full = False  # the last failure was a full disk (507, not 503)
        self._poller: asyncio.Task[None] | None = None
        self._started = False
        self._heap = StartupFreeze()  # see inkwell.heap

    def _fail_fast(self) -> StoreUnavailableError:
        wait = max(1.0, self._store_down_until - time.monotonic())
        kind = StoreFullError if self._store_full else StoreUnavailableError
        return kind(
            f"{self._store_error} Retry in {math.ceil(wait)} s.", retry_after_s=math.ceil(wait)
        )

    def open_store(self) -> SampleStore:
        """The sample store, opened on first use; StoreUnavailableError while it is down."""
        store = self._store
        if store is not None:
            return store
        if time.monotonic() < self._store_down_until:
            raise self._fail_fast()
        if not self._store_lock.acquire(blocking=False):  # another request is reconnecting
            raise StoreUnavailableError(
                "The sample database is being reconnected; retry in a moment.", retry_after_s=1
            )
        try:
            if self._store is None:
                self._store = SampleStore.open(self.settings)
                log.info("sample store open")
            return self._store
        except StoreUnavailableError as exc:
            self._store_down(exc)
            raise self._fail_fast() from exc
        finally:
            self._store_lock.release()

    def _store_down(self, exc: StoreUnavailableError) -> None:
        self._store_down_until = time.monotonic() + self.settings.store_retry_seconds
        self._store_error = exc.message
        self._store_full = isinstance(exc, StoreFullError)
        log.warning("sample store unavailable: %s", exc.message)

    async def with_store(self, call: Callable[[SampleStore], T]) -> T:
        """Run `call(store)` off the event loop; fail fast while the database is known down."""
        if time.monotonic() < self._store_down_until:
            raise self._fail_fast()
        try:
            return await run_in_threadpool(lambda: call(self.open_store()))
        except StoreUnavailableError as exc:
            if time.monotonic() >= self._store_down_until:
                self._store_down(exc)
            raise

    @property
    def decoding(self) -> Decoding:
        if self._decoding is None:
            raise RuntimeError("ServiceContext.start() was not called")
        return self._decoding

    async def start(self) -> None:
        # An unreachable tracking server must fail fast, not retry for minutes, so the poller
        # comes back and the last good model keeps serving meanwhile.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        configure_torch(self.settings.torch_threads)
        configure_opencv()
        self._decoding = Decoding(
            self.settings.image_limits,
            self.settings.max_batch_pixels,
            anyio.CapacityLimiter(self.settings.decode_threads),
            deadline_s=self.settings.request_deadline_ms / 1000.0,
            retry_after_s=self.settings.retry_after_s,
            on_shed=self.metrics.request_shed,
        )
        with contextlib.suppress(StoreUnavailableError):  # predictions do not need it
            await run_in_threadpool(self.open_store)
        if self.settings.seed_shipped:
            await run_in_threadpool(self.seed_shipped)
        outcome = await self.refresh_model()
        self._refuse_missing_pin(outcome, self.model, "INKWELL_SERVICE_MODEL_VERSION")
        cheque_outcome = await self.refresh_cheque_model()
        if cheque_outcome is not None:
            variable = "INKWELL_SERVICE_CHEQUE_MODEL_VERSION"
            self._refuse_missing_pin(cheque_outcome, self.cheques, variable)
        await self.batcher.start()
        # Last: everything loaded so far lives as long as the process; see inkwell.heap.
        self._heap.freeze()
        self._started = True
        self._poller = asyncio.create_task(self._poll(), name="inkwell-alias-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.batcher.stop()
        if self._store is not None:
            self._store.engine.dispose()
        if self._started:
            self._started = False
            self._heap.thaw()
        self.metrics.worker_exited()

    def _refuse_missing_pin(
        self, outcome: RefreshOutcome, model: AliasFollowingModel[Any], variable: str
    ) -> None:
        """A pinned version the registry does not have is a deployment mistake: stop now, not
        wait unready. (An unreachable registry is not: the poller keeps trying.)"""
        pinned = model.pinned_version
        if pinned is None or not isinstance(outcome.error, ModelNotFoundError):
            return
        raise ModelNotFoundError(
            f"{variable}={pinned}, but the registry has no version {pinned} of {model.name!r}. "
            f"Pick a registered version (`inkwell models`), or unset it to follow the alias "
            f"{self.settings.variant!r}."
        )

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
