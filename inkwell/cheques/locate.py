"""Find the courtesy-amount box on a whole cheque (classical, no learning).

Method (documented in docs/cheques.md):

1. Work on a copy scaled to 1000 px wide. Mark *dark* pixels: darker than the paper by more
   than a threshold set from the image (Otsu on the darkness map, at least 0.2), which drops
   the light security background.
2. Keep *printed rules*: horizontal runs of dark pixels at least 8 % of the width long and
   vertical runs at least 4 % of the height long (a 1-D morphological opening, after a
   3-pixel dilation across the run so slightly skewed scans still count).
3. Candidates:
   - **box**: two horizontal rules, one above the other (6-25 % of the height apart,
     overlapping by 70 %+), closed by vertical rules at both ends;
   - **underline**: a single horizontal rule 10-45 % of the width long with handwriting just
     above it (the box is then the ink above the rule).
4. Score each candidate by where amount boxes sit on cheques (right half, upper middle), its
   shape (wide, not tall) and the handwriting inside it; boxes beat underlines. The best one
   is returned, padded slightly; if none qualifies, `AmountFieldNotFoundError` says so
   (crop the amount box and send that instead) rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from inkwell.cheques.preprocess import MIN_CONTRAST
from inkwell.errors import AmountFieldNotFoundError, NoInkError

LAYOUTS = ("auto", "field", "cheque")
WORK_WIDTH = 1000
# A whole cheque is at least this large; amount fields are ~40-150 px tall.
MIN_CHEQUE_HEIGHT = 200
MIN_CHEQUE_WIDTH = 400
CHEQUE_ASPECT = (1.6, 3.6)
LINE_DARKNESS = 0.12  # mean darkness along a printed rule (paper = 0, black = 1)


@dataclass(frozen=True)
class FieldLocation:
    """Where the amount field is, in the original image's pixels, and how it was found."""

    box: tuple[int, int, int, int]  # (x0, y0, x1, y1)
    method: str  # "box" or "underline"
    score: float


@dataclass(frozen=True)
class _Segment:
    """A printed rule in work coordinates: [a0, a1) along it, at `pos` across it."""

    pos: int
    a0: int
    a1: int
    thickness: int

    @property
    def length(self) -> int:
        return self.a1 - self.a0


def is_whole_cheque(gray: np.ndarray) -> bool:
    """True when the image is large and cheque-shaped rather than an amount field crop."""
    h, w = gray.shape
    return (
        h >= MIN_CHEQUE_HEIGHT
        and w >= MIN_CHEQUE_WIDTH
        and CHEQUE_ASPECT[0] <= w / h <= CHEQUE_ASPECT[1]
    )


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total, total_mean = weight[-1], mean[-1]
    between = np.zeros_like(centres)
    valid = (weight > 0) & (weight < total)
    w0 = weight[valid]
    m0 = mean[valid] / w0
    m1 = (total_mean - mean[valid]) / (total - w0)
    between[valid] = w0 * (total - w0) * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def _darkness(gray: np.ndarray) -> np.ndarray:
    """How much darker than the paper each pixel is (0 = paper)."""
    return np.clip(float(np.median(gray)) - gray, 0.0, 1.0).astype(np.float32)


def _dark_mask(darkness: np.ndarray) -> np.ndarray:
    """Ink and print, without the light security background."""
    some = darkness[darkness > 0.02]
    threshold = max(0.2, _otsu(some) if some.size else 0.2)
    return darkness > threshold


def _runs(mask: np.ndarray, min_len: int) -> np.ndarray:
    """Pixels on horizontal runs of at least `min_len` (1-D opening along axis 1)."""
    eroded = ndimage.minimum_filter1d(mask.astype(np.uint8), min_len, axis=1)
    return ndimage.maximum_filter1d(eroded, min_len, axis=1).astype(bool)


