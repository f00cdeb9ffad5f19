"""`inkwell eval --images DIR` and `--model-dir DIR`: a digit model on a folder of real digits.

The model is a small DigitNet really trained on MNIST (seconds) and saved as a model folder;
the folders hold MNIST test digits redrawn as scans (dark ink on light paper, upscaled, off
centre), which only the serving preprocessing turns back into MNIST format. One test runs the
real `inkwell` entry point; the others run the command in this process (`tests.cli.invoke`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inkwell.data import load_split
from inkwell.digit_images import evaluate_digit_folder, load_digit_folder
from inkwell.registry import load_digit_dir
from inkwell.shipped import SHIPPED_DIR
from tests.cli import invoke, run

REPO = Path(__file__).resolve().parents[2]
CHEQUES_DIR = Path(
    os.environ.get("INKWELL_CHEQUES_DATA_DIR", REPO.parent / "shared" / "data" / "orand-car-a")
)


def accuracy_line(stdout: str) -> float:
    found = re.search(r"^accuracy (\d{1,3}\.\d\d) %$", stdout, re.MULTILINE)
    assert found, stdout
    return float(found.group(1))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The shipped digit model's folder (weights.pt + model.json), as `inkwell train` saves one."""
    return SHIPPED_DIR / "digits"


def as_scan(digit: np.ndarray) -> bytes:
    big = np.asarray(Image.fromarray(digit).resize((84, 84), Image.Resampling.BILINEAR))
    paper = np.full((120, 150), 230, np.uint8)
    paper[20:104, 50:134] = 230 - (big.astype(np.int32) * 200 // 255)
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, "PNG")
    return buffer.getvalue()


