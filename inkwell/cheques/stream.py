"""Training batches generated on the fly, in memory: no folders of synthetic images needed.

A `FieldStream` renders fields from one digit pool, preprocesses them and yields padded
batches ready for CTC. Run it in a `DataLoader` worker so rendering overlaps training; each
sample's randomness depends only on (seed, split, index), so a stream is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from inkwell.cheques.model import ALPHABET, batch_inputs
from inkwell.cheques.pools import DigitPool
from inkwell.cheques.preprocess import INPUT_HEIGHT, prepare_field
from inkwell.cheques.synth import FieldSample, SynthConfig, sample_field, sample_rng
from inkwell.errors import NoInkError


@dataclass
class FieldBatch:
    """Padded inputs (N, 1, H, W), their true widths, CTC targets and the label strings."""

    inputs: torch.Tensor
    widths: torch.Tensor
    targets: torch.Tensor  # concatenated class indices (digit d → d + 1)
    target_lengths: torch.Tensor
    labels: list[str]
    # rows replayed from earlier data (synthetic fields in a fine-tuning batch); None: no such
    replay: torch.Tensor | None = None


def encode_label(label: str) -> list[int]:
    """Digit string → CTC class indices (blank is 0)."""
    return [ALPHABET.index(ch) + 1 for ch in label]


def prepare_samples(
    samples: list[FieldSample], height: int = INPUT_HEIGHT
) -> list[tuple[np.ndarray, str]]:
    """Preprocess rendered samples (fields too faint for the reader are left out, as it would
    refuse them)."""
    prepared: list[tuple[np.ndarray, str]] = []
    for sample in samples:
        try:
            prepared.append((prepare_field(sample.image, height).pixels, sample.label))
        except NoInkError:
            continue
    return prepared


def collate(prepared: list[tuple[np.ndarray, str]]) -> FieldBatch:
    """Pad prepared fields into one batch with CTC targets."""
    inputs, widths = batch_inputs([pixels for pixels, _ in prepared])
    labels = [label for _, label in prepared]
    encoded = [encode_label(label) for label in labels]
    targets = torch.tensor([c for e in encoded for c in e], dtype=torch.long)
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    return FieldBatch(inputs, widths, targets, lengths, labels)


def make_batch(samples: list[FieldSample], height: int = INPUT_HEIGHT) -> FieldBatch:
    """Preprocess rendered samples into one batch."""
    return collate(prepare_samples(samples, height))


class FieldStream(IterableDataset[FieldBatch]):
    """An endless stream of synthetic batches from `pool`.

    Fields are rendered in chunks of `bucket` batches and grouped by width inside a chunk
    (batch order shuffled), so little compute goes into padding; chunk ``k`` depends only on
    (seed, split, k), and worker processes take chunks in turn.
    """

    def __init__(
        self,
        pool: DigitPool,
        *,
        seed: int,
        batch_size: int,
        cfg: SynthConfig | None = None,
        height: int = INPUT_HEIGHT,
        bucket: int = 8,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.seed = seed
        self.batch_size = batch_size
        self.cfg = cfg or SynthConfig()
        self.height = height
        self.bucket = max(1, bucket)

    def chunk(self, index: int) -> list[FieldBatch]:
        """The batches of chunk `index`, grouped by width, in shuffled order."""
        size = self.batch_size * self.bucket
        samples = [
            sample_field(self.pool, sample_rng(self.seed, self.pool.split, i), self.cfg)
            for i in range(index * size, (index + 1) * size)
        ]
        prepared = sorted(prepare_samples(samples, self.height), key=lambda p: p[0].shape[1])
        batches = [
            collate(prepared[i : i + self.batch_size])
            for i in range(0, len(prepared), self.batch_size)
        ]
        order = np.random.default_rng([self.seed, index, 7]).permutation(len(batches))
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[FieldBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = worker
        while True:
            yield from self.chunk(index)
            index += workers