def _segments(lines: np.ndarray) -> list[_Segment]:
    """Connected horizontal rules as segments. A rule's row is its fullest row, so background
    lines touching it (which make the component taller) do not move it."""
    labels, count = ndimage.label(lines)
    segments = []
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels)[:count], start=1):
        counts = (labels[rows, cols] == index).sum(axis=1)
        full = np.flatnonzero(counts >= 0.5 * counts.max())
        segments.append(_Segment(rows.start + int(full[0]), cols.start, cols.stop, int(full.size)))
    return segments


def _merge_collinear(segments: list[_Segment], max_gap: int) -> list[_Segment]:
    """Join pieces of one rule broken by handwriting, scan dropouts or JPEG (same row ±3 px)."""
    merged: list[_Segment] = []
    for seg in sorted(segments, key=lambda s: (s.pos, s.a0)):
        for i, other in enumerate(merged):
            if abs(other.pos - seg.pos) <= 3 and seg.a0 - other.a1 <= max_gap and seg.a1 > other.a0:
                merged[i] = _Segment(
                    min(other.pos, seg.pos),
                    min(other.a0, seg.a0),
                    max(other.a1, seg.a1),
                    max(other.thickness, seg.thickness),
                )
                break
        else:
            merged.append(seg)
    return merged


def _line_mask(darkness: np.ndarray, window: int, min_len: int) -> np.ndarray:
    """Straight horizontal rules: faint thin print lines survive because darkness is averaged
    along the row (a wavy guilloche line leaves the row quickly, a rule does not)."""
    tolerant = ndimage.maximum_filter1d(darkness, 3, axis=0)  # skew of a pixel or two
    along = ndimage.uniform_filter1d(tolerant, window, axis=1)
    return _runs((along > LINE_DARKNESS) & (tolerant > LINE_DARKNESS), min_len)


