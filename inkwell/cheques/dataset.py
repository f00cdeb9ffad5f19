"""Folders of labelled amount images: ``labels.csv`` (``filename,digit_string``) + images.

Any folder in this format can be evaluated, e.g. real cheque amount fields cropped by a bank.
Labels are digits only; the separators ``.``, ``,`` and spaces are tolerated and dropped (so
``1.500`` reads as ``1500``); an empty label means the field holds no amount.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from inkwell.cheques.synth import LABEL_HEADER, LABELS_FILE
from inkwell.errors import DataCorruptError, DataNotFoundError

_IGNORED = str.maketrans("", "", "., \t")


@dataclass(frozen=True)
class LabelledImage:
    """One row of a labels file."""

    path: Path
    label: str


def normalise_label(raw: str) -> str | None:
    """The digit string of a label, or None when it has characters other than digits/separators."""
    cleaned = raw.strip().translate(_IGNORED)
    return cleaned if cleaned == "" or cleaned.isdigit() else None


def read_labels(folder: Path, labels_file: Path | None = None) -> list[LabelledImage]:
    """Rows of `folder`'s labels CSV, validated: every image exists, every label is digits."""
    path = labels_file or folder / LABELS_FILE
    if not path.is_file():
        raise DataNotFoundError(
            f"No labels file at {path}. Put a CSV named {LABELS_FILE} in the folder with the "
            f"header '{','.join(LABEL_HEADER)}' and one 'image.png,1500' row per image."
        )
    rows: list[LabelledImage] = []
    problems: list[str] = []
    with path.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if line_no == 1 and tuple(c.strip().lower() for c in row[:2]) == LABEL_HEADER:
                continue
            if len(row) < 2:
                problems.append(f"line {line_no}: expected 'filename,digit_string', got {row}")
                continue
            label = normalise_label(row[1])
            image = folder / row[0].strip()
            if label is None:
                problems.append(f"line {line_no}: label {row[1]!r} is not a digit string")
            elif not image.is_file():
                problems.append(f"line {line_no}: image {image} does not exist")
            else:
                rows.append(LabelledImage(image, label))
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataCorruptError(f"{path} has {len(problems)} bad row(s):\n{shown}{more}")
    if not rows:
        raise DataNotFoundError(f"{path} lists no images. Add 'filename,digit_string' rows.")
    return rows
