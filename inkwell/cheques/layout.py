"""Synthetic whole cheques, to test locating the courtesy-amount box.

A cheque is drawn like a personal/business cheque: security paper over the whole face, a
frame, the bank name, a printed cheque number, a date line (with handwritten date digits — a
deliberate distractor), "PAY TO THE ORDER OF" with a scribbled payee, the courtesy-amount box
on the right (a printed rectangle, or only an underline, with a printed ``$``), the legal
amount line with cursive-like scribbles, memo and signature lines, and a MICR-like printed
line at the bottom. The amount is drawn with the same pen model and digit pools as the field
generator, and the sample records the true box.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from inkwell.cheques import render
from inkwell.cheques.amounts import Token, WrittenAmount, sample_amount, sample_digits
from inkwell.cheques.pools import SPLITS, DigitPool
from inkwell.cheques.synth import LABELS_FILE, compose_ink, layout_ink, write_labels

BOX_STYLES = ("box", "underline")
BOXES_FILE = "boxes.csv"


@dataclass
class ChequeSample:
    """A rendered cheque (uint8 gray, 255 = white), its amount and the amount box."""

    image: np.ndarray
    label: str
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the amount box, lines included
    style: str
    ink_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # where the amount's ink is


def _paste_text(alpha: np.ndarray, text: str, size: int, top: int, left: int) -> tuple[int, int]:
    glyph = render.printed_text(text, size)
    render.paste_max(alpha, glyph, top, left)
    return glyph.shape[1], glyph.shape[0]


def _scribble(
    alpha: np.ndarray,
    rng: np.random.Generator,
    x0: float,
    x1: float,
    baseline: float,
    height: float,
    pen: float,
) -> None:
    """Cursive-looking handwriting (loops along a baseline) between x0 and x1, in place."""
    image = Image.fromarray((alpha * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x = x0
    while x < x1:
        word = float(rng.uniform(0.15, 0.4)) * (x1 - x0) + 10
        t = np.linspace(0, 1, 60)
        loops = float(rng.uniform(3, 9))
        xs = x + t * min(word, x1 - x) + 0.25 * height * np.cos(2 * math.pi * loops * t)
        envelope = 0.6 + 0.4 * np.abs(np.sin(math.pi * t * float(rng.uniform(1, 3))))
        ys = baseline - height * envelope * (0.5 + 0.5 * np.sin(2 * math.pi * loops * t))
        ys += rng.normal(0, 0.03 * height, size=t.size)
        points = [(float(a), float(b)) for a, b in zip(xs, ys, strict=True)]
        draw.line(points, fill=255, width=max(1, round(pen)), joint="curve")
        x += word + float(rng.uniform(0.3, 0.8)) * height
    alpha[:] = np.asarray(image, dtype=np.float32) / 255.0


def _hand_digits(
    alpha: np.ndarray,
    pool: DigitPool,
    rng: np.random.Generator,
    digits: str,
    left: int,
    baseline: int,
    height: float,
) -> None:
    """Handwritten digits (e.g. a date) with the field pen model, pasted in place."""
    written = WrittenAmount(digits, tuple(Token("digit", int(c)) for c in digits))
    ink = compose_ink(layout_ink(written, pool, rng, height), height)
    render.paste_max(alpha, ink.alpha, baseline - ink.baseline, left)


def render_cheque(pool: DigitPool, rng: np.random.Generator) -> ChequeSample:
    """Draw one synthetic cheque with a random layout (see the module docstring)."""
    width = int(rng.integers(850, 1300))
    height = round(width / float(rng.uniform(2.2, 2.6)))
    print_alpha = np.zeros((height, width), np.float32)
    pen_alpha = np.zeros((height, width), np.float32)
    unit = height / 450.0  # layout sizes below are for a 450 px tall cheque
    pen = max(1.0, float(rng.uniform(1.5, 3.2)) * unit)

    if rng.random() < 0.7:  # frame
        m, t = round(rng.uniform(6, 18) * unit), max(1, round(rng.uniform(1, 4) * unit))
        render.hline(print_alpha, m, m, width - m, t, False)
        render.hline(print_alpha, height - m - t, m, width - m, t, False)
        render.vline(print_alpha, m, m, height - m, t)
        render.vline(print_alpha, width - m - t, m, height - m, t)
    margin = round(0.05 * width)
    _paste_text(
        print_alpha,
        "FIRST NATIONAL BANK",
        round(rng.uniform(22, 34) * unit),
        round(0.06 * height),
        margin,
    )
    number = "".join(str(d) for d in rng.integers(0, 10, 4))
    _paste_text(
        print_alpha,
        f"No {number}",
        round(rng.uniform(14, 20) * unit),
        round(0.06 * height),
        round(0.85 * width),
    )

    # courtesy amount box: right side, upper-middle
    box_w = round(float(rng.uniform(0.17, 0.27)) * width)
    box_h = round(float(rng.uniform(0.09, 0.14)) * height)
    bx1 = width - round(float(rng.uniform(0.04, 0.08)) * width)
    bx0 = bx1 - box_w
    by0 = round(float(rng.uniform(0.28, 0.42)) * height)
    by1 = by0 + box_h
    style = "box" if rng.random() < 0.75 else "underline"
    thick = max(1, round(float(rng.uniform(1, 3)) * unit))
    if style == "box":
        render.hline(print_alpha, by0, bx0, bx1, thick, False)
        render.hline(print_alpha, by1 - thick, bx0, bx1, thick, False)
        render.vline(print_alpha, bx0, by0, by1, thick)
        render.vline(print_alpha, bx1 - thick, by0, by1, thick)
    else:
        render.hline(print_alpha, by1 - thick, bx0, bx1, thick, False)
    dollar = render.printed_text("$", round(box_h * 0.7))
    render.paste_max(
        print_alpha,
        dollar,
        by1 - dollar.shape[0] - round(0.15 * box_h),
        bx0 - dollar.shape[1] - round(0.01 * width),
    )

    # the amount itself
    written = sample_amount(rng)
    digit_h = float(rng.uniform(0.45, 0.7)) * box_h
    ink = compose_ink(layout_ink(written, pool, rng, digit_h), digit_h)
    ink_h, ink_w = ink.alpha.shape
    if ink_w > box_w - 6:  # keep it inside the box, as writers do
        factor = (box_w - 6) / ink_w
        ink_img = Image.fromarray((ink.alpha * 255).astype(np.uint8)).resize(
            (max(1, round(ink_w * factor)), max(1, round(ink_h * factor))),
            Image.Resampling.BILINEAR,
        )
        ink_alpha = np.asarray(ink_img, dtype=np.float32) / 255.0
    else:
        ink_alpha = ink.alpha
    ih, iw = ink_alpha.shape
    left = bx0 + 3 + int(rng.integers(0, max(1, box_w - iw - 5)))
    top = by1 - ih - round(float(rng.uniform(0.08, 0.3)) * box_h)
    top = max(by0 - round(0.1 * box_h), top)
    render.paste_max(pen_alpha, ink_alpha, top, left)
    r0, r1, c0, c1 = render.ink_bbox(ink_alpha, 0.2)
    ink_box = (left + c0, top + r0, left + c1, top + r1)

    # date, with handwritten digits above a line
    date_y = round(float(rng.uniform(0.17, 0.22)) * height)
    dx0 = round(float(rng.uniform(0.55, 0.62)) * width)
    w_text, _ = _paste_text(print_alpha, "DATE", round(16 * unit), date_y - round(18 * unit), dx0)
    render.hline(print_alpha, date_y, dx0 + w_text + 8, dx0 + w_text + round(0.2 * width), 1, False)
    date = "".join(str(d) for d in rng.integers(0, 10, 6))
    _hand_digits(
        pen_alpha, pool, rng, date, dx0 + w_text + 14, date_y - 3, float(rng.uniform(18, 28)) * unit
    )

    # payee line and scribbled name
    pay_y = by1 + round(float(rng.uniform(-0.02, 0.03)) * height)
    w_pay, _ = _paste_text(
        print_alpha, "PAY TO THE ORDER OF", round(15 * unit), pay_y - round(20 * unit), margin
    )
    line_end = bx0 - round(0.07 * width)
    render.hline(print_alpha, pay_y, margin + w_pay + 8, line_end, 1, False)
    _scribble(pen_alpha, rng, margin + w_pay + 20, line_end - 40, pay_y - 4, 26 * unit, pen)

    # legal amount line with scribbles, "DOLLARS" at its end
    legal_y = round(float(rng.uniform(0.58, 0.66)) * height)
    render.hline(print_alpha, legal_y, margin, round(0.8 * width), 1, False)
    _paste_text(
        print_alpha, "DOLLARS", round(15 * unit), legal_y - round(18 * unit), round(0.82 * width)
    )
    _scribble(pen_alpha, rng, margin + 20, round(0.6 * width), legal_y - 4, 26 * unit, pen)

    # memo, signature, MICR
    sig_y = round(0.82 * height)
    render.hline(print_alpha, sig_y, margin, round(0.4 * width), 1, False)
    _paste_text(print_alpha, "MEMO", round(14 * unit), sig_y - round(18 * unit), margin)
    render.hline(print_alpha, sig_y, round(0.58 * width), round(0.93 * width), 1, False)
    _scribble(pen_alpha, rng, round(0.62 * width), round(0.85 * width), sig_y - 4, 34 * unit, pen)
    micr = f"{sample_digits(rng, 9, 9)}  {sample_digits(rng, 7, 10)}  {number}"
    _paste_text(print_alpha, micr, round(20 * unit), round(0.9 * height), round(0.12 * width))

    paper = render.security_background(rng, (height, width), scale=float(rng.uniform(1.5, 3.0)))
    reflectance = (
        paper
        * (1.0 - float(rng.uniform(0.55, 0.9)) * print_alpha)
        * (1.0 - float(rng.uniform(0.6, 0.95)) * pen_alpha)
    )
    scanned = render.scan(reflectance, rng, 0.7)
    return ChequeSample(
        render.to_uint8(scanned), written.label, (bx0, by0, bx1, by1), style, ink_box
    )


def cheque_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of cheque `index` (a stream separate from the amount fields')."""
    return np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99, index, 1])


def generate_cheques(pool: DigitPool, n: int, seed: int, start: int = 0) -> Iterator[ChequeSample]:
    """Cheques `start .. start + n - 1` of (`seed`, `pool.split`), deterministically."""
    for index in range(start, start + n):
        yield render_cheque(pool, cheque_rng(seed, pool.split, index))


def write_cheques(out: Path, samples: Iterable[ChequeSample], split: str, seed: int) -> int:
    """Write cheques as PNGs plus `labels.csv` and `boxes.csv` (the amount box, its style,
    and the bounding box of the amount's ink)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    with (out / BOXES_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("filename", "x0", "y0", "x1", "y1", "style", "ink_box"))
        for i, sample in enumerate(samples):
            name = f"cheque-{split}-{seed}-{i:06d}.png"
            Image.fromarray(sample.image).save(out / name)
            rows.append((name, sample.label))
            writer.writerow((name, *sample.box, sample.style, " ".join(map(str, sample.ink_box))))
    write_labels(out / LABELS_FILE, rows)
    return len(rows)
