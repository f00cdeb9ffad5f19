"""Digits cut from amount fields by forcing the reader's CTC frames onto the confirmed amount.

Fields are rendered from known MNIST test digits at known boxes; the reader and the digit model
are the shipped ones, so the cuts are judged by the real components.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from inkwell.cheques.cli import register
from inkwell.cheques.digits import column_ranges, cut_digits, iou, read_digit_boxes
from inkwell.cheques.pools import DigitPool
from inkwell.cheques.preprocess import FieldInput
from inkwell.cheques.reader import ChequeReader
from inkwell.cheques.synth import FieldSample, generate_fields, synth_config
from inkwell.digit_images import read_digit_labels
from inkwell.errors import DataCorruptError
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


@pytest.fixture(scope="module")
def field_folder(tmp_path_factory: pytest.TempPathFactory, fields: list[FieldSample]) -> Path:
    """Fields as a bank's folder: fields/*.png, labels.csv and a digits.csv box per digit."""
    folder = tmp_path_factory.mktemp("bank")
    (folder / "fields").mkdir()
    labels, boxes = ["filename,digit_string"], ["filename,x,y,width,height,digit"]
    for i, sample in enumerate(fields[:8]):
        name = f"fields/f{i}.png"
        Image.fromarray(sample.image).save(folder / name)
        labels.append(f"{name},{sample.label}")
        boxes += [
            f"{name},{x0},{y0},{x1 - x0},{y1 - y0},{d}"
            for (x0, y0, x1, y1), d in zip(sample.boxes, sample.label, strict=True)
        ]
    (folder / "labels.csv").write_text("\n".join(labels) + "\n")
    (folder / "digits.csv").write_text("\n".join(boxes) + "\n")
    return folder


def cli(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["cheques", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_cut_digits_by_boxes_writes_a_folder_eval_images_reads(
    field_folder: Path, fields: list[FieldSample], tmp_path: Path
) -> None:
    code, output = cli("cut-digits", str(field_folder), "--out", str(tmp_path / "d"))
    assert code == 0, output
    digits = sum(len(s.label) for s in fields[:8])
    assert f"{digits} digits of {digits} cut from 8 fields" in " ".join(output.split())
    rows = read_digit_labels(tmp_path / "d")
    assert [label for _, label in rows] == [int(d) for s in fields[:8] for d in s.label]


def test_cut_digits_by_reader_reports_agreement_with_the_boxes(
    field_folder: Path, tmp_path: Path
) -> None:
    shipped = str(SHIPPED_DIR / "cheques")
    code, output = cli(
        "cut-digits",
        str(field_folder),
        "--out",
        str(tmp_path / "r"),
        "--by",
        "reader",
        "--model-dir",
        shipped,
        "--limit",
        "4",
    )
    assert code == 0, output
    found = re.search(r"IoU >= 0.5 with digits.csv: ([\d.]+) %", output)
    assert found and float(found.group(1)) >= 50.0, output
    assert len(read_digit_labels(tmp_path / "r")) >= 1


def test_cut_digits_by_boxes_without_digits_csv_says_what_to_add(
    field_folder: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(field_folder, bare)
    (bare / "digits.csv").unlink()
    code, output = cli("cut-digits", str(bare), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "has no digits.csv" in " ".join(output.split()) and "--by reader" in output


def test_bad_digit_box_rows_are_listed_by_line(tmp_path: Path) -> None:
    path = tmp_path / "digits.csv"
    path.write_text("filename,x,y,width,height,digit\nf.png,1,2,3\nf.png,1,2,3,4,12\n")
    with pytest.raises(DataCorruptError, match="2 bad row") as caught:
        read_digit_boxes(path)
    assert "line 2" in caught.value.message and "line 3" in caught.value.message
