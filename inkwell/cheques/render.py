"""Drawing primitives for synthetic cheques: pen glyphs, pen symbols, security backgrounds,
printed lines and scanner degradations.

Conventions: an *alpha* map is float32 in [0, 1] with 1 = full coverage by ink; a *reflectance*
image is float32 in [0, 1] with 1 = white paper. Ink and print darken paper multiplicatively
(``paper * (1 - strength * alpha)``), so a pen stroke crossing a printed line is darker than
either, as on paper. Every function takes an explicit `numpy.random.Generator`, so a seed
reproduces an image exactly.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from inkwell.cheques.amounts import Token

# ---- pen glyphs ----------------------------------------------------------------------------


def ink_bbox(image: np.ndarray, level: float) -> tuple[int, int, int, int]:
    mask = image > level
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, image.shape[0], 0, image.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def affine_alpha(
    alpha: np.ndarray, scale_y: float, scale_x: float, shear: float, angle: float
) -> np.ndarray:
    """Scale, slant (``x += shear * height above baseline``) and rotate an alpha map, fitting
    the output to the transformed bounding box."""
    cos, sin = math.cos(angle), math.sin(angle)
    # (row, col) forward map: rotation @ shear @ scale. A positive shear leans tops right.
    rot = np.array([[cos, -sin], [sin, cos]])
    shr = np.array([[1.0, 0.0], [-shear, 1.0]])
    scl = np.array([[scale_y, 0.0], [0.0, scale_x]])
    forward = rot @ shr @ scl
    h, w = alpha.shape
    corners = np.array([[0, 0], [0, w], [h, 0], [h, w]], dtype=np.float64).T
    mapped = forward @ corners
    low = mapped.min(axis=1) - 1.0
    high = mapped.max(axis=1) + 1.0
    out_shape = (max(1, math.ceil(high[0] - low[0])), max(1, math.ceil(high[1] - low[1])))
    inverse = np.linalg.inv(forward)
    offset = inverse @ low
    out = ndimage.affine_transform(
        alpha, inverse, offset=offset, output_shape=out_shape, order=1, mode="constant", cval=0.0
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _stroke(alpha: np.ndarray, points: list[tuple[float, float]], width: float) -> np.ndarray:
    """`alpha` with a pen stroke through `points` ((x, y) in pixels) drawn on top."""
    layer = Image.new("L", (alpha.shape[1], alpha.shape[0]), 0)
    ImageDraw.Draw(layer).line(points, fill=255, width=max(2, math.ceil(width)), joint="curve")
    stroke = ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255.0, 0.3)
    return np.maximum(alpha, np.clip(stroke * 1.5, 0.0, 1.0))


def _pen_width(alpha: np.ndarray) -> float:
    """Rough stroke width of a glyph: inked area over its skeleton-ish length."""
    ink = alpha > 0.5
    area = float(ink.sum())
    if area == 0:
        return 2.0
    eroded = float(ndimage.binary_erosion(ink).sum())
    return float(np.clip(2.0 * area / max(1.0, area - eroded), 1.5, 4.0))


def writer_form(alpha: np.ndarray, digit: int, rng: np.random.Generator) -> np.ndarray:
    """Redraw a cropped MNIST digit in a form common outside the US: a 7 with a crossbar, a
    1 with a long flag (and sometimes a foot). Other digits are returned unchanged."""
    h, w = alpha.shape
    pen = _pen_width(alpha)
    if digit == 7:
        y = h * float(rng.uniform(0.45, 0.62))
        cols = np.flatnonzero(alpha[int(y)] > 0.4)
        half = h * float(rng.uniform(0.18, 0.3))
        pad = math.ceil(half)
        canvas = np.pad(alpha, ((0, 0), (pad, pad)))
        centre = pad + (float(cols.mean()) if cols.size else w / 2)
        tilt = h * float(rng.normal(0.0, 0.04))
        canvas = _stroke(canvas, [(centre - half, y + tilt), (centre + half, y - tilt)], pen)
        keep = np.flatnonzero(canvas.max(axis=0) > 0.1)
        return canvas[:, keep[0] : keep[-1] + 1]
    if digit == 1:
        flag = round(h * float(rng.uniform(0.25, 0.55)))
        foot = rng.random() < 0.25
        pad_right = round(0.3 * h) if foot else 0
        canvas = np.zeros((h, w + flag + pad_right), np.float32)
        canvas[:, flag : flag + w] = alpha
        top_cols = np.flatnonzero(alpha[: max(1, h // 6)].max(axis=0) > 0.4)
        x_top = flag + (float(top_cols.mean()) if top_cols.size else w / 2)
        drop = h * float(rng.uniform(0.2, 0.45))
        canvas = _stroke(canvas, [(x_top, 1.0), (x_top - flag, drop)], pen)
        if foot:
            bottom_cols = np.flatnonzero(alpha[-max(1, h // 8) :].max(axis=0) > 0.4)
            x_bottom = flag + (float(bottom_cols.mean()) if bottom_cols.size else w / 2)
            half = 0.25 * h
            canvas = _stroke(canvas, [(x_bottom - half, h - 2.0), (x_bottom + half, h - 2.0)], pen)
        return canvas
    return alpha


def digit_glyph(
    image28: np.ndarray,
    rng: np.random.Generator,
    height: float,
    slant: float,
    width_scale: float = 1.0,
    form: int | None = None,
) -> np.ndarray:
    """An MNIST digit redrawn at `height` px with a slant, a pen weight and small wobbles.

    The pen weight changes at MNIST resolution (a 2x2 dilation for a broad pen; an erosion for
    a fine pen only when the strokes are thick enough to survive it), so no digit fades away.
    `form` set to the digit's value redraws it in another writer's form (`writer_form`).
    """
    alpha = image28.astype(np.float32) / 255.0
    top, bottom, left, right = ink_bbox(alpha, 0.1)
    alpha = alpha[top:bottom, left:right]
    if form is not None:
        alpha = writer_form(alpha, form, rng)
    weight = rng.random()
    if weight < 0.2:
        alpha = ndimage.grey_dilation(alpha, size=(2, 2))
    elif weight < 0.35 and int((alpha > 0.5).sum()) > 110:
        alpha = ndimage.grey_erosion(alpha, size=(2, 2))
    scale = height / max(1, alpha.shape[0])
    angle = math.radians(float(rng.normal(0.0, 3.0)))
    glyph = affine_alpha(
        alpha, scale, scale * width_scale, slant + float(rng.normal(0.0, 0.05)), angle
    )
    if scale > 1.4:  # large digits from a fine pen: softer, thinner stroke edges
        glyph = glyph ** float(rng.uniform(1.0, 1.5))
    if rng.random() < 0.07:  # a pen skip: a thin gap through the stroke
        glyph = _break_stroke(glyph, rng)
    return glyph


def _break_stroke(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = glyph.shape
    broken = glyph.copy()
    width = int(rng.integers(1, 3))
    if rng.random() < 0.5:
        row = int(rng.integers(h // 5, max(h // 5 + 1, 4 * h // 5)))
        broken[row : row + width, :] *= 0.1
    else:
        col = int(rng.integers(w // 5, max(w // 5 + 1, 4 * w // 5)))
        broken[:, col : col + width] *= 0.1
    return broken


# ---- pen symbols ---------------------------------------------------------------------------

# Symbol shapes as polylines in (u, v): u across the symbol's width, v down from the top of
# the digits (v = 1 is the baseline; commas descend below it). Widths are relative to height.
_SYMBOL_WIDTH = {"dot": 0.22, "comma": 0.25, "dash": 0.7, "equals": 0.7, "slash": 0.5}


def _symbol_paths(kind: str, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    j = rng.normal
    if kind == "dot":
        return [np.array([[0.5, 0.92], [0.5 + j(0, 0.05), 0.93 + j(0, 0.02)]])], 0.22
    if kind == "comma":
        return [np.array([[0.65, 0.86], [0.55, 1.0], [0.3, 1.18]])], 0.25
    if kind == "dash":
        y = rng.uniform(0.45, 0.85)
        width = rng.uniform(0.35, 1.0)
        return [np.array([[0.05, y], [0.5, y + j(0, 0.03)], [0.95, y + j(0, 0.05)]])], width
    if kind == "equals":
        y = rng.uniform(0.35, 0.6)
        gap = rng.uniform(0.15, 0.3)
        width = rng.uniform(0.4, 0.9)
        return [
            np.array([[0.05, y], [0.95, y + j(0, 0.04)]]),
            np.array([[0.05, y + gap], [0.95, y + gap + j(0, 0.04)]]),
        ], width
    if kind == "slash":  # longer and leaning much more than a "1", as writers make it
        top, bottom = rng.uniform(-0.15, 0.1), rng.uniform(1.0, 1.2)
        return [np.array([[0.92, top], [0.08, bottom]])], rng.uniform(0.7, 1.1)
    if kind == "dollar":
        s_curve = np.array(
            [[0.85, 0.2], [0.5, 0.1], [0.15, 0.3], [0.5, 0.5], [0.85, 0.7], [0.5, 0.9], [0.1, 0.8]]
        )
        return [s_curve, np.array([[0.5, -0.05], [0.5 + j(0, 0.04), 1.05]])], 0.55
    raise ValueError(f"unknown symbol {kind!r}")


def symbol_glyph(
    kind: str, rng: np.random.Generator, height: float, slant: float, pen_width: float
) -> tuple[np.ndarray, int]:
    """A hand-drawn symbol; returns its alpha map and the row of the baseline within it."""
    paths, width_ratio = _symbol_paths(kind, rng)
    width = max(3.0, width_ratio * height)
    top_pad = 0.1 * height
    canvas_h = math.ceil(1.35 * height + top_pad)
    extra = abs(slant) * 1.35 * height
    canvas_w = math.ceil(width + extra + 2 * pen_width + 2)
    image = Image.new("L", (canvas_w, canvas_h), 0)
    draw = ImageDraw.Draw(image)
    line_width = max(1, round(pen_width))
    for path in paths:
        pts = path + rng.normal(0.0, 0.025, size=path.shape)
        y = pts[:, 1] * height + top_pad
        x = pts[:, 0] * width + pen_width + 1 + slant * (height + top_pad - y)
        if slant < 0:
            x += extra
        points = [(float(a), float(b)) for a, b in zip(x, y, strict=True)]
        if kind == "dot":
            r = max(1.0, 0.05 * height + pen_width / 2)
            cx, cy = points[0]
            draw.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=255)
        else:
            draw.line(points, fill=255, width=line_width, joint="curve")
    alpha = np.asarray(image, dtype=np.float32) / 255.0
    alpha = ndimage.gaussian_filter(alpha, 0.5)
    return np.clip(alpha * 1.2, 0.0, 1.0), round(height + top_pad)


def token_glyph(
    token: Token,
    image28: np.ndarray | None,
    rng: np.random.Generator,
    height: float,
    slant: float,
    pen_width: float,
    forms: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Alpha map of one pen token and the row of its baseline; `forms` is the chance that a
    1 or a 7 is drawn in a non-US writer's form."""
    if token.is_digit:
        if image28 is None:
            raise ValueError("a digit token needs its MNIST glyph")
        h = height * (0.62 if token.raised else float(rng.uniform(0.88, 1.1))) * token.scale
        form = None
        if forms > 0 and token.digit in (1, 7) and rng.random() < forms:
            form = token.digit
        glyph = digit_glyph(
            image28, rng, h, slant, width_scale=float(rng.uniform(0.85, 1.18)), form=form
        )
        baseline = glyph.shape[0] - 1
        if token.raised:  # superscript cents sit with their bottom near mid-height
            baseline += round(0.4 * height)
        return glyph, baseline
    return symbol_glyph(token.kind, rng, height, slant, pen_width)


