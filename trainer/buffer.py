"""Replay memory: fixed-capacity buffers of past samples, kept apart from loop and strategy.

Semantics follow Avalanche's storage policies (`ReservoirSamplingBuffer`, `ClassBalancedBuffer`):
a buffer has a `max_size`, `update(new_items)` folds a stream chunk in, and `resize(n)` changes
the capacity. Every item gets a random weight when it is seen and a buffer keeps the items with
the largest weights, so the contents are a uniform sample of the stream (per class for the
class-balanced policy) and shrinking keeps that property. Invariant: after every `update`,
`len(buffer) == min(max_size, seen)`.

A buffer saves to one `.npz` (contents, weights, counters and the NumPy RNG state), so after a
restart or when reloaded from a model version it continues exactly where it left off.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from inkwell.errors import DataCorruptError
from trainer.files import atomic_write

FORMAT_VERSION = 1


def mnist_key(index: int | np.ndarray) -> Any:
    """Key of MNIST training image `index` (keys <= 0 are MNIST, keys > 0 are sample ids)."""
    return -(np.asarray(index, dtype=np.int64) + 1)


@dataclass
class BufferItems:
    """A batch of memory items: uint8 images (N, 28, 28) ink=255, labels, keys, optional logits.

    `keys` say where an item came from: a positive key is a sample-store id, a key <= 0 is an
    MNIST training image (see `mnist_key`). `logits` (N, C) are stored for DER-style replay.
    """

    images: np.ndarray
    labels: np.ndarray
    keys: np.ndarray
    logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.images = np.ascontiguousarray(self.images, dtype=np.uint8).reshape(-1, 28, 28)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.keys = np.asarray(self.keys, dtype=np.int64).reshape(-1)
        n = self.images.shape[0]
        if self.labels.shape[0] != n or self.keys.shape[0] != n:
            raise ValueError(
                f"buffer items disagree in length: {n} images, {self.labels.shape[0]} labels, "
                f"{self.keys.shape[0]} keys"
            )
        if self.logits is not None:
            self.logits = np.asarray(self.logits, dtype=np.float32)
            if self.logits.shape[0] != n:
                raise ValueError(f"{self.logits.shape[0]} logits for {n} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def empty(cls, logits_dim: int | None = None) -> BufferItems:
        logits = None if logits_dim is None else np.zeros((0, logits_dim), dtype=np.float32)
        return cls(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), np.zeros(0), logits)

    def take(self, index: np.ndarray) -> BufferItems:
        logits = None if self.logits is None else self.logits[index]
        return BufferItems(self.images[index], self.labels[index], self.keys[index], logits)

    def concat(self, other: BufferItems) -> BufferItems:
        if (self.logits is None) != (other.logits is None) and len(self) and len(other):
            raise ValueError("cannot mix items with and without logits in one buffer")
        logits = None
        if self.logits is not None or other.logits is not None:
            parts = [p.logits for p in (self, other) if p.logits is not None]
            logits = np.concatenate(parts)
        return BufferItems(
            np.concatenate([self.images, other.images]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.keys, other.keys]),
            logits,
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 28, 28) float32 in [0, 1] and int64 labels, ready for the model."""
        x = torch.from_numpy(self.images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        return x, torch.from_numpy(self.labels.copy())


def balanced_quotas(counts: dict[int, int], capacity: int) -> dict[int, int]:
    """Split `capacity` over classes as evenly as their item counts allow (water-filling).

    A class with fewer items than its fair share keeps them all and the rest is shared by the
    others; leftover single slots go to the classes holding the most items, so every quota can
    always be filled and the total is exactly `min(capacity, sum(counts))`.
    """
    quotas: dict[int, int] = {}
    remaining = capacity
    pending = sorted((c for c in counts if counts[c] > 0), key=lambda c: (counts[c], c))
    while pending:
        share = remaining // len(pending)
        smallest = pending[0]
        if counts[smallest] <= share:
            quotas[smallest] = counts[smallest]
            remaining -= counts[smallest]
            pending.pop(0)
            continue
        extra = remaining - share * len(pending)
        for rank, cls in enumerate(sorted(pending, key=lambda c: (-counts[c], c))):
            quotas[cls] = share + (1 if rank < extra else 0)
        break
    return quotas


class ReplayBuffer(ABC):
    """A fixed-capacity memory with persistent random state. Subclasses choose what to keep."""

    policy: ClassVar[str] = ""

    def __init__(self, max_size: int, *, seed: int = 0) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self.max_size = int(max_size)
        self.seen = 0
        self.seen_per_class: dict[int, int] = {}
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.items = BufferItems.empty()
        self.weights = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.items)

    @abstractmethod
    def _select(self, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Indices of the candidates to keep (at most `max_size`)."""

    def update(self, new: BufferItems) -> None:
        """Fold a chunk of the stream into the buffer."""
        if not len(new):
            return
        weights = self.rng.random(len(new))
        self.seen += len(new)
        for label, count in zip(*np.unique(new.labels, return_counts=True), strict=True):
            self.seen_per_class[int(label)] = self.seen_per_class.get(int(label), 0) + int(count)
        items = self.items.concat(new) if len(self.items) else new
        self._keep(items, np.concatenate([self.weights, weights]))

    def resize(self, new_size: int) -> None:
        """Change the capacity; shrinking keeps a uniform (per-policy) subset."""
        if new_size < 0:
            raise ValueError(f"new_size must be >= 0, got {new_size}")
        self.max_size = int(new_size)
        self._keep(self.items, self.weights)

    def _keep(self, items: BufferItems, weights: np.ndarray) -> None:
        keep = np.sort(self._select(items.labels, weights))
        self.items = items.take(keep)
        self.weights = weights[keep]

    def sample(self, n: int, generator: torch.Generator) -> BufferItems:
        """`n` items drawn uniformly with replacement (empty when the buffer is)."""
        if not len(self) or n <= 0:
            return self.items.take(np.zeros(0, dtype=np.int64))
        index = torch.randint(len(self), (n,), generator=generator).numpy()
        return self.items.take(index)

    def class_counts(self) -> dict[int, int]:
        labels, counts = np.unique(self.items.labels, return_counts=True)
        return {int(k): int(v) for k, v in zip(labels, counts, strict=True)}

    def stats(self) -> dict[str, Any]:
        """Policy, capacity, size, items seen, per-class counts and MNIST/user mix."""
        users = int((self.items.keys > 0).sum())
        return {
            "policy": self.policy,
            "max_size": self.max_size,
            "size": len(self),
            "seen": self.seen,
            "per_class": self.class_counts(),
            "from_mnist": len(self) - users,
            "from_users": users,
        }

    # ---- persistence -----------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "policy": self.policy,
            "max_size": self.max_size,
            "seen": self.seen,
            "seen_per_class": {str(k): v for k, v in self.seen_per_class.items()},
            "rng_state": self.rng.bit_generator.state,
        }

    def save(self, path: Path) -> Path:
        """Write contents, weights, counters and RNG state atomically to `path` (.npz)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "images": self.items.images,
            "labels": self.items.labels,
            "keys": self.items.keys,
            "weights": self.weights,
            "meta": np.array(json.dumps(self.meta())),
        }
        if self.items.logits is not None:
            arrays["logits"] = self.items.logits
        return atomic_write(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]

    @staticmethod
    def load(path: Path) -> ReplayBuffer:
        """Load a buffer saved by `save`, whatever its policy."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                logits = data["logits"] if "logits" in data.files else None
                items = BufferItems(data["images"], data["labels"], data["keys"], logits)
                weights = np.asarray(data["weights"], dtype=np.float64)
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise DataCorruptError(
                f"Replay buffer file {path} is unreadable ({exc}). Delete it: the trainer "
                "rebuilds it from the stable model version's artifact."
            ) from exc
        kinds: dict[str, type[ReplayBuffer]] = {
            ReservoirBuffer.policy: ReservoirBuffer,
            ClassBalancedBuffer.policy: ClassBalancedBuffer,
        }
        if meta.get("policy") not in kinds or meta.get("format") != FORMAT_VERSION:
            raise DataCorruptError(
                f"Replay buffer file {path} has policy {meta.get('policy')!r}, format "
                f"{meta.get('format')!r}; this trainer reads format {FORMAT_VERSION} of "
                f"{sorted(kinds)}."
            )
        buffer = kinds[meta["policy"]](int(meta["max_size"]))
        buffer.items, buffer.weights = items, weights
        buffer.seen = int(meta["seen"])
        buffer.seen_per_class = {int(k): int(v) for k, v in meta["seen_per_class"].items()}
        buffer.rng.bit_generator.state = meta["rng_state"]
        return buffer


class ReservoirBuffer(ReplayBuffer):
    """Uniform sample of everything seen (reservoir sampling by random weights)."""

    policy = "reservoir"

    def _select(self, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if weights.shape[0] <= self.max_size:
            return np.arange(weights.shape[0])
        return np.argsort(-weights, kind="stable")[: self.max_size]


class ClassBalancedBuffer(ReplayBuffer):
    """Capacity split evenly over the classes seen; a uniform reservoir inside each class."""

    policy = "class_balanced"

    def _select(self, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        classes, counts = np.unique(labels, return_counts=True)
        quotas = balanced_quotas(
            {int(c): int(n) for c, n in zip(classes, counts, strict=True)}, self.max_size
        )
        keep: list[np.ndarray] = []
        for cls, quota in quotas.items():
            members = np.flatnonzero(labels == cls)
            order = np.argsort(-weights[members], kind="stable")[:quota]
            keep.append(members[order])
        return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def make_buffer(policy: str, max_size: int, *, seed: int = 0) -> ReplayBuffer:
    """A new empty buffer of the named policy (`class_balanced` or `reservoir`)."""
    if policy == ClassBalancedBuffer.policy:
        return ClassBalancedBuffer(max_size, seed=seed)
    if policy == ReservoirBuffer.policy:
        return ReservoirBuffer(max_size, seed=seed)
    raise ValueError(f"unknown buffer policy {policy!r}; use class_balanced or reservoir")
