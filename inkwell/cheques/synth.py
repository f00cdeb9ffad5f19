"""Synthetic courtesy-amount fields made of real handwritten MNIST digits.

One field is drawn in this order: pick an amount and its written form (`amounts`); redraw each
digit from the split's MNIST pool at the writer's size, slant and pen width; lay the tokens out
along a wavy baseline with gaps from clear spaces to overlaps (touching digits); add the
printed box, underlines crossing the ink and a printed ``$``; put it all on security paper
(guilloche waves, rosettes, mottling); then scan it (blur, resampling, contrast, gamma, noise,
JPEG or bilevel). Sample ``i`` of seed ``s`` in split ``p`` depends only on ``(s, p, i)``, so a
data set is reproducible and can be generated in any order or in parallel.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from inkwell.cheques import render
from inkwell.cheques.amounts import (
    CLASSIC,
    WritingStyle,
    WrittenAmount,
    blank_amount,
    sample_amount,
)
from inkwell.cheques.pools import SPLITS, DigitPool

LABELS_FILE = "labels.csv"
META_FILE = "meta.jsonl"
LABEL_HEADER = ("filename", "digit_string")
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}


@dataclass(frozen=True)
class SynthConfig:
    """Ranges of the field generator (defaults: realistic scanned cheque amount boxes)."""

    min_digits: int = 2
    max_digits: int = 7
    min_digit_height: float = 16.0
    max_digit_height: float = 44.0
    blank_rate: float = 0.0  # fraction of fields with no digit at all (label "")
    degrade: float = 1.0  # strength of the scanner simulation, 0 = clean
    writing: WritingStyle = CLASSIC  # separators, compact zeros, trailing strokes
    gap: tuple[float, float] = (-0.12, 0.3)  # range of a writer's mean gap, x digit height
    forms: float = 0.0  # chance a 1 or 7 is drawn in a non-US form (flag, crossbar)
    printed_dollar: float = 0.25  # fields with a printed "$" before the box

    @classmethod
    def real_cheques(cls, **overrides: object) -> SynthConfig:
        """Closer to scanned bank cheques (style "real"): tighter, touching digits, small
        quick zeros after a thousands dot, 1s with flags and crossed 7s, ".-" endings."""
        base: dict[str, object] = {
            "writing": WritingStyle.real_cheques(),
            "gap": (-0.18, 0.18),
            "forms": 0.4,
            "printed_dollar": 0.05,
        }
        return cls(**{**base, **overrides})  # type: ignore[arg-type]


SYNTH_STYLES = ("classic", "real")


def synth_config(style: str, **overrides: object) -> SynthConfig:
    """The generator configuration of a named style (`SYNTH_STYLES`)."""
    if style == "classic":
        return SynthConfig(**overrides)  # type: ignore[arg-type]
    if style == "real":
        return SynthConfig.real_cheques(**overrides)
    raise ValueError(f"unknown synthetic style {style!r}; use one of {', '.join(SYNTH_STYLES)}")


@dataclass
class Placed:
    """A token's alpha map placed in field coordinates; `digit` is -1 for symbols."""

    alpha: np.ndarray
    top: int
    left: int
    digit: int
    source: int = -1
    scale: float = 1.0


@dataclass
class InkLayout:
    """The pen layer of a field before paper and print: alpha map and per-digit boxes."""

    alpha: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    sources: list[int]
    digit_height: float
    baseline: int