# ---- security backgrounds ------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1] (paper mottling, uneven lighting, stains)."""
    h, w = shape
    small = rng.normal(size=(max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)))
    big = Image.fromarray(small.astype(np.float32), mode="F").resize(
        (w, h), Image.Resampling.BILINEAR
    )
    return np.asarray(big, dtype=np.float32)


def guilloche(
    rng: np.random.Generator,
    shape: tuple[int, int],
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """One family of fine wavy lines, as on bank security paper; returns an alpha map.

    Lines are the level sets of a phase function (waves, rosettes or moiré), drawn as thin
    ridges; `origin` offsets the coordinates so crops of one cheque stay continuous.
    """
    h, w = shape
    yy = (np.arange(h, dtype=np.float32) + origin[0])[:, None]
    xx = (np.arange(w, dtype=np.float32) + origin[1])[None, :]
    period = float(rng.uniform(3.5, 12.0)) * scale
    amp = float(rng.uniform(1.5, 18.0)) * scale
    wavelength = float(rng.uniform(18.0, 140.0)) * scale
    phi = float(rng.uniform(0, 2 * math.pi))
    kind = rng.random()
    if kind < 0.55:  # waves, possibly tilted (only the 1-D wave term needs a sine)
        tilt = float(rng.uniform(-0.6, 0.6))
        row_term = yy * math.cos(tilt)
        col_term = xx * math.sin(tilt) + amp * np.sin(2 * math.pi * xx / wavelength + phi)
        phase = (row_term + col_term) / period
    elif kind < 0.85:  # rosette around a centre that is often outside the crop
        cy = float(rng.uniform(-2 * h, 3 * h)) + origin[0]
        cx = float(rng.uniform(-w, 2 * w)) + origin[1]
        r = np.hypot(yy - cy, xx - cx)
        theta = np.arctan2(yy - cy, xx - cx)
        lobes = int(rng.integers(5, 40))
        phase = (r + amp * np.sin(lobes * theta + phi)) / period
    else:  # moiré of two near-parallel line sets
        phase = (yy + amp * np.sin(2 * math.pi * yy / wavelength) + 0.15 * xx) / period
    distance = np.abs(phase - np.round(phase)) * period
    width = float(rng.uniform(0.5, 1.4)) * max(1.0, scale)
    return np.clip(1.0 - distance / width, 0.0, 1.0, dtype=np.float32)


def security_background(
    rng: np.random.Generator,
    shape: tuple[int, int],
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """Reflectance of cheque paper: a tint, mottling, 0-3 guilloche families and fine grain."""
    paper = np.full(shape, float(rng.uniform(0.8, 1.0)), dtype=np.float32)
    if rng.random() < 0.7:
        paper += float(rng.uniform(0.01, 0.08)) * smooth_noise(
            rng, shape, float(rng.uniform(8, 60)) * scale
        )
    families = int(rng.choice(4, p=[0.15, 0.35, 0.35, 0.15]))
    for _ in range(families):
        paper *= 1.0 - float(rng.uniform(0.04, 0.3)) * guilloche(rng, shape, origin, scale)
    if rng.random() < 0.3:  # printed dot screen / grain
        grain = rng.random(shape, dtype=np.float32) < float(rng.uniform(0.005, 0.05))
        paper *= 1.0 - float(rng.uniform(0.1, 0.35)) * grain
    return np.clip(paper, 0.0, 1.0)


# ---- print -----------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def printed_text(text: str, size: int) -> np.ndarray:
    """Alpha map of machine-printed text (Pillow's bundled font, so no system fonts needed)."""
    font = _font(max(6, size))
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    image = Image.new("L", (max(1, right - left + 2), max(1, bottom - top + 2)), 0)
    ImageDraw.Draw(image).text((1 - left, 1 - top), text, fill=255, font=font)
    return np.asarray(image, dtype=np.float32) / 255.0


def hline(alpha: np.ndarray, row: int, x0: int, x1: int, thickness: int, dotted: bool) -> None:
    """Draw a horizontal printed line into `alpha` in place (clipped to the canvas)."""
    h, w = alpha.shape
    r0, r1 = max(0, row), min(h, row + thickness)
    c0, c1 = max(0, x0), min(w, x1)
    if r0 >= r1 or c0 >= c1:
        return
    if dotted:
        mask = (np.arange(c0, c1) // 2) % 2 == 0
        alpha[r0:r1, c0:c1] = np.maximum(alpha[r0:r1, c0:c1], mask.astype(np.float32))
    else:
        alpha[r0:r1, c0:c1] = 1.0


def vline(alpha: np.ndarray, col: int, y0: int, y1: int, thickness: int) -> None:
    """Draw a vertical printed line into `alpha` in place (clipped to the canvas)."""
    h, w = alpha.shape
    c0, c1 = max(0, col), min(w, col + thickness)
    r0, r1 = max(0, y0), min(h, y1)
    if r0 < r1 and c0 < c1:
        alpha[r0:r1, c0:c1] = 1.0


def paste_max(canvas: np.ndarray, glyph: np.ndarray, top: int, left: int) -> None:
    """Composite `glyph` into `canvas` at (top, left) taking the max (clipped to the canvas)."""
    h, w = canvas.shape
    gh, gw = glyph.shape
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(h, top + gh), min(w, left + gw)
    if r0 >= r1 or c0 >= c1:
        return
    region = glyph[r0 - top : r1 - top, c0 - left : c1 - left]
    np.maximum(canvas[r0:r1, c0:c1], region, out=canvas[r0:r1, c0:c1])


# ---- scanner -----------------------------------------------------------------------------------


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG at `quality` (blocking and ringing artefacts)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Reflectance in [0, 1] → uint8 gray."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def scan(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """What a cheque scanner and its compression do: blur, resampling, contrast and gamma
    changes, sensor noise, JPEG artefacts, and occasionally bilevel thresholding."""
    out = image
    if rng.random() < 0.3 * strength:
        factor = float(rng.uniform(0.5, 0.85))
        h, w = out.shape
        small = Image.fromarray(to_uint8(out)).resize(
            (max(2, round(w * factor)), max(2, round(h * factor))), Image.Resampling.BILINEAR
        )
        out = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    if rng.random() < 0.7 * strength:
        out = ndimage.gaussian_filter(out, float(rng.uniform(0.3, 1.1)))
    low = float(rng.uniform(0.0, 0.25)) * strength
    high = 1.0 - float(rng.uniform(0.0, 0.2)) * strength
    out = low + (high - low) * out
    out = np.clip(out, 0.0, 1.0) ** float(np.exp(rng.normal(0.0, 0.2 * strength)))
    sigma = float(rng.uniform(0.0, 0.045)) * strength
    if sigma > 0:
        out = out + sigma * rng.standard_normal(out.shape, dtype=np.float32)
    out = np.clip(out, 0.0, 1.0)
    if rng.random() < 0.05 * strength:  # bilevel scanners
        threshold = 0.5 * (float(np.percentile(out, 1)) + float(np.median(out)))
        out = (out > threshold).astype(np.float32)
    elif rng.random() < 0.6 * strength:
        out = jpeg_roundtrip(out, int(rng.integers(20, 92)))
    return out.astype(np.float32)
