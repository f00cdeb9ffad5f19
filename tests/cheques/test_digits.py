"""Digits cut from amount fields by forcing the reader's CTC frames onto the confirmed amount.

Fields are rendered from known MNIST test digits at known boxes; the reader and the digit model
are the shipped ones, so the cuts are judged by the real components.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from inkwell.cheques.digits import column_ranges, cut_digits, iou
from inkwell.cheques.pools import DigitPool
from inkwell.cheques.preprocess import FieldInput
from inkwell.cheques.reader import ChequeReader
from inkwell.cheques.synth import FieldSample, generate_fields, synth_config
from inkwell.model import DigitNet
from inkwell.preprocessing import preprocess_bytes
from inkwell.registry import load_digit_dir
from inkwell.shipped import SHIPPED_DIR

FIELDS = 30


@pytest.fixture(scope="module")
def reader() -> ChequeReader:
    return ChequeReader.from_dir(SHIPPED_DIR / "cheques")


@pytest.fixture(scope="module")
def digit_model() -> DigitNet:
    model, _meta = load_digit_dir(SHIPPED_DIR / "digits")
    return model.eval()


@pytest.fixture(scope="module")
def fields(test_pool: DigitPool) -> list[FieldSample]:
    return list(generate_fields(test_pool, FIELDS, 11, synth_config("real")))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def classify(model: DigitNet, png: bytes) -> int:
    with torch.inference_mode():
        return int(model(torch.from_numpy(preprocess_bytes(png))[None, None]).argmax(1).item())


def test_cut_digits_overlap_the_true_boxes_and_read_as_their_digit(
    reader: ChequeReader, digit_model: DigitNet, fields: list[FieldSample]
) -> None:
    overlaps, right, digits = [], 0, 0
    for sample in fields:
        cuts = cut_digits(reader, sample.image, sample.label)
        digits += len(sample.label)
        assert [c.digit for c in cuts] == [int(sample.label[c.position]) for c in cuts]
        assert [c.position for c in cuts] == sorted({c.position for c in cuts})
        for cut in cuts:
            overlaps.append(iou(cut.box, sample.boxes[cut.position]))
            right += classify(digit_model, cut.png()) == cut.digit
    assert len(overlaps) >= 0.95 * digits  # nearly every digit has a cut
    assert np.mean(np.asarray(overlaps) >= 0.5) >= 0.7
    assert right / len(overlaps) >= 0.75


def test_a_corrected_amount_is_cut_at_its_own_digits_not_the_reading(
    reader: ChequeReader, fields: list[FieldSample]
) -> None:
    sample = next(s for s in fields if len(s.label) >= 4)
    wrong = sample.label[:-1] + str((int(sample.label[-1]) + 5) % 10)
    cuts = cut_digits(reader, sample.image, wrong)
    assert [c.digit for c in cuts][-1] == int(wrong[-1])
    assert iou(cuts[-1].box, sample.boxes[-1]) >= 0.3  # the frames still find the last digit


def test_column_ranges_split_between_neighbours_and_stay_inside_the_field() -> None:
    prepared = FieldInput(np.zeros((32, 40), np.float32), 2.0, 80, 40, x_offset=0)
    ranges = column_ranges([(1, 2), (4, 5), (7, 8)], prepared, band_height=20.0)
    # frame centres 1.5, 4.5, 7.5 -> columns 12, 36, 60 (4 columns a frame, x_scale 2)
    assert ranges == [(0.0, 24.0), (24.0, 48.0), (48.0, 72.0)]
    single = column_ranges([(9, 10)], prepared, band_height=20.0)
    assert single == [(68.0, 80.0)]


def test_an_amount_with_more_digits_than_frames_gives_no_cuts(
    reader: ChequeReader, fields: list[FieldSample]
) -> None:
    assert cut_digits(reader, fields[0].image, "1" * 400) == []


def test_amount_must_be_digits(reader: ChequeReader, fields: list[FieldSample]) -> None:
    with pytest.raises(ValueError, match="digits only"):
        cut_digits(reader, fields[0].image, "12.50")
