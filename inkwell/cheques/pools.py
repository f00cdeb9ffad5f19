"""Pools of handwritten digit glyphs drawn from MNIST, kept strictly apart by split.

Synthetic splits and the MNIST images they may use:

- ``train``: MNIST train images 0..54,999 (what the recogniser learns from);
- ``val``: MNIST train images 55,000..59,999 (calibration and model selection only);
- ``test``: MNIST test images (the 10,000 `t10k` images), never seen in training or tuning.

So a synthetic test amount is made only of digits written by the MNIST test writers' images,
and no glyph of one split appears in another (tests check this by content hash too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inkwell.data import load_split
from inkwell.settings import CoreSettings

SPLITS = ("train", "val", "test")
VAL_START = 55_000  # MNIST train images from here on form the validation pool


@dataclass(frozen=True)
class DigitPool:
    """Digit glyphs of one synthetic split: images (N, 28, 28) uint8 (ink high) and labels.

    ``source_index`` is the index of each glyph in its MNIST file, ``source_split`` that file's
    split (``train`` or ``test``): the provenance every generated sample can report.
    """

    split: str
    images: np.ndarray
    labels: np.ndarray
    source_split: str
    source_index: np.ndarray
    by_digit: tuple[np.ndarray, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_digit = tuple(np.flatnonzero(self.labels == d) for d in range(10))
        object.__setattr__(self, "by_digit", by_digit)
        missing = [d for d, idx in enumerate(by_digit) if idx.size == 0]
        if missing:
            raise ValueError(f"digit pool {self.split!r} has no glyphs for digits {missing}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pick(self, digit: int, rng: np.random.Generator) -> int:
        """A random position in this pool of a glyph showing `digit`."""
        candidates = self.by_digit[digit]
        return int(candidates[rng.integers(candidates.size)])

    def fingerprints(self) -> set[str]:
        """Content hashes of every glyph (to prove pools never share an image)."""
        return {hashlib.md5(image.tobytes()).hexdigest() for image in self.images}


def load_pool(
    split: str, data_dir: Path | None = None, settings: CoreSettings | None = None
) -> DigitPool:
    """Load the digit pool of a synthetic split (see the module docstring for the mapping)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    source_split = "test" if split == "test" else "train"
    mnist = load_split(source_split, data_dir, settings)
    if split == "train":
        index = np.arange(min(VAL_START, len(mnist)))
    elif split == "val":
        index = np.arange(VAL_START, len(mnist))
    else:
        index = np.arange(len(mnist))
    return DigitPool(
        split=split,
        images=mnist.images[index],
        labels=mnist.labels[index],
        source_split=source_split,
        source_index=index,
    )
