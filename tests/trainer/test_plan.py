"""The typed job plan: JSON round trip, plans written by the earlier trainer, unreadable plans."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from inkwell.store import SampleStore
from trainer.pipeline import Retrainer
from trainer.plan import (
    ALL_QUARANTINED,
    PLAN_VERSION,
    CandidatePlan,
    JobPlan,
    UnreadablePlanError,
)
from trainer.settings import TrainerSettings
from trainer.state import INTERRUPTED, TrainerState

# A computed job's plan exactly as the trainer stored it before `JobPlan` existed (a dict
# written with json.dumps(plan, default=str)): such a job must still publish after an upgrade.
LEGACY_PLAN = {
    "job_id": 7,
    "run_id": "0123abcd",
    "parent_version": "3",
    "model_config": {"width": 8, "stem_convs": 2},
    "weights": "/home/x/trainer/jobs/7/candidate.pt",
    "buffer": "/home/x/trainer/jobs/7/replay_buffer.npz",
    "passed": False,
    "reasons": ["holdout accuracy fell 4.00 pp (limit 0 pp)"],
    "tags": {"validation_status": "rejected", "inkwell.job_id": "7", "watermark": "41"},
    "meta": {"parent_version": "3", "watermark": 41, "buffer": {"size": 500, "seen": "612"}},
    "trained": [],
    "quarantined": {"12": "blank", "30": "gate_rejected", "31": "gate_rejected"},
    "watermark": 41,
    "counts": {"blank": 1, "duplicate": 0},
    "metrics": {"test_accuracy": 0.91, "holdout_accuracy": 0.5, "compute_seconds": 12},
}
LEGACY_QUARANTINE_PLAN = {
    "job_id": 8,
    "run_id": "4567ef",
    "parent_version": "3",
    "no_candidate": True,
    "passed": False,
    "reasons": ["all 2 new samples were quarantined (blank: 2); nothing was trained"],
    "trained": [],
    "quarantined": {"42": "blank", "43": "blank"},
    "watermark": 43,
    "counts": {"blank": 2},
    "metrics": {"compute_seconds": 0.5},
}


def _plan(**changes: object) -> JobPlan:
    plan = JobPlan(
        job_id=3,
        run_id="run-3",
        parent_version="2",
        passed=True,
        reasons=(),
        trained=(10, 11, 12),
        quarantined={13: "duplicate"},
        watermark=13,
        counts={"duplicate": 1, "blank": 0},
        metrics={"test_accuracy": 0.93, "holdout_accuracy": 1.0, "compute_seconds": 4.5},
        candidate=CandidatePlan(
            model_config={"width": 8},
            weights=Path("/tmp/jobs/3/candidate.pt"),
            buffer=Path("/tmp/jobs/3/replay_buffer.npz"),
            tags={"validation_status": "passed"},
            meta={"sample_ids": {"train": [10, 11], "val": [], "holdout": [12]}},
        ),
    )
    return replace(plan, **changes)  # type: ignore[arg-type]


def test_a_plan_reads_back_equal_to_what_was_written() -> None:
    plan = _plan()
    text = plan.to_json()

    assert JobPlan.from_json(text) == plan
    assert json.loads(text)["plan_version"] == PLAN_VERSION
    assert plan.outcome == "passed"


def test_a_quarantine_plan_round_trips_without_a_candidate() -> None:
    plan = _plan(candidate=None, passed=False, trained=())

    again = JobPlan.from_json(plan.to_json())

    assert again == plan and again.candidate is None
    assert again.outcome == ALL_QUARANTINED
    assert json.loads(plan.to_json())["no_candidate"] is True


def test_a_plan_written_by_the_earlier_trainer_still_loads() -> None:
    plan = JobPlan.from_json(json.dumps(LEGACY_PLAN))

    assert plan.candidate is not None
    assert plan.candidate.weights == Path(LEGACY_PLAN["weights"])  # type: ignore[arg-type]
    assert plan.quarantined == {12: "blank", 30: "gate_rejected", 31: "gate_rejected"}
    assert plan.metrics["compute_seconds"] == 12.0  # an int in JSON is a fine float
    assert plan.outcome == "rejected"
    # written back, it is the same object plus its version: an older trainer reads it too
    assert json.loads(plan.to_json()) == {**LEGACY_PLAN, "plan_version": 1}


def test_an_earlier_all_quarantined_plan_still_loads() -> None:
    plan = JobPlan.from_json(json.dumps(LEGACY_QUARANTINE_PLAN))

    assert plan.candidate is None and plan.outcome == ALL_QUARANTINED
    assert plan.quarantined == {42: "blank", 43: "blank"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON list, not an object"),
        (json.dumps({k: v for k, v in LEGACY_PLAN.items() if k != "weights"}), "'weights'"),
        (json.dumps({**LEGACY_PLAN, "watermark": "41"}), "'watermark' should be of type int"),
        (json.dumps({**LEGACY_PLAN, "passed": 1}), "'passed' should be of type bool"),
        (json.dumps({**LEGACY_PLAN, "trained": [1, "x"]}), r"'trained\[1\]'"),
        (json.dumps({**LEGACY_PLAN, "quarantined": {"a": "blank"}}), "not a sample id"),
        (json.dumps({**LEGACY_PLAN, "plan_version": 99}), "plan_version 99"),
    ],
)
def test_an_unreadable_plan_says_which_field_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UnreadablePlanError, match=message):
        JobPlan.from_json(text)


def test_a_computed_job_with_an_unreadable_plan_is_closed_and_its_samples_stay_pending(
    store: SampleStore,
) -> None:
    ids = [
        store.add(user_id="u", label=i, image=bytes([i]), pixels=bytes(784)).sample_id
        for i in range(3)
    ]
    settings = TrainerSettings()
    crashed = TrainerState(store, settings.model_name)
    job = crashed.begin_job("test", "1")
    crashed.mark_computed(job.id, json.dumps({**LEGACY_PLAN, "job_id": job.id, "watermark": []}))
    folder = settings.state_dir / "jobs" / str(job.id)
    folder.mkdir(parents=True)

    notes = Retrainer(settings, store=store).reconcile()

    assert notes and "plan unreadable" in notes[0] and "'watermark'" in notes[0]
    closed = crashed.job(job.id)
    assert closed is not None and closed.status == INTERRUPTED
    assert closed.error is not None and "cannot be read" in closed.error
    assert crashed.active_job() is None  # the next retrain may start
    assert [i for i, _, _ in crashed.pending()] == ids  # nothing committed
    assert crashed.watermark() == 0
    assert not folder.exists()
