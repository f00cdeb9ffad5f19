"""The continual cheque stream: a bank's reviewed fields arrive in batches (issue 17 item 7).

A fixed, seeded split of a labelled folder of real amount fields (ORAND-CAR-A) gives a held-out
test that is never uploaded and a stream of reviewed batches. Each batch is uploaded through
the service's real `POST /v1/cheques/samples` route (in-process app, real store); the real
trainer worker cuts their digits into digit samples, retrains and gates the cheque reader (and
the digit model), and the benchmark promotes each passed canary to stable the way the rollout
controller does after a healthy canary. A zero-shot row (the shipped models) comes first; after
each batch the stable models are measured on the held-out fields, their real digits (the
`digits.csv` boxes), the gate's synthetic MNIST-test amounts and MNIST test.

The trainer's settings come from the environment (`INKWELL_TRAINER_*`) except the triggers,
which follow the batch size; `INKWELL_TRAINER_CHEQUE_STEPS` sets each cheque job's budget.
"""

from __future__ import annotations

import csv
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from inkwell.cheques.calibrate import expected_calibration_error
from inkwell.cheques.dataset import LabelledImage, read_labels
from inkwell.cheques.digits import BOXES_FILE, crop_box, read_digit_boxes
from inkwell.cheques.metrics import evaluate_readings
from inkwell.cheques.reader import ChequeReader, to_gray
from inkwell.cheques.train import validation_metrics
from inkwell.console import console
from inkwell.data import load_split
from inkwell.digit_images import evaluate_digit_folder, load_digit_folder
from inkwell.errors import InvalidInputError
from inkwell.registry import Registry, save_digit_model
from inkwell.settings import CANARY, STABLE
from inkwell.shipped import seed_registry
from inkwell.train import split_tensors
from inkwell.training import evaluate
from trainer.cheque_digits import ChequeDigitCutter
from trainer.cheque_job import ChequeJobOutcome, ChequeRetrainer
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

REVIEW_RATES = (0.0, 0.05, 0.10)
USER = "branch-reviewers"


@dataclass(frozen=True)
class StreamSplit:
    """The held-out test fields and the reviewed batches, disjoint, in upload order."""

    held_out: list[LabelledImage]
    batches: list[list[LabelledImage]]


def split_stream(
    rows: Sequence[LabelledImage], *, held_out: int, batches: int, batch_size: int, seed: int
) -> StreamSplit:
    """A seeded permutation: its first `held_out` fields are the test, the batches follow.

    The held-out fields (kept in file order) are those of `inkwell cheques split --test
    held_out --seed seed`, so the stream's numbers compare with the fine-tuning runs on them.
    """
    needed = held_out + batches * batch_size
    if needed > len(rows):
        raise ValueError(
            f"{len(rows)} fields cannot give {held_out} held-out plus {batches} x {batch_size} "
            "reviewed: lower --held-out, --batches or --batch-size"
        )
    order = np.random.default_rng(seed).permutation(len(rows))
    test = [rows[i] for i in sorted(order[:held_out].tolist())]
    stream = [
        [rows[i] for i in order[held_out + b * batch_size : held_out + (b + 1) * batch_size]]
        for b in range(batches)
    ]
    return StreamSplit(test, stream)


def write_digit_folder(fields: Sequence[LabelledImage], data: Path, out: Path) -> int:
    """Cut the `digits.csv` boxes of `fields` into `out` (PNGs + labels.csv); returns the count."""
    boxes = read_digit_boxes(data / BOXES_FILE)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int]] = []
    for field in fields:
        gray = to_gray(field.path.read_bytes())
        for k, (box, digit) in enumerate(boxes.get(field.path.relative_to(data).as_posix(), [])):
            name = f"{field.path.stem}_{k}.png"
            Image.fromarray(crop_box(gray, box)).save(out / name)
            rows.append((name, digit))
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "digit"])
        writer.writerows(rows)
    return len(rows)


