"""Single real digits cut from a reviewed amount field, for the digit model's sample stream.

The cheque reader emits one score vector per `FRAME_STRIDE` input columns; forcing its CTC
posteriors onto the amount a person confirmed (`decode.align`, a Viterbi over the label's
states) says which frames carry each digit even when the reading itself was wrong. A digit's
column range runs between the midpoints of its neighbours' frames; inside it the crop is the
ink (printed rules and small separate pieces such as a separator dot removed, 2 % of the ink
trimmed at each end so specks do not stretch it).

Pure: an image, an amount and a loaded reader in; crops with their boxes out. Storing them as
digit samples is the trainer's job (`trainer.cheque_digits`).
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from inkwell.cheques.decode import align
from inkwell.cheques.preprocess import FRAME_STRIDE, FieldInput, ink_bounds
from inkwell.cheques.reader import ChequeReader, to_gray
from inkwell.errors import DataCorruptError, DataNotFoundError

INK_TRIM = 0.02  # fraction of a strip's ink mass ignored at each side of the crop
MIN_INK_PIXELS = 12  # a strip with less ink than this holds no digit worth keeping
CROP_MARGIN = 2  # paper kept around the ink, px
MIN_PIECE_SHARE = 0.2  # ink pieces smaller than this share of the largest one are not the digit


@dataclass(frozen=True)
class DigitCut:
    """One digit of a field: its place in the amount, its box in the image and its pixels."""

    position: int  # 0 = the leftmost digit of the amount
    digit: int
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the uploaded image
    confidence: float  # the reader's peak posterior of this digit on its aligned frames
    pixels: np.ndarray  # uint8 grayscale crop, paper light, ink dark (as scanned)

    def png(self) -> bytes:
        """The crop as PNG bytes (what a digit upload would send)."""
        buffer = io.BytesIO()
        Image.fromarray(self.pixels).save(buffer, "PNG")
        return buffer.getvalue()


def field_ink(gray: np.ndarray) -> np.ndarray:
    """Boolean ink mask of a field (gray, 1 = white) without printed rules."""
    median = float(np.median(gray))
    ink = gray if median < 0.5 else 1.0 - gray
    background = float(np.median(ink))
    top = float(np.percentile(ink, 99.5))
    normalised = np.clip((ink - background) / max(top - background, 1e-6), 0.0, 1.0)
    mask = normalised > 0.5
    rules_free = (mask.mean(axis=1) < 0.5)[:, None] & (mask.mean(axis=0) < 0.6)[None, :]
    r0, r1, _, _ = ink_bounds(normalised.astype(np.float32))
    band = np.zeros_like(mask)
    band[r0:r1] = True
    return mask & rules_free & band


def column_ranges(
    spans: list[tuple[int, int]], prepared: FieldInput, band_height: float
) -> list[tuple[float, float]]:
    """Field columns ``[x0, x1)`` of each aligned digit: between the midpoints to its neighbours.

    Outer digits get half the median spacing (or 0.8 x the ink band height when the amount
    has one digit) on their open side.
    """

    def column(frame: float) -> float:
        return prepared.x_offset + frame * FRAME_STRIDE * prepared.x_scale

    centres = [column((start + end) / 2) for start, end in spans]
    half = float(np.median(np.diff(centres))) / 2 if len(centres) > 1 else 0.4 * band_height
    edges = [centres[0] - half]
    edges += [(a + b) / 2 for a, b in itertools.pairwise(centres)]
    edges.append(centres[-1] + half)
    width = float(prepared.original_width)
    return [(max(0.0, left), min(width, right)) for left, right in itertools.pairwise(edges)]


def _trimmed(profile: np.ndarray) -> tuple[int, int]:
    cumulative = np.cumsum(profile) / profile.sum()
    start = int(np.searchsorted(cumulative, INK_TRIM))
    end = int(np.searchsorted(cumulative, 1.0 - INK_TRIM)) + 1
    return start, max(end, start + 1)


def ink_box(mask: np.ndarray, x0: int, x1: int) -> tuple[int, int, int, int] | None:
    """The trimmed ink box ``(x0, y0, x1, y1)`` inside columns ``[x0, x1)``; None if no ink."""
    strip = mask[:, x0:x1]
    if int(strip.sum()) < MIN_INK_PIXELS:
        return None
    _count, labels, stats, _ = cv2.connectedComponentsWithStats(
        strip.astype(np.uint8), connectivity=8
    )
    areas = np.asarray(stats)[1:, cv2.CC_STAT_AREA]
    # separators, specks and a neighbour's stray tail are small pieces beside the digit's strokes
    keep = 1 + np.flatnonzero(areas >= MIN_PIECE_SHARE * areas.max())
    strip = np.isin(np.asarray(labels), keep)
    c0, c1 = _trimmed(strip.sum(axis=0).astype(np.float64))
    r0, r1 = _trimmed(strip.sum(axis=1).astype(np.float64))
    return x0 + c0, r0, x0 + c1, r1


def cut_digits(
    reader: ChequeReader, image: bytes | np.ndarray, amount: str, *, layout: str = "auto"
) -> list[DigitCut]:
    """Digits of `amount` cut from `image` where the reader's frames align with them.

    An amount the field has too few frames for yields nothing; a digit whose strip holds no
    ink is left out (its neighbours keep their positions).
    """
    if not amount.isdigit():
        raise ValueError(f"amount must be digits only, got {amount!r}")
    gray = to_gray(image)
    prepared, _layout, location = reader.prepare(gray, layout)
    ox, oy = (location.box[0], location.box[1]) if location else (0, 0)
    if location:
        x_end, y_end = location.box[2], location.box[3]
        field = gray[oy:y_end, ox:x_end]
    else:
        field = gray
    logits = reader.field_logits([prepared.pixels])[0]
    log_probs = F.log_softmax(torch.from_numpy(logits) / reader.temperature, dim=-1).numpy()
    label = [int(c) + 1 for c in amount]
    if log_probs.shape[0] < len(label):
        return []
    spans = align(log_probs.astype(np.float64), label)
    mask = field_ink(field)
    rows = np.flatnonzero(mask.any(axis=1))
    band_height = float(rows[-1] - rows[0] + 1) if rows.size else float(field.shape[0])
    cuts: list[DigitCut] = []
    ranges = column_ranges(spans, prepared, band_height)
    for position, ((left, right), (start, end), symbol) in enumerate(
        zip(ranges, spans, label, strict=True)
    ):
        x_left = round(left)
        box = ink_box(mask, x_left, max(round(right), x_left + 1))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        cuts.append(
            DigitCut(
                position=position,
                digit=symbol - 1,
                box=(ox + x0, oy + y0, ox + x1, oy + y1),
                confidence=float(np.exp(log_probs[start:end, symbol].max())),
                pixels=crop_box(field, box),
            )
        )
    return cuts


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, w) * max(0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


BOXES_FILE = "digits.csv"
BOX_HEADER = ("filename", "x", "y", "width", "height", "digit")

Box = tuple[int, int, int, int]


def read_digit_boxes(path: Path) -> dict[str, list[tuple[Box, int]]]:
    """``digits.csv`` rows per field, left to right by x-centre: ``(x0, y0, x1, y1), digit``."""
    if not path.is_file():
        raise DataNotFoundError(
            f"No digit boxes at {path}. Put a CSV with the header '{','.join(BOX_HEADER)}' and "
            "one row per handwritten digit next to the fields."
        )
    boxes: dict[str, list[tuple[Box, int]]] = {}
    problems: list[str] = []
    with path.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if line_no == 1 and tuple(c.strip().lower() for c in row) == BOX_HEADER:
                continue
            if not row:
                continue
            try:
                name, x, y, w, h, digit = (c.strip() for c in row)
                box = (int(x), int(y), int(x) + int(w), int(y) + int(h))
                value = int(digit)
            except ValueError:
                problems.append(f"line {line_no}: expected '{','.join(BOX_HEADER)}', got {row}")
                continue
            if not 0 <= value <= 9 or w.startswith("-") or h.startswith("-"):
                problems.append(f"line {line_no}: digit 0-9 and a non-negative size expected")
                continue
            boxes.setdefault(name, []).append((box, value))
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:10])
        raise DataCorruptError(f"{path} has {len(problems)} bad row(s); fix them:\n{shown}")
    return {
        name: sorted(rows, key=lambda r: (r[0][0] + r[0][2]) / 2) for name, rows in boxes.items()
    }


def crop_box(gray: np.ndarray, box: Box, margin: int = CROP_MARGIN) -> np.ndarray:
    """The uint8 crop of `box` (plus `margin`) from a gray image (1 = white)."""
    h, w = gray.shape
    x0, y0, x1, y1 = box
    crop = gray[
        max(0, y0 - margin) : min(h, y1 + margin), max(0, x0 - margin) : min(w, x1 + margin)
    ]
    return np.clip(np.round(crop * 255.0), 0, 255).astype(np.uint8)
