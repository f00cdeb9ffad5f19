"""Locating the courtesy-amount box on synthetic whole cheques."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from inkwell.cheques.layout import generate_cheques, write_cheques
from inkwell.cheques.locate import is_whole_cheque, locate_amount_field
from inkwell.cheques.pools import DigitPool
from inkwell.errors import AmountFieldNotFoundError, NoInkError


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_the_amount_crop_holds_all_of_the_written_amount(test_pool: DigitPool) -> None:
    hits, overlaps = 0, []
    cheques = list(generate_cheques(test_pool, 30, seed=11))
    for cheque in cheques:
        location = locate_amount_field(cheque.image.astype(np.float32) / 255.0)
        x0, y0, x1, y1 = location.box
        ix0, iy0, ix1, iy1 = cheque.ink_box
        hits += x0 <= ix0 + 3 and y0 <= iy0 + 3 and x1 >= ix1 - 3 and y1 >= iy1 - 3
        overlaps.append(iou(location.box, cheque.box))
    assert hits >= 27, f"the crop held the amount on {hits} of {len(cheques)} cheques"
    assert float(np.median(overlaps)) > 0.6


def test_box_style_is_reported(test_pool: DigitPool) -> None:
    styles = set()
    for cheque in generate_cheques(test_pool, 12, seed=4):
        if cheque.style == "box":
            location = locate_amount_field(cheque.image.astype(np.float32) / 255.0)
            styles.add(location.method)
    assert "box" in styles


def test_blank_paper_is_no_ink() -> None:
    with pytest.raises(NoInkError, match="blank"):
        locate_amount_field(np.full((450, 1050), 0.95, np.float32))


def test_ink_without_a_box_or_underline_is_not_guessed() -> None:
    paper = np.full((450, 1050), 0.95, np.float32)
    paper[200:230, 600:900] = 0.1  # a blot, but no printed box or underline
    with pytest.raises(AmountFieldNotFoundError, match="Crop the amount box"):
        locate_amount_field(paper)


def test_cheques_and_fields_are_told_apart_by_size() -> None:
    assert is_whole_cheque(np.ones((450, 1050)))
    assert not is_whole_cheque(np.ones((60, 250)))  # an amount field
    assert not is_whole_cheque(np.ones((450, 450)))  # square: not a cheque layout


def test_cheque_synth_writes_labels_and_boxes(test_pool: DigitPool, tmp_path: Path) -> None:
    write_cheques(tmp_path, generate_cheques(test_pool, 2, seed=0), "test", 0)
    with (tmp_path / "boxes.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert all(int(r["x1"]) > int(r["x0"]) and int(r["y1"]) > int(r["y0"]) for r in rows)
    assert (tmp_path / "labels.csv").read_text().startswith("filename,digit_string\n")