def reader_metrics(reader: ChequeReader, fields: Sequence[LabelledImage]) -> dict[str, Any]:
    """Exact amounts, CER, accuracy with 5/10 % to review and ECE of `reader` on `fields`."""
    truths, predictions, confidences, flags = [], [], [], []
    for field in fields:
        try:
            reading = reader.read(field.path.read_bytes(), layout="field")
            prediction, confidence, flag = reading.amount, reading.confidence, reading.needs_review
        except InvalidInputError:  # refused: the empty reading, first to review (as eval does)
            prediction, confidence, flag = "", 0.0, True
        truths.append(field.label)
        predictions.append(prediction)
        confidences.append(confidence)
        flags.append(flag)
    names = [f.path.name for f in fields]
    report = evaluate_readings(
        names, truths, predictions, confidences, flags, review_rates=REVIEW_RATES
    )
    correct = np.array([t == p for t, p in zip(truths, predictions, strict=True)], np.float64)
    return {
        "exact": report.string_accuracy,
        "cer": report.cer,
        "exact_review_5pct": report.accuracy_at_review[0.05],
        "exact_review_10pct": report.accuracy_at_review[0.10],
        "flagged_rate": report.flagged_rate,
        "accepted_exact": report.accepted_accuracy,
        "ece": expected_calibration_error(np.array(confidences, np.float64), correct),
    }


Uploader = Callable[[LabelledImage, str], str | None]


def http_uploader(settings: TrainerSettings) -> tuple[Uploader, Callable[[], None]]:
    """Upload reviewed fields through the service's real route (app in-process, real store)."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import ServiceSettings

    api_key = secrets.token_urlsafe(24)  # the service refuses short or placeholder keys
    service = ServiceSettings(
        home=settings.home, api_keys=[SecretStr(api_key)], upload_rate_per_s=0
    )
    client = TestClient(create_app(service))
    client.__enter__()

    def upload(field: LabelledImage, key: str) -> str | None:
        """None when stored; the error code when the service refuses the field (a 4xx)."""
        response = client.post(
            "/v1/cheques/samples",
            files={"image": (field.path.name, field.path.read_bytes(), "image/jpeg")},
            data={
                "amount": field.label,
                "user_id": USER,
                "idempotency_key": key,
                "layout": "field",
            },
            headers={"X-API-Key": api_key},
        )
        if 400 <= response.status_code < 500:  # e.g. a faint scan: a client would get this too
            return str(response.json().get("code", response.status_code))
        if response.status_code not in (200, 201):
            raise RuntimeError(f"upload of {field.path.name} failed: {response.text}")
        return None

    return upload, lambda: client.__exit__(None, None, None)


class ChequeStream:
    """One run of the stream: a home with the shipped models, a worker, the measurements."""

    def __init__(self, data: Path, out: Path, split: StreamSplit, home: Path) -> None:
        self.data, self.out, self.split = data, out, split
        batch_size = max(len(b) for b in split.batches)
        self.settings = TrainerSettings(
            home=home,
            # the worker is paused while a batch uploads, so "any pending" is "the whole batch",
            # however many of its fields the service refused
            cheque_min_new_fields=1,
            min_new_samples=batch_size,
            new_user_min_samples=batch_size,
            # the digits cut at the first poll wait this long: the cheque job goes first
            debounce_seconds=10.0,
            poll_seconds=0.5,
        )
        self.registry = Registry(self.settings)
        seed_registry(self.settings, registry=self.registry)
        self.retrainer = Retrainer(self.settings)
        store, registry = self.retrainer.store, self.retrainer.registry
        self.cheques = ChequeRetrainer(self.settings, store=store, registry=registry)
        cutter = ChequeDigitCutter(self.settings, store=store, registry=registry)
        self.worker = Worker(self.retrainer, self.settings, cheques=self.cheques, digits=cutter)
        self.mnist = split_tensors(load_split("test", settings=self.settings))
        self.digits = load_digit_folder(out / "held-out-digits")

    def measure(self) -> dict[str, Any]:
        """The stable cheque reader and digit model on every test set; saves both to `out`."""
        reader = ChequeReader.load(STABLE, registry=self.registry)
        digit = self.registry.load_digit_model(STABLE)
        row = reader_metrics(reader, self.split.held_out)
        synthetic = validation_metrics(reader.model, self.cheques.synthetic_test())
        row["synthetic_exact"] = synthetic["val_string_accuracy"]
        row["real_digits"] = evaluate_digit_folder(digit.model, self.digits).accuracy
        row["mnist"] = evaluate(digit.model, *self.mnist).accuracy
        row["cheque_version"], row["digit_version"] = reader.version, digit.info.version
        shutil.rmtree(self.out / "cheques-model", ignore_errors=True)
        reader.save(self.out / "cheques-model")
        save_digit_model(
            digit.model,
            self.out / "digits-model",
            meta={**digit.meta, "name": digit.info.name, "version": digit.info.version},
        )
        return row

    def promote(self, name: str, version: str | None) -> None:
        """What the rollout controller does after a healthy canary: canary becomes stable."""
        if version is None or self.registry.find_version(name, CANARY) is None:
            return
        self.registry.set_alias(name, STABLE, version)
        self.registry.delete_alias(name, CANARY)

    def wait(self, last_id: int, digit_job_before: int, timeout: float) -> tuple[Any, Any, float]:
        """Block until this batch's cheque job and the digit job its cut digits start are done."""
        started = time.perf_counter()
        cheque: ChequeJobOutcome | None = None
        seconds = float("nan")
        while time.perf_counter() - started < timeout:
            outcome = self.worker.last_cheque_outcome
            if cheque is None and outcome is not None and outcome.plan.watermark >= last_id:
                cheque, seconds = outcome, time.perf_counter() - started
            job = self.retrainer.state.last_job()
            digit_done = (
                job is not None and job.id > digit_job_before and job.status in ("done", "failed")
            )
            idle = self.retrainer.state.active_job() is None and not self.retrainer.state.pending()
            cut = self.worker.digits is not None and self.worker.digits.watermark >= last_id
            if cheque is not None and cut and (digit_done or idle):
                return cheque, job if digit_done else None, seconds
            time.sleep(0.25)
        raise TimeoutError(f"batch not retrained within {timeout:.0f} s: {self.worker.status()}")