@dataclass
class FieldSample:
    """A rendered amount field: uint8 gray image (255 = white), label and ground truth."""

    image: np.ndarray
    label: str
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x0, y0, x1, y1)
    sources: list[int] = field(default_factory=list)  # MNIST index of each digit


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample `index` of `split` under `seed` (independent of all others)."""
    return np.random.default_rng([seed, _SPLIT_CODE.get(split, 99), index])


def layout_ink(
    written: WrittenAmount,
    pool: DigitPool,
    rng: np.random.Generator,
    digit_height: float,
    cfg: SynthConfig | None = None,
) -> list[Placed]:
    """Place the pen tokens of `written` along a baseline at y = 0 (tops are negative)."""
    cfg = cfg or SynthConfig()
    slant = float(np.clip(rng.normal(0.12, 0.15), -0.35, 0.5))
    pen_width = max(1.0, float(rng.uniform(0.05, 0.13)) * digit_height)
    mean_gap = float(rng.uniform(*cfg.gap)) * digit_height
    slope = float(rng.normal(0.0, 0.03))
    placed: list[Placed] = []
    x = 0.0
    for i, token in enumerate(written.tokens):
        source = -1
        image28 = None
        if token.is_digit:
            position = pool.pick(token.digit, rng)
            image28 = pool.images[position]
            source = int(pool.source_index[position])
        glyph, baseline = render.token_glyph(
            token, image28, rng, digit_height, slant, pen_width, cfg.forms
        )
        if i > 0:
            gap = mean_gap + float(rng.normal(0.0, 0.06)) * digit_height
            x += gap * min(token.scale, placed[-1].scale) if gap > 0 else gap
        y = slope * x + float(rng.normal(0.0, 0.035)) * digit_height
        placed.append(
            Placed(
                glyph,
                round(y) - baseline,
                round(x),
                token.digit if token.is_digit else -1,
                scale=token.scale,
            )
        )
        placed[-1].source = source
        x += glyph.shape[1]
    return placed


def compose_ink(placed: list[Placed], digit_height: float) -> InkLayout:
    """Rasterise placed tokens into one tight alpha map (max-composited, so strokes may touch)."""
    if not placed:
        width = max(4, round(3 * digit_height))
        return InkLayout(
            np.zeros((round(digit_height), width), np.float32), [], [], digit_height, 0
        )
    top = min(p.top for p in placed)
    left = min(p.left for p in placed)
    bottom = max(p.top + p.alpha.shape[0] for p in placed)
    right = max(p.left + p.alpha.shape[1] for p in placed)
    alpha = np.zeros((bottom - top, right - left), np.float32)
    boxes: list[tuple[int, int, int, int]] = []
    sources: list[int] = []
    for p in placed:
        render.paste_max(alpha, p.alpha, p.top - top, p.left - left)
        if p.digit >= 0:
            r0, r1, c0, c1 = render.ink_bbox(p.alpha, 0.2)
            boxes.append(
                (p.left - left + c0, p.top - top + r0, p.left - left + c1, p.top - top + r1)
            )
            sources.append(p.source)
    return InkLayout(alpha, boxes, sources, digit_height, -top)


def _stray_stroke(alpha: np.ndarray, rng: np.random.Generator, pen: float) -> None:
    """A piece of neighbouring handwriting poking in from the top or bottom edge."""
    h, w = alpha.shape
    image = Image.fromarray((alpha * 255).astype(np.uint8))
    from_top = rng.random() < 0.5
    x0 = float(rng.uniform(0, w))
    depth = float(rng.uniform(0.1, 0.3)) * h
    ys = np.array([-2.0, depth * 0.6, depth, depth * 0.5])
    if not from_top:
        ys = h + 1 - ys
    xs = x0 + np.cumsum(rng.normal(0, 0.15 * h, size=4))
    points = [(float(a), float(b)) for a, b in zip(xs, ys, strict=True)]
    ImageDraw.Draw(image).line(points, fill=255, width=max(1, round(pen)), joint="curve")
    alpha[:] = np.asarray(image, dtype=np.float32) / 255.0


def _print_layer(
    shape: tuple[int, int],
    rng: np.random.Generator,
    digit_height: float,
    baseline_row: int,
    ink_top: int,
    dollar_width: int,
) -> np.ndarray:
    """Printed box lines, guide lines crossing the ink, and the printed `$` of the form."""
    h, w = shape
    alpha = np.zeros(shape, np.float32)
    thick = 1 if rng.random() < 0.7 else 2
    if rng.random() < 0.45:  # the amount box (cropped at or just inside its lines)
        inset = int(rng.integers(0, 3))
        if rng.random() < 0.9:
            render.hline(alpha, inset, 0, w, thick, False)
        if rng.random() < 0.9:
            render.hline(alpha, h - inset - thick, 0, w, thick, False)
        if rng.random() < 0.8:
            render.vline(alpha, inset, 0, h, thick)
        if rng.random() < 0.8:
            render.vline(alpha, w - inset - thick, 0, h, thick)
    if rng.random() < 0.3:  # a guide line under (or through the bottom of) the digits
        row = baseline_row + round(float(rng.normal(0.05, 0.1)) * digit_height)
        start = int(rng.integers(0, max(1, w // 4)))
        render.hline(alpha, min(h - thick, max(0, row)), start, w, thick, rng.random() < 0.25)
    if rng.random() < 0.06:  # a line through the top of the digits
        row = ink_top + round(float(rng.uniform(0.0, 0.2)) * digit_height)
        render.hline(alpha, row, 0, w, thick, False)
    if dollar_width:
        size = round(float(rng.uniform(0.6, 1.0)) * digit_height)
        glyph = render.printed_text("$", size)
        top = baseline_row - glyph.shape[0] + round(float(rng.normal(0, 0.05)) * digit_height)
        render.paste_max(
            alpha, glyph, top, int(rng.integers(1, max(2, dollar_width - glyph.shape[1])))
        )
    return alpha


def render_field(
    written: WrittenAmount, pool: DigitPool, rng: np.random.Generator, cfg: SynthConfig
) -> FieldSample:
    """Draw `written` as a scanned amount field (see the module docstring for the steps)."""
    digit_height = float(rng.uniform(cfg.min_digit_height, cfg.max_digit_height))
    ink = compose_ink(layout_ink(written, pool, rng, digit_height, cfg), digit_height)
    ink_h, ink_w = ink.alpha.shape
    height = max(ink_h + 2, round(digit_height * float(rng.uniform(1.2, 2.3))))
    top = int(rng.integers(0, height - ink_h + 1))
    left = round(float(rng.uniform(0.03, 1.2)) * digit_height)
    dollar_width = 0
    if rng.random() < cfg.printed_dollar:
        dollar_width = round(float(rng.uniform(0.8, 1.4)) * digit_height)
        left += dollar_width
    right = round(float(rng.uniform(0.03, 1.2)) * digit_height)
    width = left + ink_w + right
    alpha = np.zeros((height, width), np.float32)
    render.paste_max(alpha, ink.alpha, top, left)
    if rng.random() < 0.08:
        _stray_stroke(alpha, rng, max(1.0, 0.08 * digit_height))
    pressure = float(np.exp(rng.normal(0.0, 0.3)))
    pen = np.clip(alpha, 0.0, 1.0) ** pressure * float(rng.uniform(0.5, 0.97))
    printed = _print_layer(
        (height, width), rng, digit_height, top + ink.baseline, top, dollar_width
    )
    paper = render.security_background(rng, (height, width))
    reflectance = paper * (1.0 - float(rng.uniform(0.3, 0.85)) * printed) * (1.0 - pen)
    scanned = render.scan(reflectance, rng, cfg.degrade)
    boxes = [(x0 + left, y0 + top, x1 + left, y1 + top) for x0, y0, x1, y1 in ink.boxes]
    return FieldSample(render.to_uint8(scanned), written.label, boxes, ink.sources)


def sample_field(pool: DigitPool, rng: np.random.Generator, cfg: SynthConfig) -> FieldSample:
    """A random amount field (or, with probability `cfg.blank_rate`, one with no digits)."""
    if cfg.blank_rate > 0 and rng.random() < cfg.blank_rate:
        written = blank_amount(rng, cfg.writing)
    else:
        written = sample_amount(rng, cfg.min_digits, cfg.max_digits, cfg.writing)
    return render_field(written, pool, rng, cfg)


def generate_fields(
    pool: DigitPool, n: int, seed: int, cfg: SynthConfig | None = None, start: int = 0
) -> Iterator[FieldSample]:
    """Samples `start .. start + n - 1` of (`seed`, `pool.split`), deterministically."""
    cfg = cfg or SynthConfig()
    for index in range(start, start + n):
        yield sample_field(pool, sample_rng(seed, pool.split, index), cfg)


def write_labels(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write a labels CSV (`filename,digit_string`)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABEL_HEADER)
        writer.writerows(rows)


def write_fields(out: Path, samples: Iterator[FieldSample], split: str, seed: int) -> int:
    """Write samples as PNGs plus `labels.csv` and `meta.jsonl` (boxes, MNIST provenance)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    with (out / META_FILE).open("w") as meta:
        for i, sample in enumerate(samples):
            name = f"{split}-{seed}-{i:06d}.png"
            Image.fromarray(sample.image).save(out / name)
            rows.append((name, sample.label))
            record = {
                "filename": name,
                "digit_string": sample.label,
                "boxes": sample.boxes,
                "mnist_split": "test" if split == "test" else "train",
                "mnist_index": sample.sources,
            }
            meta.write(json.dumps(record) + "\n")
    write_labels(out / LABELS_FILE, rows)
    return len(rows)


__all__ = [
    "LABELS_FILE",
    "SYNTH_STYLES",
    "FieldSample",
    "SynthConfig",
    "generate_fields",
    "render_field",
    "sample_field",
    "sample_rng",
    "synth_config",
    "write_fields",
]
