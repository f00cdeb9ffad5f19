"""`inkwell cheques ...` end to end: synth writes data sets, eval/read print what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from inkwell.cheques.cli import register
from inkwell.errors import ModelNotFoundError
from tests.cheques.helpers import always_five, field_image

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    register(cli)
    return cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("always-five")
    always_five().save(folder)
    return folder


def invoke(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_synth_writes_test_fields_from_mnist_test_digits(
    app: typer.Typer, tmp_path: Path, mnist_dir: Path
) -> None:
    code, out = invoke(
        app, "cheques", "synth", "--n", "3", "--split", "test", "--seed", "1",
        "--out", str(tmp_path), "--data", str(mnist_dir),
    )  # fmt: skip
    assert code == 0, out
    assert "wrote 3 field images" in out and "MNIST test images" in out
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    assert rows[0] == "filename,digit_string" and len(rows) == 4


def test_synth_writes_whole_cheques_with_boxes(
    app: typer.Typer, tmp_path: Path, mnist_dir: Path
) -> None:
    code, out = invoke(
        app, "cheques", "synth", "--kind", "cheque", "--n", "1", "--out", str(tmp_path),
        "--data", str(mnist_dir),
    )  # fmt: skip
    assert code == 0, out
    assert (tmp_path / "boxes.csv").is_file()


def test_synth_refuses_an_unknown_split(app: typer.Typer, tmp_path: Path) -> None:
    code, out = invoke(app, "cheques", "synth", "--split", "holdout", "--out", str(tmp_path))
    assert code != 0
    assert "choose one of train, val, test" in out


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fields"
    folder.mkdir()
    Image.fromarray(field_image()).save(folder / "a.png")
    Image.fromarray(field_image()).save(folder / "b.png")
    Image.fromarray(np.full((50, 200), 240, np.uint8)).save(folder / "blank.png")
    (folder / "labels.csv").write_text("filename,digit_string\na.png,5\nb.png,57\nblank.png,\n")
    return folder


def test_eval_prints_and_writes_the_metrics(
    app: typer.Typer, tmp_path: Path, model_dir: Path
) -> None:
    folder = _folder(tmp_path)
    report = tmp_path / "report.json"
    code, out = invoke(
        app, "cheques", "eval", str(folder), "--model-dir", str(model_dir), "--json", str(report),
    )  # fmt: skip
    assert code == 0, out
    assert "string accuracy" in out and "66.67 %" in out
    data = json.loads(report.read_text())
    assert data["eval_string_accuracy"] == pytest.approx(2 / 3)  # "5" ✓, "57" ✗, blank ✓
    assert data["eval_cer"] == pytest.approx(1 / 3)  # one digit missing of three
    assert data["refused"] == {"no_ink": 1}


def test_read_prints_json_lines(app: typer.Typer, tmp_path: Path, model_dir: Path) -> None:
    image = tmp_path / "amount.png"
    Image.fromarray(field_image()).save(image)
    code, out = invoke(app, "cheques", "read", str(image), "--model-dir", str(model_dir), "--json")
    assert code == 0, out
    reading = json.loads(out.strip().splitlines()[-1])
    assert reading["amount"] == "5"
    assert reading["file"] == str(image)


def test_read_of_a_blank_image_fails_with_the_reason(
    app: typer.Typer, tmp_path: Path, model_dir: Path
) -> None:
    image = tmp_path / "blank.png"
    Image.fromarray(np.full((50, 200), 240, np.uint8)).save(image)
    code, out = invoke(app, "cheques", "read", str(image), "--model-dir", str(model_dir))
    assert code == 2
    assert "no_ink" in out


@pytest.mark.slow
def test_tiny_training_registers_stable_and_eval_reads_it(
    app: typer.Typer, inkwell_home: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    code, out = invoke(
        app, "cheques", "train", "--preset", "tiny", "--steps", "4", "--val-size", "16",
        "--data", str(mnist_dir), "--out", str(tmp_path / "model"),
    )  # fmt: skip
    assert code == 0, out
    assert "registered inkwell-cheques v1 (stable)" in out
    assert (tmp_path / "model" / "weights.pt").is_file()
    code, out = invoke(app, "cheques", "eval", str(_folder(tmp_path)), "--model", "stable")
    assert code == 0, out
    assert "model inkwell-cheques v1" in out


@pytest.mark.slow
def test_training_continues_from_a_saved_model(
    app: typer.Typer, tmp_path: Path, mnist_dir: Path
) -> None:
    common = ("--preset", "tiny", "--val-size", "16", "--no-register", "--data", str(mnist_dir))
    first, second = tmp_path / "first", tmp_path / "second"
    code, out = invoke(app, "cheques", "train", "--steps", "3", "--out", str(first), *common)
    assert code == 0, out
    # a vanishing learning rate: the continued model must still be the first one's weights
    code, out = invoke(
        app, "cheques", "train", "--steps", "2", "--lr", "1e-12", "--init", str(first),
        "--seed", "1", "--out", str(second), *common,
    )  # fmt: skip
    assert code == 0, out
    before = torch.load(first / "weights.pt", weights_only=True)
    after = torch.load(second / "weights.pt", weights_only=True)
    assert before.keys() == after.keys()
    for key, value in before.items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, after[key], atol=1e-6), key
    assert json.loads((second / "model.json").read_text())["init_from"] == str(first)


def test_continuing_from_a_folder_without_a_model_says_what_is_missing(
    app: typer.Typer, tmp_path: Path
) -> None:
    # `inkwell`'s entry point prints an InkwellError as one line (code and message), exit 2
    result = runner.invoke(app, ["cheques", "train", "--init", str(tmp_path), "--no-register"])
    assert isinstance(result.exception, ModelNotFoundError)
    assert "holds no cheque model" in result.exception.message


def _labelled_folder(folder: Path, n: int) -> Path:
    folder.mkdir()
    rows = ["filename,digit_string"]
    for i in range(n):
        image = np.full((40, 120), 230, np.uint8)
        image[10:30, 10 + i : 100] = 30
        Image.fromarray(image).save(folder / f"f{i}.png")
        rows.append(f"f{i}.png,{i + 10}.000")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_split_writes_fixed_train_and_test_label_files(app: typer.Typer, tmp_path: Path) -> None:
    folder = _labelled_folder(tmp_path / "fields", 10)
    out = tmp_path / "split"
    code, text = invoke(app, "cheques", "split", str(folder), "--out", str(out), "--test", "3")
    assert code == 0, text
    test_rows = [line.split(",") for line in (out / "test.csv").read_text().split()[1:]]
    train_rows = [line.split(",") for line in (out / "train.csv").read_text().split()[1:]]
    assert len(test_rows) == 3 and len(train_rows) == 7
    assert all(label.endswith("000") and "." not in label for _, label in test_rows)
    assert all(Path(name).is_absolute() and Path(name).is_file() for name, _ in test_rows)


def test_finetune_saves_a_reader_calibrated_on_reviewed_fields(
    app: typer.Typer, model_dir: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    folder = _labelled_folder(tmp_path / "fields", 12)
    out = tmp_path / "tuned"
    code, text = invoke(
        app, "cheques", "finetune", str(folder), "--init", str(model_dir), "--out", str(out),
        "--steps", "2", "--batch-size", "4", "--threads", "1", "--data", str(mnist_dir),
    )  # fmt: skip
    assert code == 0, text
    meta = json.loads((out / "model.json").read_text())
    assert meta["finetune"]["real_fields"] + meta["finetune"]["calibration_fields"] == 12
    assert "2 for calibration" in text


def test_unknown_synth_style_is_a_usage_error(app: typer.Typer, tmp_path: Path) -> None:
    code, text = invoke(app, "cheques", "synth", "--out", str(tmp_path), "--synth", "fancy")
    assert code == 2
    assert "classic" in text and "real" in text
