"""Micro-batching combines concurrent requests without changing any answer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from inkwell.errors import DeadlineExceededError, ModelNotReadyError, OverloadedError
from inkwell.settings import STABLE
from service.batching import MicroBatcher
from service.model import DigitModel, Prediction
from tests.service.conftest import TrainedRegistry


@pytest.fixture(scope="module")
def model(trained_registry: TrainedRegistry) -> DigitModel:
    loaded = DigitModel(trained_registry.settings(), STABLE)
    loaded.load()
    return loaded


async def run_concurrently(batcher: MicroBatcher, requests: list[np.ndarray]) -> list[Prediction]:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.infer(r) for r in requests))
    finally:
        await batcher.stop()


def test_concurrent_requests_share_forward_passes_with_identical_answers(
    model: DigitModel, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:40].astype(np.float32) / 255.0
    requests = [images[i : i + 1] for i in range(30)] + [images[30:40]]
    sizes: list[int] = []
    batcher = MicroBatcher(model.predict, max_size=16, max_wait_s=0.05, on_batch=sizes.append)
    answers = asyncio.run(run_concurrently(batcher, requests))
    direct = model.predict(images).probabilities
    got = np.concatenate([a.probabilities for a in answers])
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert sum(sizes) == 40
    assert max(sizes) <= 16 and max(sizes) > 1, sizes
    assert len(sizes) < 31


def test_a_request_is_never_split_across_batches(
    model: DigitModel, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:50].astype(np.float32) / 255.0
    requests = [images[:1], images[1:41], images[41:50]]
    sizes: list[int] = []
    batcher = MicroBatcher(model.predict, max_size=16, max_wait_s=0.01, on_batch=sizes.append)
    answers = asyncio.run(run_concurrently(batcher, requests))
    assert [len(a.probabilities) for a in answers] == [1, 40, 9]
    assert 40 in sizes and sum(sizes) == 50


def test_naive_configuration_runs_one_request_per_forward_pass(
    model: DigitModel, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:8].astype(np.float32) / 255.0
    sizes: list[int] = []
    batcher = MicroBatcher(model.predict, max_size=1, max_wait_s=0.01, on_batch=sizes.append)
    asyncio.run(run_concurrently(batcher, [images[i : i + 1] for i in range(8)]))
    assert sizes == [1] * 8


def test_lone_request_waits_at_most_max_wait(model: DigitModel) -> None:
    batcher = MicroBatcher(model.predict, max_size=32, max_wait_s=0.002)

    async def timed() -> float:
        await batcher.start()
        try:
            await batcher.infer(np.zeros((1, 28, 28), np.float32))  # warm the thread
            loop = asyncio.get_running_loop()
            start = loop.time()
            await batcher.infer(np.zeros((1, 28, 28), np.float32))
            return loop.time() - start
        finally:
            await batcher.stop()

    assert asyncio.run(timed()) < 0.25


def test_model_errors_reach_every_waiting_request(trained_registry: TrainedRegistry) -> None:
    unloaded = DigitModel(trained_registry.settings(), STABLE)
    batcher = MicroBatcher(unloaded.predict, max_size=8, max_wait_s=0.01)

    async def run() -> list[object]:
        await batcher.start()
        try:
            calls = [batcher.infer(np.zeros((1, 28, 28), np.float32)) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert all(isinstance(r, ModelNotReadyError) for r in results)


async def gather_results(batcher: MicroBatcher, requests: list[np.ndarray]) -> list[object]:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.infer(r) for r in requests), return_exceptions=True)
    finally:
        await batcher.stop()


def test_queue_over_its_bound_sheds_requests_with_retry_after(
    model: DigitModel, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:1].astype(np.float32) / 255.0
    reasons: list[str] = []
    batcher = MicroBatcher(
        model.predict,
        max_size=1,
        max_wait_s=0.0,
        max_queued=8,
        retry_after_s=2,
        on_shed=reasons.append,
    )
    # All 20 arrive before the worker takes any: 8 fit in the queue, 12 are shed at once.
    results = asyncio.run(gather_results(batcher, [images] * 20))
    answered = [r for r in results if isinstance(r, Prediction)]
    shed = [r for r in results if isinstance(r, OverloadedError)]
    assert len(answered) == 8 and len(shed) == 12, results
    assert all(e.status_code == 503 and e.retry_after_s == 2 for e in shed)
    assert "8" in shed[0].message and "Retry after 2 s" in shed[0].message
    assert batcher.queued_images == 0
    assert reasons == ["queue_full"] * 12


def test_requests_queued_past_the_deadline_get_503_not_a_late_answer(
    model: DigitModel, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:1].astype(np.float32) / 255.0
    reasons: list[str] = []
    batcher = MicroBatcher(
        model.predict, max_size=1, max_wait_s=0.0, deadline_s=0.5, on_shed=reasons.append
    )

    async def scenario() -> tuple[object, list[object], object]:
        await batcher.start()
        try:
            before = await batcher.infer(images)
            stuck = [asyncio.ensure_future(batcher.infer(images)) for _ in range(3)]
            await asyncio.sleep(0)  # all three are queued ...
            time.sleep(0.6)  # ... and the loop is held past their deadline before any is taken
            expired = await asyncio.gather(*stuck, return_exceptions=True)
            after = await batcher.infer(images)
            return before, expired, after
        finally:
            await batcher.stop()

    before, expired, after = asyncio.run(scenario())
    assert isinstance(before, Prediction) and isinstance(after, Prediction)
    assert all(isinstance(r, DeadlineExceededError) for r in expired), expired
    late = expired[0]
    assert isinstance(late, DeadlineExceededError) and late.code == "deadline_exceeded"
    assert late.status_code == 503 and "500 ms deadline" in late.message
    assert reasons == ["deadline"] * 3
