"""Reviewed cheque fields become digit samples in the digit stream, each field exactly once.

The shipped cheque reader is `stable` in a fresh registry; the reviewed fields are rendered
from MNIST digits in the `real` synthetic style and stored as the service stores them.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import update

from inkwell.cheques.digits import cut_digits
from inkwell.cheques.pools import load_pool
from inkwell.cheques.reader import ChequeReader
from inkwell.cheques.synth import FieldSample, generate_fields, synth_config
from inkwell.registry import Registry
from inkwell.settings import STABLE, CoreSettings
from inkwell.shipped import SHIPPED_DIR
from inkwell.store import QUARANTINED, ChequeSample, Sample, SampleStore
from trainer.app import open_worker
from trainer.cheque_digits import ChequeDigitCutter, sample_key
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

FIELDS = 5


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stable_reader(trainer_home: Path) -> ChequeReader:
    """The shipped cheque reader registered as `inkwell-cheques@stable`."""
    reader = ChequeReader.from_dir(SHIPPED_DIR / "cheques")
    registry = Registry(CoreSettings())
    with registry.start_run("shipped-cheques") as run, tempfile.TemporaryDirectory() as tmp:
        files = reader.save(Path(tmp))
        registry.register_files(
            "inkwell-cheques", run.info.run_id, files, reader.meta, aliases=(STABLE,)
        )
    return reader


def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def add_reviewed(store: SampleStore, mnist_path: Path) -> list[tuple[int, FieldSample]]:
    fields = generate_fields(load_pool("train", mnist_path), FIELDS, 3, synth_config("real"))
    added = []
    for i, sample in enumerate(fields):
        result = store.add_cheque_sample(
            user_id=f"branch-{i}",
            amount=sample.label,
            image=_png(sample.image),
            layout="field",
            key_id="reviewer",
        )
        added.append((result.sample_id, sample))
    return added


def digit_samples(store: SampleStore) -> list[Sample]:
    with store.session() as session:
        return list(session.query(Sample).order_by(Sample.id))


def test_a_reviewed_field_becomes_its_digit_samples_exactly_once(
    trainer_home: Path, stable_reader: ChequeReader, store: SampleStore, mnist_path: Path
) -> None:
    added = add_reviewed(store, mnist_path)
    expected = {
        (sample_key(field_id, cut.position), f"branch-{i}", cut.digit)
        for i, (field_id, sample) in enumerate(added)
        for cut in cut_digits(stable_reader, _png(sample.image), sample.label)
        if cut.confidence >= TrainerSettings().cheque_digits_min_confidence
    }
    assert len(expected) >= 3 * FIELDS  # most digits of 2-7 digit amounts are cut
    settings = TrainerSettings()
    cutter = ChequeDigitCutter(settings, store=store, registry=Registry(settings))
    first = cutter.run_once()
    assert (first.fields, first.created, first.watermark) == (FIELDS, len(expected), added[-1][0])
    stored = {(s.idempotency_key, s.user_id, s.label) for s in digit_samples(store)}
    assert stored == expected
    assert cutter.run_once().created == 0  # the watermark says every field is cut
    cutter.state_file.unlink()  # a crash before the watermark moved: the field is cut again
    again = cutter.run_once()
    assert (again.fields, again.created) == (FIELDS, 0)
    assert len(digit_samples(store)) == len(expected)


def test_quarantined_reviewed_fields_give_no_digits(
    trainer_home: Path, stable_reader: ChequeReader, store: SampleStore, mnist_path: Path
) -> None:
    added = add_reviewed(store, mnist_path)
    with store.session() as session:
        session.execute(update(ChequeSample).values(state=QUARANTINED))
    settings = TrainerSettings()
    outcome = ChequeDigitCutter(settings, store=store, registry=Registry(settings)).run_once()
    assert (outcome.fields, outcome.created) == (0, 0)
    assert digit_samples(store) == [] and added


def test_the_worker_cuts_cheque_digits_before_it_counts_pending_digits(
    trainer_home: Path,
    registered_base: str,
    stable_reader: ChequeReader,
    store: SampleStore,
    mnist_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INKWELL_TRAINER_MIN_NEW_SAMPLES", "10000")  # no digit retrain here
    add_reviewed(store, mnist_path)
    worker = asyncio.run(open_worker(TrainerSettings(), FastAPI(), wait=False))
    assert worker is not None and worker.digits is not None
    assert worker.poll_once() is None
    assert worker.pending().count == len(digit_samples(store)) >= 3 * FIELDS
    shown = worker.status()["cheque_digits"]
    assert shown["last_fields"] == FIELDS and shown["last_created"] == len(digit_samples(store))


def test_cheque_digits_can_be_turned_off(
    trainer_home: Path, registered_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INKWELL_TRAINER_CHEQUE_DIGITS", "false")
    worker = asyncio.run(open_worker(TrainerSettings(), FastAPI(), wait=False))
    assert isinstance(worker, Worker) and worker.digits is None
    assert isinstance(worker.retrainer, Retrainer)
