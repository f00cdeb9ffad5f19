"""`inkwell bench continual --stream cheques`: the split, its digit folder, and the real stream.

The end-to-end test runs the command on real cheque fields (ORAND-CAR-A, read from
INKWELL_CHEQUES_DATA_DIR or ../shared/data/orand-car-a; skipped when absent) with one tiny batch
and a cheque job of two steps, then reads its model folders back with the evaluation commands.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cheque_stream import (
    http_uploader,
    run_cheque_stream,
    split_stream,
    write_digit_folder,
)
from inkwell.cheques.dataset import LabelledImage
from inkwell.cheques.finetune import split_rows
from trainer.settings import TrainerSettings

REPO = Path(__file__).resolve().parents[2]
CHEQUES_DIR = Path(
    os.environ.get("INKWELL_CHEQUES_DATA_DIR", REPO.parent / "shared" / "data" / "orand-car-a")
)


def rows(n: int) -> list[LabelledImage]:
    return [LabelledImage(Path(f"fields/f{i}.jpg"), str(1000 + i)) for i in range(n)]


def test_stream_split_is_seeded_disjoint_and_sized() -> None:
    fields = rows(50)

    split = split_stream(fields, held_out=20, batches=3, batch_size=10, seed=4)
    again = split_stream(fields, held_out=20, batches=3, batch_size=10, seed=4)
    other = split_stream(fields, held_out=20, batches=3, batch_size=10, seed=5)

    assert len(split.held_out) == 20
    assert [len(b) for b in split.batches] == [10, 10, 10]
    names = [f.path for f in split.held_out] + [f.path for b in split.batches for f in b]
    assert len(set(names)) == 50  # nothing both held out and uploaded, nothing twice
    assert split == again
    assert split.held_out != other.held_out


def test_stream_held_out_fields_are_those_of_cheques_split() -> None:
    fields = rows(60)

    split = split_stream(fields, held_out=15, batches=4, batch_size=10, seed=3)

    assert split.held_out == split_rows(fields, 15, 3)[1]


def test_stream_split_that_does_not_fit_says_which_options_to_lower() -> None:
    with pytest.raises(ValueError, match="--held-out, --batches or --batch-size"):
        split_stream(rows(30), held_out=20, batches=2, batch_size=10, seed=0)


def test_digit_folder_holds_one_labelled_crop_per_box(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "fields").mkdir(parents=True)
    page = np.full((40, 60), 255, np.uint8)
    page[10:30, 8:14] = 0  # a "1"
    page[10:30, 30:50] = 0  # a "0"
    Image.fromarray(page).save(data / "fields" / "a.png")
    (data / "digits.csv").write_text(
        "filename,x,y,width,height,digit\nfields/a.png,30,8,22,24,0\nfields/a.png,6,8,10,24,1\n"
    )

    count = write_digit_folder(
        [LabelledImage(data / "fields" / "a.png", "10")], data, tmp_path / "d"
    )

    with (tmp_path / "d" / "labels.csv").open() as fh:
        listed = list(csv.reader(fh))
    assert count == 2
    assert listed == [["filename", "digit"], ["a_0.png", "1"], ["a_1.png", "0"]]  # left to right
    assert Image.open(tmp_path / "d" / "a_0.png").size == (14, 28)  # box plus the crop margin


def test_stream_without_the_data_folder_skips_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_cheque_stream(
        data=tmp_path / "absent", out=tmp_path / "out", batches=1, batch_size=1, held_out=1, seed=0
    )

    assert report is None
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def inkwell(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from inkwell_app.cli import main; main()", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_cheque_stream_uploads_retrains_promotes_and_leaves_loadable_models(
    tmp_path: Path, mnist_dir: Path
) -> None:
    if not (CHEQUES_DIR / "labels.csv").is_file():
        pytest.skip(
            f"real cheque fields not found at {CHEQUES_DIR} (set INKWELL_CHEQUES_DATA_DIR to the "
            "orand-car-a folder to run this test)"
        )
    out = tmp_path / "out"
    env = {
        "INKWELL_DATA_DIR": str(mnist_dir),
        "INKWELL_TRAINER_CHEQUE_STEPS": "2",
        "INKWELL_TRAINER_CHEQUE_SYNTHETIC_TEST_FIELDS": "20",
        "INKWELL_TRAINER_CHEQUE_MIN_HOLDOUT": "1",
        "INKWELL_TRAINER_EPOCHS": "1",
        "INKWELL_TRAINER_MIN_STEPS": "1",
        "INKWELL_TRAINER_HPO_TRIALS": "0",
    }
    bench = inkwell(
        *("bench", "continual", "--stream", "cheques", "--data", str(CHEQUES_DIR)),
        *("--out", str(out), "--batches", "1", "--batch-size", "6", "--held-out", "10"),
        env=env,
    )
    assert bench.returncode == 0, bench.stdout + bench.stderr

    report = json.loads((out / "report.json").read_text())
    assert report["held_out_fields"] == 10
    assert [row["batch"] for row in report["rows"]] == [0, 1]
    zero, first = report["rows"]
    assert first["fields_uploaded"] == 6
    assert first["cheque_job"]["train_fields"] + first["cheque_job"]["holdout_fields"] == 6
    assert first["cheque_job"]["status"] in ("passed", "rejected")
    assert first["upload_to_canary_seconds"] > 0
    for row in (zero, first):
        for key in ("exact", "cer", "exact_review_5pct", "exact_review_10pct", "ece"):
            assert 0.0 <= row[key] <= 1.0 or key == "cer"
        assert row["mnist"] > 0.95  # the shipped digit model, or a gated retrain of it
        assert 0.0 < row["synthetic_exact"] <= 1.0
        assert 0.0 < row["real_digits"] <= 1.0
    if first["cheque_job"]["status"] == "passed":  # promoted: the stable reader is the new one
        assert first["cheque_version"] == first["cheque_job"]["version"]

    cheques = inkwell(
        *("cheques", "eval", str(CHEQUES_DIR), "--labels", str(out / "held-out.csv")),
        *("--model-dir", str(out / "cheques-model"), "--layout", "field"),
        *("--json", str(tmp_path / "cheques.json")),
        env=env,
    )
    assert cheques.returncode == 0, cheques.stdout + cheques.stderr
    cheque_eval = json.loads((tmp_path / "cheques.json").read_text())
    assert cheque_eval["eval_string_accuracy"] == pytest.approx(first["exact"])
    digits = inkwell(
        *("eval", "--model-dir", str(out / "digits-model")),
        *("--images", str(out / "held-out-digits"), "--json"),
        env=env,
    )
    assert digits.returncode == 0, digits.stdout + digits.stderr
    assert json.loads(digits.stdout)["accuracy"] == pytest.approx(first["real_digits"])


def test_uploader_stores_a_field_and_returns_the_code_of_a_refused_one(tmp_path: Path) -> None:
    inked = np.full((40, 90), 255, np.uint8)
    inked[8:32, 10:14] = 0  # a "1"
    inked[8:32, 30:50] = 0
    inked[12:28, 34:46] = 255  # a "0"
    for name, pixels in (("inked", inked), ("blank", np.full((40, 90), 250, np.uint8))):
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    upload, close = http_uploader(TrainerSettings(home=tmp_path / "home"))
    try:
        stored = upload(LabelledImage(tmp_path / "inked.png", "10"), "key-inked")
        refused = upload(LabelledImage(tmp_path / "blank.png", "10"), "key-blank")
    finally:
        close()

    assert stored is None
    assert refused == "no_ink"
