"""Metrics and folder evaluation, checked against numbers worked out by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inkwell.cheques.dataset import normalise_label, read_labels
from inkwell.cheques.evaluate import evaluate_folder
from inkwell.cheques.metrics import (
    accuracy_at_review_rate,
    character_error_rate,
    edit_distance,
    evaluate_readings,
)
from inkwell.cheques.reader import ChequeReading
from inkwell.errors import DataCorruptError, DataNotFoundError, NoInkError


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("123", "123", 0),
        ("123", "13", 1),
        ("123", "1234", 1),
        ("15", "51", 2),
        ("", "907", 3),
        ("1500", "7500", 1),
    ],
)
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def test_character_error_rate_is_edits_over_true_digits() -> None:
    # 1 substitution + 1 deletion + 0 over 4 + 3 + 2 = 9 true digits
    assert character_error_rate(["1500", "123", "90"], ["7500", "13", "90"]) == pytest.approx(2 / 9)


def test_accuracy_at_review_rate_drops_the_least_confident() -> None:
    truths = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    preds = ["1", "2", "3", "4", "5", "6", "7", "8", "x", "y"]
    conf = [0.9, 0.8, 0.95, 0.7, 0.99, 0.85, 0.9, 0.6, 0.1, 0.65]
    assert accuracy_at_review_rate(truths, preds, conf, 0.0) == pytest.approx(0.8)
    # 10 % → the "9"/"x" (0.1) goes to review: 8 right of the 9 kept
    assert accuracy_at_review_rate(truths, preds, conf, 0.1) == pytest.approx(8 / 9)
    # 30 % → 0.1, 0.6 and 0.65 go: 7 right of the 7 kept
    assert accuracy_at_review_rate(truths, preds, conf, 0.3) == pytest.approx(1.0)


def test_review_rate_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="review rate"):
        accuracy_at_review_rate(["1"], ["1"], [1.0], 1.0)


def test_report_combines_flags_and_accuracy() -> None:
    report = evaluate_readings(
        ["a", "b", "c", "d"],
        ["12", "34", "56", "78"],
        ["12", "34", "58", ""],
        [0.99, 0.4, 0.3, 0.0],
        [False, True, False, True],
        review_rates=(0.0, 0.5),
    )
    assert report.string_accuracy == pytest.approx(0.5)
    assert report.cer == pytest.approx(3 / 8)
    assert report.accuracy_at_review == {0.0: 0.5, 0.5: 1.0}
    assert report.flagged_rate == pytest.approx(0.5)
    assert report.accepted_accuracy == pytest.approx(0.5)
    assert [m[0] for m in report.mistakes] == ["d", "c"]  # least confident first


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("1500", "1500"),
        ("1.500", "1500"),
        (" 2,350.00 ", "235000"),
        ("", ""),
        ("12a", None),
        ("$15", None),
    ],
)
def test_labels_drop_separators_and_refuse_other_symbols(raw: str, label: str | None) -> None:
    assert normalise_label(raw) == label


class FakeReader:
    """Answers from a table keyed by image content; raises NoInkError for unknown images."""

    def __init__(self, answers: dict[str, tuple[str, float, bool]]) -> None:
        self.answers = answers

    def read(
        self, image: bytes | np.ndarray, *, layout: str = "auto", decoder: str = "greedy"
    ) -> ChequeReading:
        key = hashlib.md5(bytes(image)).hexdigest()
        if key not in self.answers:
            raise NoInkError("No digits found in the amount field.")
        amount, confidence, review = self.answers[key]
        return ChequeReading(amount, confidence, review, 0.5, (), "field")


def _png(path: Path, shade: int) -> str:
    Image.fromarray(np.full((20, 40), shade, np.uint8)).save(path)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_evaluate_folder_on_a_hand_made_folder(tmp_path: Path) -> None:
    keys = [_png(tmp_path / f"{i}.png", 10 * i) for i in range(5)]
    (tmp_path / "labels.csv").write_text(
        "filename,digit_string\n0.png,1500\n1.png,27\n2.png,3.000\n3.png,45\n4.png,\n"
    )
    reader = FakeReader(
        {
            keys[0]: ("1500", 0.95, False),  # right
            keys[1]: ("21", 0.30, True),  # wrong, flagged
            keys[2]: ("3000", 0.80, False),  # right (label separators ignored)
            # keys[3] refused (no ink): wrong, confidence 0; keys[4] refused, label empty: right
        }
    )
    result = evaluate_folder(reader, tmp_path, review_rates=(0.0, 0.2, 0.4))
    report = result.report
    assert report.n == 5
    assert report.string_accuracy == pytest.approx(3 / 5)
    assert report.cer == pytest.approx((1 + 2) / (4 + 2 + 4 + 2))  # 27→21: 1, 45→"": 2
    assert report.unreadable == 2
    assert result.refused == {"no_ink": 2}
    # 20 % review: one of the two confidence-0 fields (the first in order: "45") goes
    assert report.accuracy_at_review[0.2] == pytest.approx(3 / 4)
    # 40 % review: both confidence-0 fields go, leaving 1500 ✓, 21 ✗, 3000 ✓
    assert report.accuracy_at_review[0.4] == pytest.approx(2 / 3)
    assert report.flagged_rate == pytest.approx(3 / 5)
    assert report.accepted_accuracy == pytest.approx(1.0)
    assert len(result.latencies_ms) == 5


def test_labels_file_problems_are_listed_with_line_numbers(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 0)
    (tmp_path / "labels.csv").write_text("filename,digit_string\na.png,12x\nmissing.png,15\n")
    with pytest.raises(DataCorruptError) as caught:
        read_labels(tmp_path)
    assert "line 2" in caught.value.message and "not a digit string" in caught.value.message
    assert "line 3" in caught.value.message and "does not exist" in caught.value.message


def test_missing_labels_file_says_what_to_create(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="filename,digit_string"):
        read_labels(tmp_path)
