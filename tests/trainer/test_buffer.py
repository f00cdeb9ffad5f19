"""Replay-buffer invariants: size, class balance, uniformity, persistence with RNG state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inkwell.errors import DataCorruptError
from trainer.buffer import (
    BufferItems,
    ClassBalancedBuffer,
    ReplayBuffer,
    ReservoirBuffer,
    balanced_quotas,
    make_buffer,
)


def stream(n: int, start: int = 0, classes: list[int] | None = None, seed: int = 0) -> BufferItems:
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes or list(range(10)), size=n)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return BufferItems(images, labels, np.arange(start + 1, start + n + 1))


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
@pytest.mark.parametrize("capacity", [1, 37, 200])
def test_size_is_min_of_capacity_and_seen_after_every_update(policy: str, capacity: int) -> None:
    buffer = make_buffer(policy, capacity, seed=3)
    seen = 0
    for step, chunk in enumerate([5, 1, 60, 0, 17, 250, 3]):
        buffer.update(stream(chunk, start=seen, seed=step))
        seen += chunk
        assert len(buffer) == min(capacity, seen) == len(buffer.weights)
        assert buffer.seen == seen
        assert len(set(buffer.items.keys.tolist())) == len(buffer)  # no item twice


def test_class_balanced_buffer_splits_capacity_evenly_over_seen_classes() -> None:
    buffer = ClassBalancedBuffer(100, seed=0)
    buffer.update(stream(500, classes=[0, 1]))
    assert buffer.class_counts() == {0: 50, 1: 50}
    buffer.update(stream(500, start=500, classes=[2, 3], seed=1))
    assert buffer.class_counts() == {0: 25, 1: 25, 2: 25, 3: 25}
    buffer.update(stream(3, start=1000, classes=[9], seed=2))  # a rare class keeps all it has
    counts = buffer.class_counts()
    assert counts[9] == 3 and sum(counts.values()) == 100
    assert max(counts[c] for c in range(4)) - min(counts[c] for c in range(4)) <= 1


def test_balanced_quotas_fill_exactly_and_never_exceed_what_a_class_has() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = {c: int(rng.integers(0, 40)) for c in range(10)}
        capacity = int(rng.integers(0, 300))
        quotas = balanced_quotas(counts, capacity)
        assert sum(quotas.values()) == min(capacity, sum(counts.values()))
        assert all(quotas[c] <= counts[c] for c in quotas)
        capped = [quotas[c] for c in quotas if quotas[c] < counts[c]]
        if capped:
            assert max(capped) - min(capped) <= 1
            assert all(quotas[c] <= max(capped) for c in quotas)


def test_reservoir_keeps_a_uniform_sample_of_the_stream() -> None:
    hits = np.zeros(1000)
    for seed in range(200):
        buffer = ReservoirBuffer(100, seed=seed)
        for chunk in range(10):
            buffer.update(stream(100, start=chunk * 100, seed=chunk))
        hits[buffer.items.keys - 1] += 1
    # every item is kept with probability 0.1: early and late halves alike
    assert abs(hits[:500].mean() - 20) < 2 and abs(hits[500:].mean() - 20) < 2


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_shrinking_keeps_items_and_balance(policy: str) -> None:
    buffer = make_buffer(policy, 200, seed=1)
    buffer.update(stream(1000))
    before = set(buffer.items.keys.tolist())
    buffer.resize(50)
    assert len(buffer) == 50 and set(buffer.items.keys.tolist()) <= before
    if policy == "class_balanced":
        assert max(buffer.class_counts().values()) - min(buffer.class_counts().values()) <= 1


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_save_and_load_round_trip_contents_and_random_state(policy: str, tmp_path: Path) -> None:
    buffer = make_buffer(policy, 64, seed=7)
    buffer.update(stream(300))
    logits_free = buffer.save(tmp_path / "buffer.npz")
    restored = ReplayBuffer.load(logits_free)
    assert type(restored) is type(buffer)
    assert restored.stats() == buffer.stats()
    np.testing.assert_array_equal(restored.items.images, buffer.items.images)
    np.testing.assert_array_equal(restored.weights, buffer.weights)
    # the RNG continues where it stopped: identical future updates on both copies
    more = stream(150, start=300, seed=9)
    buffer.update(more)
    restored.update(more)
    np.testing.assert_array_equal(restored.items.keys, buffer.items.keys)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    np.testing.assert_array_equal(buffer.sample(10, g1).keys, restored.sample(10, g2).keys)


def test_logits_travel_with_their_items(tmp_path: Path) -> None:
    buffer = ClassBalancedBuffer(20, seed=0)
    items = stream(50)
    items.logits = np.arange(500, dtype=np.float32).reshape(50, 10)
    buffer.update(items)
    restored = ReplayBuffer.load(buffer.save(tmp_path / "b.npz"))
    assert restored.items.logits is not None
    np.testing.assert_array_equal(restored.items.logits[:, 0], (restored.items.keys - 1) * 10)


def test_corrupt_buffer_file_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a numpy archive")
    with pytest.raises(DataCorruptError, match="Delete it"):
        ReplayBuffer.load(path)


def test_sampling_an_empty_buffer_returns_nothing() -> None:
    assert len(ReservoirBuffer(10).sample(5, torch.Generator())) == 0
