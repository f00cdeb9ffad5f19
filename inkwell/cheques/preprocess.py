"""Amount-field image → recogniser input: ink-high float map of fixed height, any width.

Steps (shared by training, evaluation and serving): grayscale in [0, 1] (1 = white) → ink
polarity from the median (so white-on-black scans work) → stretch contrast so the background
median is 0 and the darkest 0.5 % of pixels reach 1 (images without enough contrast are
rejected as blank) → crop to the handwriting plus a margin, ignoring printed rules
(`ink_bounds`) → resize to `height` px keeping the aspect ratio (antialiased).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from inkwell.errors import InvalidImageError, NoInkError

PREPROCESSING_VERSION = "cheque-field-v2"
INPUT_HEIGHT = 32
MAX_INPUT_WIDTH = 1024  # after resizing: very long fields are squeezed to this width
MIN_INPUT_WIDTH = 16
FRAME_STRIDE = 4  # input columns per output frame of the recogniser
MIN_CONTRAST = 0.12  # ink vs background (0..1) below which a field counts as blank


@dataclass(frozen=True)
class FieldInput:
    """A preprocessed field and how to map its columns back to the original image."""

    pixels: np.ndarray  # float32 (height, width), ink = 1
    x_scale: float  # original columns per input column
    original_width: int
    original_height: int
    x_offset: int = 0  # first original column of the crop the input was made from


def _ink_levels(gray: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Ink map (1 = ink) of a grayscale image (1 = white), its background level (median) and
    its ink level (99.5th percentile), from one partial sort.

    Polarity comes from the median of the whole field, not its border: paper covers most of
    an amount field, while a printed box often runs right along the border.
    """
    dark, median, light = (float(v) for v in np.percentile(gray, [0.5, 50.0, 99.5]))
    if median < 0.5:  # light ink on dark paper
        return gray, median, light
    return 1.0 - gray, 1.0 - median, 1.0 - dark


def ink_bounds(ink: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns ``(r0, r1, c0, c1)`` holding the handwriting, with a margin.

    Printed rules (rows or columns mostly inked) are ignored, and 1 % of the ink mass is
    trimmed at each end so stray specks do not stretch the box. Cropping to it makes the
    digits fill most of the recogniser's height whatever margins the field had.
    """
    h, w = ink.shape
    mask = ink > 0.5
    rules_free = (mask.mean(axis=1) < 0.5)[:, None] & (mask.mean(axis=0) < 0.6)[None, :]
    mask &= rules_free
    total = int(mask.sum())
    if total < 8:
        return 0, h, 0, w
    rows = np.cumsum(mask.sum(axis=1)) / total
    cols = np.cumsum(mask.sum(axis=0)) / total
    r0, r1 = int(np.searchsorted(rows, 0.01)), int(np.searchsorted(rows, 0.99)) + 1
    c0, c1 = int(np.searchsorted(cols, 0.005)), int(np.searchsorted(cols, 0.995)) + 1
    band = max(1, r1 - r0)
    v_margin, h_margin = max(2, round(0.15 * band)), max(2, round(0.3 * band))
    return (
        max(0, r0 - v_margin),
        min(h, r1 + v_margin),
        max(0, c0 - h_margin),
        min(w, c1 + h_margin),
    )


def prepare_field(gray: np.ndarray, height: int = INPUT_HEIGHT) -> FieldInput:
    """Grayscale field (float in [0, 1], 1 = white, or uint8) → normalised recogniser input."""
    array = np.asarray(gray)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    if array.ndim != 2 or min(array.shape) < 4:
        raise InvalidImageError(
            f"Expected a 2-D grayscale amount field of at least 4x4 pixels, got shape "
            f"{list(array.shape)}. Send the cropped courtesy-amount box or a whole cheque."
        )
    if not np.isfinite(array).all():
        raise InvalidImageError("The image contains NaN or infinite values.")
    ink, low, high = _ink_levels(np.clip(array.astype(np.float32), 0.0, 1.0))
    if high - low < MIN_CONTRAST:
        raise NoInkError(
            "No ink found in the amount field: the image is blank or too faint "
            f"(contrast {high - low:.2f} < {MIN_CONTRAST}). Send a scan with the handwritten "
            "amount visible."
        )
    normalised = np.clip((ink - low) / (high - low), 0.0, 1.0).astype(np.float32)
    r0, r1, c0, c1 = ink_bounds(normalised)
    crop = normalised[r0:r1, c0:c1]
    h, w = crop.shape
    width = int(np.clip(round(w * height / h), MIN_INPUT_WIDTH, MAX_INPUT_WIDTH))
    pixels = np.asarray(
        Image.fromarray(crop).resize((width, height), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    return FieldInput(
        np.clip(pixels, 0.0, 1.0), w / width, array.shape[1], array.shape[0], x_offset=c0
    )