def _rules(darkness: np.ndarray, min_h: int, min_v: int) -> tuple[list[_Segment], np.ndarray]:
    """Horizontal rules (pieces joined) at least `min_h` long, and the vertical-rule mask."""
    pieces = _segments(_line_mask(darkness, 61, max(8, min_h // 4)))
    merged = _merge_collinear(pieces, max_gap=round(0.025 * darkness.shape[1]))
    vertical = _line_mask(darkness.T, 9, min_v).T
    return [seg for seg in merged if seg.length >= min_h], vertical


def _position_score(cx: float, cy: float, w: int, h: int) -> float:
    """Amount boxes sit right of centre, in the upper middle of the cheque."""
    return float(np.clip((cx / w - 0.45) * 4, -2.0, 1.0) - ((cy / h - 0.38) / 0.15) ** 2)


def _ink_fraction(mask: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> float:
    inner = mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]
    return float(inner.mean()) if inner.size else 0.0


def _box_candidates(
    segments: list[_Segment], vertical: np.ndarray, mask: np.ndarray
) -> list[tuple[float, tuple[int, int, int, int]]]:
    h, w = mask.shape
    found = []
    for top in segments:
        for bottom in segments:
            gap = bottom.pos - top.pos
            if not 0.06 * h <= gap <= 0.25 * h:
                continue
            a0, a1 = max(top.a0, bottom.a0), min(top.a1, bottom.a1)
            if a1 - a0 < 0.7 * min(top.length, bottom.length) or a1 - a0 < 0.1 * w:
                continue
            span = slice(top.pos, bottom.pos + bottom.thickness)
            left = vertical[span, max(0, a0 - 3) : a0 + 4].any(axis=1).mean()
            right = vertical[span, max(0, a1 - 4) : a1 + 3].any(axis=1).mean()
            if min(left, right) < 0.6:
                continue
            pad = top.thickness + 2
            ink = _ink_fraction(mask, a0 + pad, top.pos + pad, a1 - pad, bottom.pos - 1)
            if ink < 0.004:
                continue  # an empty box (or a table cell) is not the written amount
            width_score = min(1.0, (a1 - a0) / (0.2 * w))
            score = 2.0 + _position_score((a0 + a1) / 2, (top.pos + bottom.pos) / 2, w, h)
            found.append((score + width_score, (a0, top.pos, a1, bottom.pos + bottom.thickness)))
    return found


def _ink_band_top(columns: np.ndarray, line_row: int, reach: int, max_gap: int) -> int | None:
    """Top row of the handwriting resting on a rule.

    Rows with ink above the rule are grouped into bands split by more than `max_gap` empty
    rows; the band with most ink among those ending within `reach / 2` of the rule is the
    amount (the date or payee written higher up forms another band and is left out).
    """
    start = max(0, line_row - reach)
    inked = np.flatnonzero(columns[start : max(start, line_row - 2)].mean(axis=1) > 0.01)
    if inked.size == 0:
        return None
    breaks = np.flatnonzero(np.diff(inked) > max_gap + 1)
    bands = np.split(inked + start, breaks + 1)
    near = [b for b in bands if b[-1] >= line_row - reach // 2]
    if not near:
        return None
    best = max(near, key=lambda b: b.size)
    return max(0, int(best[0]) - 3)


def _underline_candidates(
    segments: list[_Segment], mask: np.ndarray
) -> list[tuple[float, tuple[int, int, int, int]]]:
    h, w = mask.shape
    found = []
    for seg in segments:
        if not 0.1 * w <= seg.length <= 0.45 * w or seg.a0 < 0.4 * w:
            continue
        y0 = _ink_band_top(mask[:, seg.a0 : seg.a1], seg.pos, round(0.2 * h), round(0.03 * h))
        if y0 is None:
            continue
        ink = _ink_fraction(mask, seg.a0, y0, seg.a1, seg.pos - 1)
        if ink < 0.01 or seg.pos - y0 < 0.04 * h:
            continue
        score = _position_score((seg.a0 + seg.a1) / 2, (y0 + seg.pos) / 2, w, h)
        found.append((score, (seg.a0, y0, seg.a1, seg.pos + seg.thickness)))
    return found


def locate_amount_field(gray: np.ndarray) -> FieldLocation:
    """The courtesy-amount box of a whole cheque (grayscale, 1 = white) in its own pixels."""
    h, w = gray.shape
    scale = WORK_WIDTH / w
    work_h = max(1, round(h * scale))
    work = np.asarray(
        Image.fromarray(gray.astype(np.float32), mode="F").resize(
            (WORK_WIDTH, work_h), Image.Resampling.BILINEAR
        ),
        dtype=np.float32,
    )
    darkness = _darkness(work)
    if float(np.percentile(darkness, 99.9)) < MIN_CONTRAST:
        raise NoInkError(
            "No ink found on the cheque: the image is blank or too faint. Send a scan of the "
            "written cheque."
        )
    mask = _dark_mask(darkness)
    segments, vertical = _rules(darkness, round(0.08 * WORK_WIDTH), max(8, round(0.04 * work_h)))
    candidates = [(s, b, "box") for s, b in _box_candidates(segments, vertical, mask)]
    if not candidates:
        candidates = [(s, b, "underline") for s, b in _underline_candidates(segments, mask)]
    if not candidates:
        raise AmountFieldNotFoundError(
            "Could not find the courtesy-amount box on this cheque (no printed box or underline "
            "with handwriting on the right-hand side). Crop the amount box and send it alone, "
            "or send with layout=field if the image already is the amount field."
        )
    score, (x0, y0, x1, y1), method = max(candidates, key=lambda c: c[0])
    pad = 0.05 * (y1 - y0)
    return FieldLocation(
        box=(
            max(0, int((x0 - pad) / scale)),
            max(0, int((y0 - pad) / scale)),
            min(w, int(np.ceil((x1 + pad) / scale))),
            min(h, int(np.ceil((y1 + pad) / scale))),
        ),
        method=method,
        score=float(score),
    )