def run_cheque_stream(
    *,
    data: Path,
    out: Path,
    batches: int,
    batch_size: int,
    held_out: int,
    seed: int,
    timeout_s: float = 1800,
) -> dict[str, Any] | None:
    """Run the stream; prints a table as it goes and writes `out/report.json`."""
    if not (data / "labels.csv").is_file():
        console.print(
            f"[yellow]skipped: no labelled cheque fields at {data} (labels.csv missing); point "
            "--data at the orand-car-a folder[/yellow]"
        )
        return None
    split = split_stream(
        read_labels(data), held_out=held_out, batches=batches, batch_size=batch_size, seed=seed
    )
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "held-out-digits", ignore_errors=True)
    digits = write_digit_folder(split.held_out, data, out / "held-out-digits")
    with (out / "held-out.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "digit_string"])
        writer.writerows((f.path.relative_to(data).as_posix(), f.label) for f in split.held_out)
    home = Path(tempfile.mkdtemp(prefix="inkwell-bench-cheques-"))
    report: dict[str, Any] = {
        "data": str(data),
        "seed": seed,
        "held_out_fields": len(split.held_out),
        "held_out_digits": digits,
        "batches": batches,
        "batch_size": batch_size,
        "upload_path": "POST /v1/cheques/samples (service app in-process)",
        "rows": [],
    }
    try:
        stream = ChequeStream(data, out, split, home)
        report["settings"] = {
            "cheque_steps": stream.settings.cheque_steps,
            "cheque_distill_weight": stream.settings.cheque_distill_weight,
            "cheque_holdout_fraction": stream.settings.cheque_holdout_fraction,
            "cheque_synthetic_test_fields": stream.settings.cheque_synthetic_test_fields,
        }
        started = time.perf_counter()
        zero = {"batch": 0, "fields_uploaded": 0, **stream.measure()}
        zero["measure_seconds"] = time.perf_counter() - started
        _record(report, zero, out)
        upload, close = http_uploader(stream.settings)
        try:
            for b, batch in enumerate(split.batches, start=1):
                _record(report, _run_batch(stream, upload, b, batch, timeout_s), out)
        finally:
            stream.worker.stop(timeout=600)
            close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    Console(width=180).print(table(report["rows"]))
    return report


def _run_batch(
    stream: ChequeStream, upload: Uploader, b: int, batch: list[LabelledImage], timeout_s: float
) -> dict[str, Any]:
    """Upload one reviewed batch, wait for the real jobs, promote what passed, measure."""
    last = stream.retrainer.state.last_job()
    digit_before = last.id if last else 0
    refused: dict[str, str] = {}
    for k, field in enumerate(batch):
        code = upload(field, f"bench-{b}-{k}-{field.path.stem}")
        if code is not None:
            refused[field.path.name] = code
    last_id = max(stream.cheques.pending_ids(), default=stream.cheques.watermark)
    stream.worker.start()
    cheque, digit_job, to_canary = stream.wait(last_id, digit_before, timeout_s)
    stream.worker.stop(timeout=600)  # idle now; paused until the next batch is uploaded
    settings = stream.settings
    stream.promote(
        settings.cheque_model_name, cheque.version if cheque.status == "passed" else None
    )
    digit_passed = digit_job is not None and digit_job.outcome == "passed"
    stream.promote(settings.model_name, digit_job.version if digit_passed else None)
    started = time.perf_counter()
    row = {
        "batch": b,
        "fields_uploaded": sum(len(x) for x in stream.split.batches[:b]),
        "refused": refused,
        "cheque_job": {
            "version": cheque.version,
            "status": cheque.status,
            "reasons": cheque.gate.reasons,
            "gate": cheque.gate.metrics,
            "train_fields": len(cheque.plan.train_ids),
            "holdout_fields": len(cheque.plan.holdout_ids),
            "seconds": cheque.seconds,
        },
        "upload_to_canary_seconds": to_canary,
        "digit_job": None
        if digit_job is None
        else {
            "version": digit_job.version,
            "status": digit_job.outcome or digit_job.status,
            "reasons": json.loads(digit_job.plan).get("reasons", []) if digit_job.plan else [],
            "error": digit_job.error,
        },
        **stream.measure(),
    }
    row["measure_seconds"] = time.perf_counter() - started
    return row


def _record(report: dict[str, Any], row: dict[str, Any], out: Path) -> None:
    """Add a row, print it, and rewrite report.json (a stopped run keeps its rows)."""
    report["rows"].append(row)
    console.print(_line(row))
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))


