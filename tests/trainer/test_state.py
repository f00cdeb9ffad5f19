"""Who owns a job: a lease renewed by a heartbeat; a dead or silent owner's job is taken over.

Run against SQLite and real PostgreSQL (`database_url`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, update

from inkwell.errors import ConflictError
from inkwell.store import SampleStore, make_engine
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.state import COMPUTED, RUNNING, TrainerJob, TrainerState, process_alive


@pytest.fixture
def store(database_url: str, trainer_home: Path) -> Iterator[SampleStore]:
    """The trainer's state on SQLite and on real PostgreSQL (when installed)."""
    sample_store = SampleStore(database_url)
    yield sample_store
    sample_store.engine.dispose()


@pytest.mark.integration
def test_a_live_local_process_is_alive_and_a_finished_one_is_not() -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert process_alive(socket.gethostname(), os.getpid())
    assert not process_alive(socket.gethostname(), finished.pid)


def _as_other_pod(store: SampleStore, job_id: int, lease_until: datetime) -> None:
    """Make a job look like one started by a pod that has since been replaced."""
    with store.session() as session:
        session.execute(
            update(TrainerJob)
            .where(TrainerJob.id == job_id)
            .values(
                host="inkwell-trainer-7d9f-old",
                pid=1,
                owner="inkwell-trainer-7d9f-old:1:0badc0de",
                lease_until=lease_until,
                updated_at=datetime.now(UTC),  # it moved a moment ago: not an hour stale
            )
        )


def test_a_replaced_pods_job_is_taken_over_as_soon_as_its_lease_expires(
    store: SampleStore, trainer_home: object
) -> None:
    settings = TrainerSettings()
    job = TrainerState(store, settings.model_name).begin_job("test", "1")
    _as_other_pod(store, job.id, datetime.now(UTC) - timedelta(seconds=1))
    retrainer = Retrainer(settings, store=store)

    notes = retrainer.reconcile()

    assert notes and "interrupted" in notes[0]
    assert retrainer.state.job(job.id).status == "interrupted"
    assert retrainer.state.active_job() is None  # the next retrain can start at once


def test_a_job_whose_lease_is_still_held_by_another_pod_is_left_alone(
    store: SampleStore, trainer_home: object
) -> None:
    settings = TrainerSettings()
    job = TrainerState(store, settings.model_name).begin_job("test", "1")
    _as_other_pod(store, job.id, datetime.now(UTC) + timedelta(seconds=60))
    retrainer = Retrainer(settings, store=store)

    assert retrainer.reconcile() == []
    assert retrainer.state.job(job.id).status == RUNNING
    with pytest.raises(ConflictError, match="already in progress"):
        retrainer.state.begin_job("test", "1")


def test_the_heartbeat_keeps_the_lease_alive_past_its_length(
    store: SampleStore, trainer_home: object
) -> None:
    state = TrainerState(store, "inkwell-digits", lease_seconds=0.6)
    job = state.begin_job("test", "1")
    with state.heartbeat(job.id) as lost:
        time.sleep(1.5)
        current = state.job(job.id)
        assert current is not None and current.lease_until is not None
        assert current.lease_until > datetime.now(UTC)
    assert not lost.is_set()
    state.mark_computed(job.id, json.dumps({"job_id": job.id}))
    assert state.job(job.id).status == COMPUTED


def test_a_job_taken_over_cannot_be_finished_by_its_old_owner(
    store: SampleStore, trainer_home: object
) -> None:
    old = TrainerState(store, "inkwell-digits", lease_seconds=0.3)
    job = old.begin_job("test", "1")
    time.sleep(0.5)  # the old owner stalled: no heartbeat, the lease ran out
    first, second = (TrainerState(store, "inkwell-digits") for _ in range(2))
    stale_view = old.job(job.id)

    assert first.claim(stale_view)
    assert not second.claim(stale_view)  # the same expired lease is won once
    assert not old.renew(job.id)
    with pytest.raises(ConflictError, match="taken over"):
        old.mark_computed(job.id, json.dumps({"job_id": job.id}))
    assert first.job(job.id).owner == first.owner


LEASE_COLUMNS = ("owner", "lease_until")


def test_a_database_from_before_leases_gets_the_lease_columns(database_url: str) -> None:
    url = database_url
    old = MetaData()
    columns = TrainerJob.__table__.columns
    Table("trainer_jobs", old, *(c._copy() for c in columns if c.name not in LEASE_COLUMNS))
    old.create_all(make_engine(url))

    state = TrainerState(SampleStore(url), "inkwell-digits")
    job = state.begin_job("test", None)

    assert job.owner == state.owner and job.lease_until is not None


def test_a_capped_job_commits_its_samples_and_leaves_the_rest_pending(
    store: SampleStore,
) -> None:
    ids = [
        store.add(user_id="u", label=i % 10, image=bytes([i]), pixels=bytes(784)).sample_id
        for i in range(10)
    ]
    state = TrainerState(store, "inkwell-digits")
    taken = state.new_samples(store.max_id(), lineage=[], limit=4)
    assert [s.id for s in taken] == ids[:4]
    job = state.begin_job("test", "1")
    state.mark_computed(job.id, json.dumps({"job_id": job.id}))

    state.commit_job(
        job.id,
        version="2",
        outcome="passed",
        trained=ids[:3],
        quarantined={ids[3]: "blank"},
        watermark=ids[3],
    )

    assert state.watermark() == ids[3]
    assert [i for i, _, _ in state.pending()] == ids[4:]
    assert state.job(job.id).status == "done"
    history = state.lineage_samples(["2"])
    assert [s.id for s in history] == ids[:3] and history[0].pixels == bytes(784)
