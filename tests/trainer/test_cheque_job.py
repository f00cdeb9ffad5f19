"""The cheque-reader retrain job, end to end: reviewed fields uploaded through the real service
route, the real worker trains, gates and registers; the shipped reader is `stable`.

No real cheque data here: the "reviewed" fields are rendered in the `real` synthetic style.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import inkwell.shipped
from inkwell.cheques.pools import load_pool
from inkwell.cheques.reader import ChequeReader
from inkwell.cheques.synth import generate_fields, synth_config
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE, CoreSettings
from inkwell.store import ChequeSample
from service.main import create_app
from service.settings import ServiceSettings
from tests.conftest import copy_mlflow_db
from trainer.cheque_job import ChequeJobPlan, ChequeRetrainer, held_out
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

KEY = "cheque-job-reviewer-key-0123"
FIELDS = 24
SHIPPED = Path(inkwell.shipped.__file__).parent / "cheques"


def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def home(tmp_path: Path, mnist_dir: Path, empty_mlflow_db: Path) -> Path:
    """A home whose registry holds the shipped cheque reader as v1 `stable`."""
    copy_mlflow_db(empty_mlflow_db, tmp_path)
    registry = Registry(CoreSettings(home=tmp_path, data_dir=mnist_dir))
    reader = ChequeReader.from_dir(SHIPPED)
    with registry.start_run("shipped-cheques") as run, tempfile.TemporaryDirectory() as tmp:
        files = reader.save(Path(tmp))
        registry.register_files(
            "inkwell-cheques", run.info.run_id, files, reader.meta, aliases=(STABLE,)
        )
    return tmp_path


def upload_reviewed(home: Path, mnist_dir: Path, n: int = FIELDS, seed: int = 7) -> None:
    """Upload `n` rendered real-style fields with their amounts through POST /v1/cheques/samples."""
    settings = ServiceSettings(
        home=home,
        data_dir=mnist_dir,
        variant=STABLE,
        poll_interval_s=60,
        torch_threads=1,
        api_keys=[KEY],  # type: ignore[list-item]
    )
    fields = generate_fields(load_pool("train", mnist_dir), n, seed, synth_config("real"))
    with TestClient(create_app(settings)) as client:
        for i, sample in enumerate(fields):
            response = client.post(
                "/v1/cheques/samples",
                files={"image": ("amount.png", _png(sample.image), "image/png")},
                data={"amount": sample.label, "user_id": f"branch-{i % 3}"},
                headers={"X-API-Key": KEY},
            )
            assert response.status_code == 201, response.text


def trainer_settings(home: Path, mnist_dir: Path, **overrides: object) -> TrainerSettings:
    values: dict[str, object] = {
        "home": home,
        "data_dir": mnist_dir,
        "threads": 1,
        "cheque_min_new_fields": FIELDS,
        "cheque_holdout_fraction": 0.4,
        "cheque_min_holdout": 4,
        "cheque_steps": 2,
        "cheque_batch_size": 4,
        "cheque_lr": 1e-7,  # a candidate that barely moves: it must match stable and pass
        "cheque_synthetic_test_fields": 48,
        **overrides,
    }
    return TrainerSettings(**values)  # type: ignore[arg-type]


def worker_for(settings: TrainerSettings) -> Worker:
    return Worker(Retrainer(settings), settings, cheques=ChequeRetrainer(settings))


def test_due_cheque_job_registers_a_canary_tracked_in_mlflow(home: Path, mnist_dir: Path) -> None:
    upload_reviewed(home, mnist_dir)
    settings = trainer_settings(home, mnist_dir)
    worker = worker_for(settings)
    outcome = worker.poll_cheques()
    assert outcome is not None and outcome.status == "passed", outcome
    registry = Registry(settings)
    canary = registry.get_version("inkwell-cheques", CANARY)
    assert canary.version == outcome.version == "2"
    assert registry.get_version("inkwell-cheques", STABLE).version == "1"
    assert canary.tags["parent_version"] == "1"
    run = mlflow.get_run(str(canary.run_id))
    assert run.data.params["data_watermark"] == str(outcome.plan.watermark)
    assert run.data.params["parent_version"] == "1"
    assert "candidate_holdout_accuracy" in run.data.metrics
    assert "candidate_synthetic_accuracy" in run.data.metrics
    # the recalibrated threshold travels with the version the service loads
    loaded = ChequeReader.load(CANARY, registry=registry)
    assert loaded.meta["finetune"]["calibration_fields"] == len(outcome.plan.holdout_ids)
    assert loaded.review_threshold == loaded.meta["calibration"]["review_threshold"]
    assert worker.poll_cheques() is None  # nothing new past the watermark
    status = worker.cheque_status()
    assert status is not None and status["pending"] == 0
    assert status["last_job"]["version"] == "2" and status["watermark"] == outcome.plan.watermark


def test_held_out_fields_are_fixed_by_image_hash_and_never_trained_on(
    home: Path, mnist_dir: Path
) -> None:
    upload_reviewed(home, mnist_dir)
    settings = trainer_settings(home, mnist_dir)
    cheques = ChequeRetrainer(settings)
    plan = cheques.plan()
    assert plan.holdout_ids and plan.train_ids
    assert not set(plan.train_ids) & set(plan.holdout_ids)
    with cheques.store.session() as session:
        digests = {row.id: row.content_sha256 for row in session.query(ChequeSample)}
    assert all(held_out(digests[i], 0.4) for i in plan.holdout_ids)
    assert not any(held_out(digests[i], 0.4) for i in plan.train_ids)
    assert ChequeJobPlan.from_json(plan.to_json()) == plan
    upload_reviewed(home, mnist_dir, n=6, seed=99)
    later = ChequeRetrainer(settings).plan()
    assert set(plan.holdout_ids) <= set(later.holdout_ids)  # stable across jobs


def test_candidate_worse_on_synthetic_amounts_gets_no_canary(home: Path, mnist_dir: Path) -> None:
    upload_reviewed(home, mnist_dir)
    # a learning rate far too high wrecks the reader in a few steps: the gate must refuse it
    settings = trainer_settings(home, mnist_dir, cheque_lr=0.5, cheque_steps=4)
    outcome = worker_for(settings).poll_cheques()
    assert outcome is not None and outcome.status == "rejected", outcome
    assert any("synthetic" in r or "held-out" in r for r in outcome.gate.reasons)
    registry = Registry(settings)
    assert registry.find_version("inkwell-cheques", CANARY) is None
    rejected = registry.get_version("inkwell-cheques", str(outcome.version))
    assert rejected.tags["gate_status"] == "rejected"


def test_interrupted_cheque_job_resumes_its_plan_and_registers_once(
    home: Path, mnist_dir: Path
) -> None:
    upload_reviewed(home, mnist_dir)
    settings = trainer_settings(home, mnist_dir)
    first = ChequeRetrainer(settings)
    plan = first.plan()
    # the worker died after writing its plan, before training finished
    first._save_state(plan.previous_watermark, plan)
    upload_reviewed(home, mnist_dir, n=3, seed=123)  # arrives while the worker is down
    outcome = ChequeRetrainer(settings).run_once()
    assert outcome is not None and outcome.plan == plan
    assert ChequeRetrainer(settings).watermark == plan.watermark
    # and died again after registering, before moving the watermark: no second version
    again = ChequeRetrainer(settings)._run(plan)
    assert again.version == outcome.version
    versions = Registry(settings).list_versions("inkwell-cheques")
    assert [v.tags.get("cheque_job") for v in versions].count(plan.job_id) == 1


def _promote_forgetful_stable(home: Path, mnist_dir: Path) -> None:
    """v2, child of the shipped v1, becomes stable: it reads synthetic amounts worse (a blank
    bias makes it drop digits), as a lineage that forgot a little at every job would."""
    registry = Registry(CoreSettings(home=home, data_dir=mnist_dir))
    reader = ChequeReader.from_dir(SHIPPED)
    with torch.no_grad():
        reader.model.classify.bias[0] += 4.0
    with registry.start_run("forgetful") as run, tempfile.TemporaryDirectory() as tmp:
        registry.register_files(
            "inkwell-cheques",
            run.info.run_id,
            reader.save(Path(tmp)),
            reader.meta,
            tags={"parent_version": "1"},
            aliases=(STABLE,),
        )


def test_forgetting_cannot_add_up_over_jobs_the_base_version_bounds_it(
    home: Path, mnist_dir: Path
) -> None:
    _promote_forgetful_stable(home, mnist_dir)
    upload_reviewed(home, mnist_dir)
    settings = trainer_settings(home, mnist_dir)
    outcome = worker_for(settings).poll_cheques()
    assert outcome is not None and outcome.status == "rejected", outcome
    gate = outcome.gate
    assert gate.metrics["synthetic_drop_pp"] <= settings.cheque_max_synthetic_drop_pp  # vs v2
    assert gate.metrics["base_synthetic_drop_pp"] > 0.5
    assert any("below the base version v1's" in r for r in gate.reasons), gate.reasons
    candidate = ChequeReader.load(str(outcome.version), registry=Registry(settings))
    assert candidate.meta["finetune"]["parent_version"] == "2"
    assert candidate.meta["finetune"]["distilled_to"] == "1"  # the lineage's base


def test_the_lineage_base_is_loaded_once_per_worker_not_once_per_job(
    home: Path, mnist_dir: Path
) -> None:
    _promote_forgetful_stable(home, mnist_dir)
    settings = trainer_settings(home, mnist_dir)
    retrainer = ChequeRetrainer(settings)
    stable = ChequeReader.load(STABLE, registry=Registry(settings))
    base = retrainer.base_of(stable)
    assert (stable.version, base.version) == ("2", "1")
    again = ChequeReader.load(STABLE, registry=Registry(settings))  # the next job's stable
    assert retrainer.base_of(again) is base
    # a stable that is its own lineage's base is itself
    shipped = ChequeReader.load("1", registry=Registry(settings))
    assert retrainer.base_of(shipped) is shipped


def test_without_the_base_bound_the_same_job_is_judged_against_stable_alone(
    home: Path, mnist_dir: Path
) -> None:
    _promote_forgetful_stable(home, mnist_dir)
    upload_reviewed(home, mnist_dir)
    settings = trainer_settings(
        home, mnist_dir, cheque_max_base_synthetic_drop_pp=None, cheque_distill_from="stable"
    )
    outcome = worker_for(settings).poll_cheques()
    assert outcome is not None and outcome.status == "passed", outcome.gate.reasons
    assert "base_synthetic_drop_pp" not in outcome.gate.metrics
    candidate = ChequeReader.load(str(outcome.version), registry=Registry(settings))
    assert candidate.meta["finetune"]["distilled_to"] == "2"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
