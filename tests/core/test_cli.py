"""End to end through the CLI: train (dry run) registers stable; eval prints the accuracy line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _inkwell(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", "from inkwell_app.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
def test_train_dry_run_registers_stable_and_eval_prints_accuracy(
    inkwell_home: Path, tmp_path: Path
) -> None:
    trained = _inkwell("train", "--dry-run", "--width", "4", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "registered inkwell-digits v1 (stable)" in trained.stdout
    other = tmp_path / "other"
    other.mkdir()
    evaluated = _inkwell("eval", "--model", "stable", cwd=other)
    assert evaluated.returncode == 0, evaluated.stderr
    assert re.search(r"^accuracy \d{1,3}\.\d\d %$", evaluated.stdout, re.MULTILINE)
    # the run used the base recipe: 4 epochs, Adam at its peak lr, one stem convolution
    from inkwell.registry import Registry

    registry = Registry()
    (run,) = registry.client.search_runs([registry.experiment_id()])
    params = run.data.params
    assert (params["train.lr"], params["train.epochs"], params["model.stem_convs"]) == (
        "0.006",
        "4",
        "1",
    )


@pytest.mark.integration
def test_eval_without_models_fails_with_clear_message(inkwell_home: Path, tmp_path: Path) -> None:
    result = _inkwell("eval", cwd=tmp_path)
    assert result.returncode == 2
    assert "inkwell train" in result.stdout


@pytest.mark.integration
def test_unknown_optimizer_is_a_usage_error(inkwell_home: Path, tmp_path: Path) -> None:
    result = _inkwell("train", "--optimizer", "lbfgs", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert "sgdm" in result.stdout + result.stderr


@pytest.mark.integration
def test_unknown_augmentation_is_a_usage_error(inkwell_home: Path, tmp_path: Path) -> None:
    result = _inkwell("train", "--augment", "mixup", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert "handwriting" in result.stdout + result.stderr
    bench = _inkwell(
        "bench", "continual", "--stream", "customers", "--base-augment", "mixup", cwd=tmp_path
    )
    assert bench.returncode == 2
    assert "handwriting" in bench.stdout + bench.stderr


@pytest.mark.integration
def test_negative_style_ceiling_is_a_usage_error(inkwell_home: Path, tmp_path: Path) -> None:
    result = _inkwell(
        "bench", "continual", "--stream", "customers", "--style-ceiling", "-5", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--style-ceiling" in result.stdout + result.stderr


@pytest.mark.integration
def test_bench_optimizers_runs_all_five_optimizers_and_saves_plot(
    inkwell_home: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "plot.png"
    result = _inkwell(
        "bench",
        "optimizers",
        "--epochs",
        "1",
        "--train-size",
        "256",
        "--eval-every",
        "2",
        "--plot",
        str(plot),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = set(re.findall(r"^│ (\w+) +│", result.stdout, re.MULTILINE))  # first column
    for name in ("sgd", "sgdm", "adagrad", "rmsprop", "adam"):
        assert name in rows, result.stdout
    assert plot.stat().st_size > 10_000


@pytest.mark.integration
def test_bench_optimizers_refuses_an_unknown_optimizer(inkwell_home: Path, tmp_path: Path) -> None:
    result = _inkwell("bench", "optimizers", "--only", "lbfgs", cwd=tmp_path)
    assert result.returncode == 2
    assert "rmsprop" in result.stdout + result.stderr


@pytest.mark.integration
def test_train_out_saves_the_model_folder_that_eval_model_dir_reads(
    inkwell_home: Path, tmp_path: Path
) -> None:
    import json

    folder = tmp_path / "model"
    trained = _inkwell(
        "train", "--dry-run", "--width", "4", "--no-register", "--out", str(folder), cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    assert f"saved to {folder}" in trained.stdout
    meta = json.loads((folder / "model.json").read_text())
    assert meta["kind"] == "digits" and meta["config"]["width"] == 4
    assert (folder / "weights.pt").stat().st_size > 0
    from inkwell.registry import Registry

    assert Registry().list_versions("inkwell-digits") == []  # --no-register kept it out
    evaluated = _inkwell("eval", "--model-dir", str(folder), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"accuracy {100 * meta['test_accuracy']:.2f} %" in evaluated.stdout


@pytest.mark.integration
def test_eval_of_a_folder_without_a_model_says_how_to_make_one(
    inkwell_home: Path, tmp_path: Path
) -> None:
    result = _inkwell("eval", "--model-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "holds no digit model" in result.stdout and "inkwell train --out" in result.stdout
