"""Folders of labelled single-digit images (``labels.csv``: ``filename,digit`` + the images).

Real digits, e.g. cut from scanned cheques, are evaluated the way the service sees them: every
image goes through `inkwell.preprocessing.preprocess_bytes`, the serving preprocessing. An image
that preprocessing refuses (undecodable, no ink) is kept in the report as refused and counts as
an error, as it would be a 422 for a client.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inkwell.errors import DataCorruptError, DataNotFoundError, InvalidInputError
from inkwell.model import DigitNet
from inkwell.preprocessing import ImageLimits, preprocess_bytes
from inkwell.training import EvalResult, evaluate, images_to_tensor

LABELS_FILE = "labels.csv"
LABEL_HEADER = ("filename", "digit")


@dataclass(frozen=True)
class DigitFolder:
    """A folder's images as the service's model sees them, and those preprocessing refused."""

    names: list[str]
    images: np.ndarray  # (N, 28, 28) float32 in [0, 1], ink = 1 (exactly what serving feeds)
    labels: np.ndarray  # (N,) int64
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # name, label, error code

    @property
    def total(self) -> int:
        return len(self.names) + len(self.refused)


@dataclass(frozen=True)
class FolderEvaluation:
    """Accuracy over every listed image (refused ones are errors) and the readable ones' detail."""

    total: int
    correct: int
    refused: list[tuple[str, int, str]]
    readable: EvalResult | None  # None when preprocessing refused every image

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def most_confused(self, top: int = 5) -> list[tuple[int, int, int]]:
        """The `top` largest off-diagonal confusion cells: ``(true, predicted, count)``."""
        if self.readable is None:
            return []
        cells = [
            (true, predicted, count)
            for true, row in enumerate(self.readable.confusion)
            for predicted, count in enumerate(row)
            if true != predicted and count
        ]
        return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))[:top]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report: accuracy, per-class accuracy, confusion matrix and refusals."""
        readable = self.readable
        return {
            "total": self.total,
            "correct": self.correct,
            "accuracy": round(self.accuracy, 6),
            "per_class": (  # None: no image of that digit was read
                {
                    str(d): round(a, 6) if sum(readable.confusion[d]) else None
                    for d, a in enumerate(readable.per_class)
                }
                if readable
                else {}
            ),
            "confusion": readable.confusion if readable else [],
            "most_confused": [
                {"digit": t, "predicted": p, "count": n} for t, p, n in self.most_confused()
            ],
            "refused": [
                {"filename": name, "digit": label, "code": code}
                for name, label, code in self.refused
            ],
        }


def read_digit_labels(folder: Path, labels_file: Path | None = None) -> list[tuple[str, int]]:
    """Rows of the labels CSV, validated: every image exists, every label is one digit 0-9."""
    if not folder.is_dir():
        raise DataNotFoundError(
            f"{folder} is not a folder. Pass the folder that holds the digit images and "
            f"{LABELS_FILE}."
        )
    path = labels_file or folder / LABELS_FILE
    if not path.is_file():
        raise DataNotFoundError(
            f"No labels file at {path}. Put a CSV named {LABELS_FILE} in the folder with the "
            f"header '{','.join(LABEL_HEADER)}' and one 'image.png,7' row per image."
        )
    rows: list[tuple[str, int]] = []
    problems: list[str] = []
    with path.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if line_no == 1 and tuple(c.strip().lower() for c in row[:2]) == LABEL_HEADER:
                continue
            if len(row) != 2:
                problems.append(f"line {line_no}: expected 'filename,digit', got {row}")
                continue
            name, label = row[0].strip(), row[1].strip()
            if len(label) != 1 or label not in "0123456789":
                problems.append(f"line {line_no}: label {row[1]!r} is not one digit 0-9")
            elif not (folder / name).is_file():
                problems.append(f"line {line_no}: image {folder / name} does not exist")
            else:
                rows.append((name, int(label)))
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataCorruptError(
            f"{path} has {len(problems)} bad row(s); fix them or remove them:\n{shown}{more}"
        )
    if not rows:
        raise DataNotFoundError(f"{path} lists no images. Add 'filename,digit' rows.")
    return rows


def load_digit_folder(
    folder: Path,
    labels_file: Path | None = None,
    *,
    limits: ImageLimits | None = None,
    on_item: Callable[[int], None] | None = None,
) -> DigitFolder:
    """Every listed image through the serving preprocessing."""
    names: list[str] = []
    images: list[np.ndarray] = []
    labels: list[int] = []
    refused: list[tuple[str, int, str]] = []
    for index, (name, label) in enumerate(read_digit_labels(folder, labels_file), start=1):
        try:
            mnist = preprocess_bytes((folder / name).read_bytes(), limits)
        except InvalidInputError as exc:
            refused.append((name, label, exc.code))
        else:
            names.append(name)
            images.append(mnist)
            labels.append(label)
        if on_item is not None:
            on_item(index)
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.float32)
    return DigitFolder(names, stacked, np.asarray(labels, np.int64), refused)


def evaluate_digit_folder(model: DigitNet, data: DigitFolder) -> FolderEvaluation:
    """Accuracy of `model` on a loaded folder; refused images count as errors."""
    readable = None
    correct = 0
    if len(data.names):
        y = torch.from_numpy(data.labels)
        readable = evaluate(model, images_to_tensor(data.images), y)
        correct = sum(readable.confusion[d][d] for d in range(len(readable.confusion)))
    return FolderEvaluation(data.total, correct, data.refused, readable)
