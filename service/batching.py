"""Async micro-batching: concurrent requests share one model forward pass.

Requests put their (k, 28, 28) arrays on a queue and await a future. One worker coroutine takes
the oldest request, adds whatever else is queued (up to `max_size` images), waits at most until
the oldest request is `max_wait` old for more company, then runs one forward pass on a single
inference thread, so the event loop keeps accepting requests meanwhile. Under load the requests
that arrive during a forward pass form the next batch without any waiting; when idle, a lone
request waits at most `max_wait`. `max_size=1` is the naive per-request configuration.

Overload: at most `max_queued` images wait at once (more are refused at once with
OverloadedError), and a request that waited longer than `deadline_s` is answered with
DeadlineExceededError instead of a forward pass whose answer the client may no longer want.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from inkwell.errors import DeadlineExceededError, OverloadedError
from service.model import Prediction


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future[Prediction]
    enqueued: float


class MicroBatcher:
    """Combines concurrent `infer()` calls into batched calls of `predict`."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], Prediction],
        *,
        max_size: int,
        max_wait_s: float,
        max_queued: int | None = None,
        deadline_s: float | None = None,
        retry_after_s: int = 1,
        on_batch: Callable[[int], None] | None = None,
        on_shed: Callable[[str], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._predict = predict
        self.max_size = max_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queued = max_queued
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        self._on_batch = on_batch
        self._on_shed = on_shed
        self._queued_images = 0  # enqueued and not yet taken into a batch (the carry included)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inkwell-infer")
        self._task = asyncio.create_task(self._run(), name="inkwell-microbatcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pending = [self._carry] if self._carry else []
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for item in pending:
            if not item.future.done():
                item.future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def infer(self, images: np.ndarray) -> Prediction:
        """Probabilities for (k, 28, 28) images, computed in some batch with other requests."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        count = len(images)
        # A request bigger than the whole bound still runs when the queue is empty.
        if (
            self.max_queued is not None
            and self._queued_images
            and (self._queued_images + count > self.max_queued)
        ):
            self._shed("queue_full")
            raise OverloadedError(
                f"The service is overloaded: {self._queued_images} images are already waiting "
                f"for the model (limit {self.max_queued}). Retry after {self.retry_after_s} s, "
                "or send fewer concurrent requests.",
                retry_after_s=self.retry_after_s,
            )
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(images, future, time.perf_counter()))
        self._queued_images += count
        return await future

    @property
    def queued(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + (1 if self._carry else 0)

    @property
    def queued_images(self) -> int:
        """Images enqueued and not yet taken into a forward pass."""
        return self._queued_images

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            await self._forward(batch)

    async def _collect(self) -> list[_Pending]:
        queue = self._queue
        if queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        first = self._carry or await queue.get()
        self._carry = None
        self._queued_images -= len(first.images)
        batch, rows = [first], len(first.images)
        waited = False
        while rows < self.max_size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = first.enqueued + self.max_wait_s - time.perf_counter()
                if waited or remaining <= 0:
                    break
                # Sleep once until the oldest request's deadline, then take what has arrived.
                await asyncio.sleep(remaining)
                waited = True
                continue
            if rows + len(item.images) > self.max_size:
                self._carry = item  # starts the next batch; never split a request
                break
            batch.append(item)
            rows += len(item.images)
            self._queued_images -= len(item.images)
        return batch

    def _shed(self, reason: str) -> None:
        if self._on_shed is not None:
            self._on_shed(reason)

    def _expire(self, batch: list[_Pending]) -> list[_Pending]:
        """Fail the requests that waited past the deadline; the rest go to the model."""
        if self.deadline_s is None:
            return batch
        now = time.perf_counter()
        live = []
        for item in batch:
            waited = now - item.enqueued
            if waited <= self.deadline_s:
                live.append(item)
            elif not item.future.done():
                self._shed("deadline")
                item.future.set_exception(
                    DeadlineExceededError(
                        f"The request waited {waited * 1000:.0f} ms for the model, past the "
                        f"{self.deadline_s * 1000:.0f} ms deadline: the service is overloaded. "
                        f"Retry after {self.retry_after_s} s.",
                        retry_after_s=self.retry_after_s,
                    )
                )
        return live

    async def _forward(self, batch: list[_Pending]) -> None:
        # drop disconnected clients and requests past their deadline
        live = [item for item in self._expire(batch) if not item.future.done()]
        if not live:
            return
        images = (
            live[0].images if len(live) == 1 else np.concatenate([i.images for i in live], axis=0)
        )
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._predict, images)
        except Exception as exc:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(images))
        start = 0
        for item in live:
            end = start + len(item.images)
            if not item.future.done():
                item.future.set_result(Prediction(result.probabilities[start:end], result.served))
            start = end