def _line(row: dict[str, Any]) -> str:
    job = row.get("cheque_job")
    gate = f"cheque {job['status']} v{job['version']}" if job else "zero-shot"
    return (
        f"batch {row['batch']} ({gate}): held-out exact {100 * row['exact']:.1f} %, "
        f"5 % review {100 * row['exact_review_5pct']:.1f} %, synthetic "
        f"{100 * row['synthetic_exact']:.2f} %, real digits {100 * row['real_digits']:.2f} %, "
        f"MNIST {100 * row['mnist']:.2f} %"
    )


def table(rows: Sequence[dict[str, Any]]) -> Table:
    """The stream's numbers, one row per batch (batch 0: the shipped models, zero-shot)."""
    out = Table(
        "batch",
        "fields",
        "cheque gate",
        "held-out exact %",
        "CER %",
        "exact, 5 % review",
        "exact, 10 % review",
        "ECE",
        "synthetic %",
        "digit gate",
        "real digits %",
        "MNIST %",
        "upload → canary s",
        title="Continual cheque stream (stable models after each batch)",
    )
    for row in rows:
        job, digit = row.get("cheque_job"), row.get("digit_job")
        seconds = row.get("upload_to_canary_seconds")
        out.add_row(
            str(row["batch"]),
            str(row["fields_uploaded"]),
            f"{job['status']} v{job['version']}" if job else "shipped",
            f"{100 * row['exact']:.1f}",
            f"{100 * row['cer']:.2f}",
            f"{100 * row['exact_review_5pct']:.1f}",
            f"{100 * row['exact_review_10pct']:.1f}",
            f"{row['ece']:.3f}",
            f"{100 * row['synthetic_exact']:.2f}",
            f"{digit['status']} v{digit['version']}" if digit else ("shipped" if not job else "-"),
            f"{100 * row['real_digits']:.2f}",
            f"{100 * row['mnist']:.2f}",
            "-" if seconds is None else f"{seconds:.0f}",
        )
    return out