def write_folder(folder: Path, rows: list[tuple[str, bytes, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "digit"])
        for name, data, label in rows:
            (folder / name).write_bytes(data)
            writer.writerow([name, label])
    return folder


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    test = load_split("test", mnist_dir)
    rows = [(f"d{i}.png", as_scan(test.images[i]), str(test.labels[i])) for i in range(100)]
    return write_folder(tmp_path_factory.mktemp("scans"), rows)


@pytest.mark.integration
def test_eval_images_prints_the_accuracy_of_a_model_folder_on_scanned_digits(
    model_dir: Path, scans: Path, tmp_path: Path
) -> None:
    result = run("eval", "--model-dir", str(model_dir), "--images", str(scans), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"100 images in {scans}" in result.stdout
    printed = accuracy_line(result.stdout)
    model, _ = load_digit_dir(model_dir)
    expected = evaluate_digit_folder(model, load_digit_folder(scans))
    assert printed == pytest.approx(100 * expected.accuracy, abs=0.006)
    assert printed >= 80.0  # the serving preprocessing recovers MNIST format from the scans
    assert "per class / confusion" in result.stdout


def test_wrong_labels_lower_the_accuracy(model_dir: Path, scans: Path, tmp_path: Path) -> None:
    shifted = tmp_path / "shifted"
    rows = []
    with (scans / "labels.csv").open() as fh:
        for name, label in list(csv.reader(fh))[1:]:
            rows.append((name, (scans / name).read_bytes(), str((int(label) + 1) % 10)))
    write_folder(shifted, rows)
    model, _ = load_digit_dir(model_dir)
    assert evaluate_digit_folder(model, load_digit_folder(shifted)).accuracy < 0.2


def test_images_preprocessing_refuses_count_as_errors(model_dir: Path, tmp_path: Path) -> None:
    blank = io.BytesIO()
    Image.fromarray(np.full((40, 40), 230, np.uint8)).save(blank, "PNG")
    folder = write_folder(
        tmp_path / "with-blank", [("blank.png", blank.getvalue(), "3"), ("junk.png", b"xx", "4")]
    )
    result = invoke("eval", "--model-dir", str(model_dir), "--images", str(folder))
    assert result.exit_code == 0, result.output
    assert accuracy_line(result.stdout) == 0.0
    assert "refused by preprocessing (counted as errors): 2" in result.stdout
    assert "no_ink" in result.stdout and "invalid_image" in result.stdout


def test_missing_labels_file_says_what_to_add(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = invoke("eval", "--model-dir", str(model_dir), "--images", str(tmp_path / "empty"))
    assert result.exit_code == 2
    assert "No labels file" in result.stdout and "filename,digit" in result.stdout


def test_ill_formed_labels_are_listed_by_line(model_dir: Path, scans: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes((scans / "d0.png").read_bytes())
    (folder / "labels.csv").write_text(
        "filename,digit\na.png,12\nmissing.png,3\na.png,3,extra\na.png,x\n"
    )
    result = invoke("eval", "--model-dir", str(model_dir), "--images", str(folder))
    assert result.exit_code == 2
    out = " ".join(result.stdout.split())
    assert "4 bad row(s)" in out
    for fragment in ("line 2", "not one digit", "line 3", "does not exist", "line 4", "line 5"):
        assert fragment in out, out


def test_model_dir_without_a_model_is_a_clear_error(scans: Path, tmp_path: Path) -> None:
    result = invoke("eval", "--model-dir", str(tmp_path), "--images", str(scans))
    assert result.exit_code == 2
    assert "holds no digit model" in " ".join(result.stdout.split())


def test_model_dir_alone_evaluates_on_mnist_test(model_dir: Path) -> None:
    result = invoke("eval", "--model-dir", str(model_dir), "--test-size", "1000")
    assert result.exit_code == 0, result.output
    assert "the first 1000 MNIST test images" in result.stdout
    assert accuracy_line(result.stdout) >= 80.0
    as_json = invoke("eval", "--model-dir", str(model_dir), "--test-size", "300", "--json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["images"] == "mnist-test" and report["total"] == 300


def test_test_size_is_refused_with_images_and_below_one(model_dir: Path, scans: Path) -> None:
    with_images = invoke("eval", "--model-dir", str(model_dir), "--images", str(scans),
                         "--test-size", "10")  # fmt: skip
    assert with_images.exit_code == 2
    assert "--test-size" in with_images.output and "--images" in with_images.output
    zero = invoke("eval", "--model-dir", str(model_dir), "--test-size", "0")
    assert zero.exit_code == 2
    assert "--test-size" in zero.output


def test_real_cheque_digits_cut_by_their_boxes_are_evaluated(
    model_dir: Path, tmp_path: Path
) -> None:
    boxes = CHEQUES_DIR / "digits.csv"
    if not boxes.is_file():
        pytest.skip(
            f"real cheque digits not found at {CHEQUES_DIR} (set INKWELL_CHEQUES_DATA_DIR to the "
            "orand-car-a folder with digits.csv to run this test)"
        )
    with boxes.open() as fh:
        rows = list(csv.DictReader(fh))[:200]
    digits = []
    for i, row in enumerate(rows):
        x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
        field = Image.open(CHEQUES_DIR / row["filename"]).convert("L")
        buffer = io.BytesIO()
        field.crop((x, y, x + w, y + h)).save(buffer, "PNG")
        digits.append((f"real{i}.png", buffer.getvalue(), row["digit"]))
    folder = write_folder(tmp_path / "real", digits)
    result = invoke("eval", "--model-dir", str(model_dir), "--images", str(folder))
    assert result.exit_code == 0, result.output
    assert f"200 images in {folder}" in result.stdout
    assert accuracy_line(result.stdout) > 30.0  # far above chance, far below MNIST


def test_folder_report_has_per_class_accuracy_confusion_and_refusals(
    model_dir: Path, scans: Path, tmp_path: Path
) -> None:
    rows = [(f"s{i}.png", (scans / f"d{i}.png").read_bytes(), "7") for i in range(20)]
    folder = write_folder(tmp_path / "sevens", [*rows, ("junk.png", b"not an image", "7")])
    model, _ = load_digit_dir(model_dir)
    outcome = evaluate_digit_folder(model, load_digit_folder(folder))
    report = json.loads(json.dumps(outcome.to_dict()))  # JSON-ready as it is
    predicted = report["confusion"][7]  # row: the true digit, columns: what was read
    assert report["total"] == 21 and report["correct"] == predicted[7]
    assert report["per_class"]["7"] == pytest.approx(predicted[7] / 20)
    assert report["per_class"]["3"] is None  # no 3 in the folder: no accuracy, not 0 %
    assert report["refused"] == [{"filename": "junk.png", "digit": 7, "code": "invalid_image"}]
    wrong = sorted(
        ((7, p, n) for p, n in enumerate(predicted) if p != 7 and n), key=lambda c: -c[2]
    )
    assert [(c["digit"], c["predicted"], c["count"]) for c in report["most_confused"]][:1] == (
        wrong[:1]
    )


def test_eval_images_json_prints_one_report_object(
    model_dir: Path, scans: Path, tmp_path: Path
) -> None:
    args = ("eval", "--model-dir", str(model_dir), "--images", str(scans), "--json")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing but the JSON object on stdout
    model, _ = load_digit_dir(model_dir)
    expected = evaluate_digit_folder(model, load_digit_folder(scans)).to_dict()
    assert report == {"model": str(model_dir), "images": str(scans), **expected}
    assert report["total"] == 100 and len(report["confusion"]) == 10


def test_eval_images_json_with_a_missing_labels_file_is_still_a_clear_error(
    model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    args = ("eval", "--model-dir", str(model_dir), "--images", str(tmp_path / "empty"), "--json")
    result = invoke(*args)
    assert result.exit_code == 2
    assert "No labels file" in result.output
