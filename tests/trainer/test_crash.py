"""Crash safety: kill -9 mid-retrain leaves no half version and loses no watermark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from inkwell.model import DigitNet, ModelConfig
from inkwell.registry import Registry
from inkwell.settings import CANARY
from inkwell.store import ACCEPTED, TRAINED, SampleStore
from tests.trainer.conftest import REPO, MnistArrays, upload
from trainer.pipeline import BUFFER_FILE, Retrainer
from trainer.settings import TrainerSettings
from trainer.state import TrainerState

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def retrain_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; killed at teardown whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_kill_9_while_training_then_restart_redoes_the_work(
    registered_base: str,
    store: SampleStore,
    mnist: MnistArrays,
    retrain_process: list[subprocess.Popen[bytes]],
) -> None:
    ids = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    settings = TrainerSettings()
    state = TrainerState(store, settings.model_name)
    code = (
        "import sys; from inkwell.cli import main; "
        "sys.argv = ['inkwell', 'trainer', 'retrain']; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    retrain_process.append(process)
    deadline = time.monotonic() + 600
    job = None
    while time.monotonic() < deadline:
        job = state.active_job()
        if job is not None and job.phase in ("tuning", "training"):
            break
        assert process.poll() is None, "the retrain ended before it could be killed"
        time.sleep(0.1)
    assert job is not None and job.run_id is not None

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    registry = Registry(settings)
    assert [v.version for v in registry.list_versions(settings.model_name)] == [registered_base]
    assert state.watermark() == 0
    assert {s.state for s in store.by_ids(ids)} == {ACCEPTED}

    retrainer = Retrainer(settings, store=store)
    notes = retrainer.reconcile()

    assert notes and "interrupted" in notes[0]
    assert state.job(job.id).status == "interrupted"
    client = MlflowClient(settings.resolved_tracking_uri)
    assert client.get_run(job.run_id).info.status == "KILLED"
    outcome = retrainer.retrain("restart")
    assert state.watermark() == max(ids)
    assert outcome.version == str(int(registered_base) + 1)
    assert not [s for s in store.by_ids(ids) if s.state == ACCEPTED]


def test_a_job_killed_after_registering_is_completed_on_restart(
    registered_base: str, store: SampleStore, mnist: MnistArrays
) -> None:
    ids = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    settings = TrainerSettings()
    crashed = Retrainer(settings, store=store)
    job, plan = crashed.compute_job("test")
    # the process dies right after creating the version, before tagging it complete
    registry = Registry(settings)
    candidate = DigitNet(ModelConfig.from_dict(plan["model_config"]))
    candidate.load_state_dict(torch.load(plan["weights"], weights_only=True))
    half = registry.register_digit_model(
        candidate,
        plan["run_id"],
        meta=plan["meta"],
        tags={**plan["tags"], "complete": "false"},
        extra_files={BUFFER_FILE: Path(plan["buffer"])},
    )
    assert crashed.state.watermark() == 0

    notes = Retrainer(settings, store=store).reconcile()

    assert notes and f"version {half.version}" in notes[0]
    info = registry.get_version(settings.model_name, half.version)
    assert info.tags["complete"] == "true"
    versions = registry.list_versions(settings.model_name)
    assert [v.version for v in versions] == [half.version, registered_base]  # no duplicate
    if plan["passed"]:
        assert registry.get_version(settings.model_name, CANARY).version == half.version
    assert crashed.state.watermark() == max(ids)
    assert crashed.state.job(job.id).status == "done"
    assert {s.state for s in store.by_ids(ids)} <= {TRAINED, "quarantined"}
