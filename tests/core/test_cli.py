"""End to end through the CLI: train (dry run) registers stable; eval prints the accuracy line.

The commands run in this process (`tests.cli.invoke`) but `inkwell train`, which also runs
once through the real entry point (`tests.cli.run`; `inkwell eval` does in test_eval_images).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from inkwell.registry import Registry
from tests.cli import invoke, run


@pytest.mark.integration
def test_train_dry_run_registers_stable_and_eval_prints_accuracy(
    inkwell_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = run("train", "--dry-run", "--width", "4", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "registered inkwell-digits v1 (stable)" in trained.stdout
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)  # the registry is found through INKWELL_HOME, not the directory
    evaluated = invoke("eval", "--model", "stable")
    assert evaluated.exit_code == 0, evaluated.output
    assert re.search(r"^accuracy \d{1,3}\.\d\d %$", evaluated.stdout, re.MULTILINE)
    # the run used the base recipe: 4 epochs, Adam at its peak lr, one stem convolution
    registry = Registry()
    (base_run,) = registry.client.search_runs([registry.experiment_id()])
    params = base_run.data.params
    assert (params["train.lr"], params["train.epochs"], params["model.stem_convs"]) == (
        "0.006",
        "4",
        "1",
    )


def test_eval_without_models_fails_with_clear_message(inkwell_home: Path) -> None:
    result = invoke("eval")
    assert result.exit_code == 2
    assert "inkwell train" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(("train", "--optimizer", "lbfgs", "--dry-run"), "sgdm", id="optimizer"),
        pytest.param(("train", "--augment", "mixup", "--dry-run"), "handwriting", id="augment"),
        pytest.param(
            ("bench", "continual", "--stream", "customers", "--base-augment", "mixup"),
            "handwriting",
            id="bench-continual-augment",
        ),
        pytest.param(
            ("bench", "continual", "--stream", "customers", "--style-ceiling", "-5"),
            "--style-ceiling",
            id="negative-style-ceiling",
        ),
        pytest.param(("bench", "optimizers", "--only", "lbfgs"), "rmsprop", id="bench-optimizer"),
        pytest.param(("bench", "optimizers", "--test-size", "0"), "--test-size", id="test-size"),
    ],
)
def test_a_bad_option_is_a_usage_error_that_names_it_or_the_choices(
    inkwell_home: Path, args: tuple[str, ...], says: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert says in result.output


def test_bench_optimizers_runs_all_five_optimizers_and_saves_plot(
    inkwell_home: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "plot.png"
    result = invoke(
        "bench", "optimizers", "--epochs", "1", "--train-size", "256", "--test-size", "500",
        "--eval-every", "2", "--plot", str(plot),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = set(re.findall(r"^│ (\w+) +│", result.stdout, re.MULTILINE))  # first column
    for name in ("sgd", "sgdm", "adagrad", "rmsprop", "adam"):
        assert name in rows, result.stdout
    assert "evaluated on 500 test images" in result.stdout
    assert plot.stat().st_size > 10_000


def test_train_out_saves_the_model_folder_that_eval_model_dir_reads(
    inkwell_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    trained = invoke("train", "--dry-run", "--width", "4", "--no-register", "--out", str(folder))
    assert trained.exit_code == 0, trained.output
    assert f"saved to {folder}" in trained.output
    meta = json.loads((folder / "model.json").read_text())
    assert meta["kind"] == "digits" and meta["config"]["width"] == 4
    assert (folder / "weights.pt").stat().st_size > 0
    assert Registry().list_versions("inkwell-digits") == []  # --no-register kept it out
    evaluated = invoke("eval", "--model-dir", str(folder))
    assert evaluated.exit_code == 0, evaluated.output
    assert f"accuracy {100 * meta['test_accuracy']:.2f} %" in evaluated.output


def test_eval_of_a_folder_without_a_model_says_how_to_make_one(
    inkwell_home: Path, tmp_path: Path
) -> None:
    result = invoke("eval", "--model-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "holds no digit model" in result.output and "inkwell train --out" in result.output
