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

from inkwell.cheques.model import ALPHABET
from inkwell.cheques.pools import DigitPool
from inkwell.cheques.preprocess import INPUT_HEIGHT, batch_inputs, prepare_field
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


def encode_label(label: str) -> list[int]:
    """Digit string → CTC class indices (blank is 0)."""
    return [ALPHABET.index(ch) + 1 for ch in label]


def make_batch(samples: list[FieldSample], height: int = INPUT_HEIGHT) -> FieldBatch:
    """Preprocess rendered samples into one batch (blank-looking fields become empty labels)."""
    fields: list[np.ndarray] = []
    labels: list[str] = []
    for sample in samples:
        try:
            fields.append(prepare_field(sample.image, height).pixels)
            labels.append(sample.label)
        except NoInkError:
            continue  # so faint the reader would refuse it anyway
    inputs, widths = batch_inputs(fields)
    encoded = [encode_label(label) for label in labels]
    targets = torch.tensor([c for e in encoded for c in e], dtype=torch.long)
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    return FieldBatch(inputs, widths, targets, lengths, labels)


class FieldStream(IterableDataset[FieldBatch]):
    """An endless (or `n_batches`-long) stream of synthetic batches from `pool`."""

    def __init__(
        self,
        pool: DigitPool,
        *,
        seed: int,
        batch_size: int,
        cfg: SynthConfig | None = None,
        n_batches: int | None = None,
        height: int = INPUT_HEIGHT,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.seed = seed
        self.batch_size = batch_size
        self.cfg = cfg or SynthConfig()
        self.n_batches = n_batches
        self.height = height

    def __iter__(self) -> Iterator[FieldBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch_index = worker
        while self.n_batches is None or batch_index < self.n_batches:
            start = batch_index * self.batch_size
            samples = [
                sample_field(self.pool, sample_rng(self.seed, self.pool.split, i), self.cfg)
                for i in range(start, start + self.batch_size)
            ]
            yield make_batch(samples, self.height)
            batch_index += workers
