"""Crash safety: kill -9 mid-retrain leaves no half version and loses no watermark."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from inkwell.errors import DiskFullError, RegistryUnavailableError
from inkwell.model import DigitNet, ModelConfig
from inkwell.registry import Registry
from inkwell.settings import CANARY
from inkwell.store import ACCEPTED, TRAINED, SampleStore
from tests.outage import failing_server
from tests.trainer.conftest import REPO, MnistArrays, upload
from trainer.pipeline import BUFFER_FILE, WEIGHTS_FILE, Retrainer, save_weights
from trainer.plan import JobPlan
from trainer.settings import TrainerSettings
from trainer.state import JobView, TrainerState
from trainer.worker import Worker

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
    tmp_path: Path,
    registered_base: str,
    store: SampleStore,
    mnist: MnistArrays,
    retrain_process: list[subprocess.Popen[bytes]],
) -> None:
    ids = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    settings = TrainerSettings()
    state = TrainerState(store, settings.model_name)
    code = (
        "import sys; from inkwell_app.cli import main; "
        "sys.argv = ['inkwell', 'trainer', 'retrain']; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = tmp_path / "retrain.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    retrain_process.append(process)
    deadline = time.monotonic() + 600
    job = None
    while time.monotonic() < deadline:
        job = state.active_job()
        if job is not None and job.phase in ("tuning", "training"):
            break
        assert process.poll() is None, f"the retrain ended early: {log.read_text()[-2000:]}"
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
    assert plan.candidate is not None
    # the process dies right after creating the version, before tagging it complete
    registry = Registry(settings)
    candidate = DigitNet(ModelConfig.from_dict(plan.candidate.model_config))
    candidate.load_state_dict(torch.load(plan.candidate.weights, weights_only=True))
    half = registry.register_digit_model(
        candidate,
        plan.run_id,
        meta=plan.candidate.meta,
        tags={**plan.candidate.tags, "complete": "false"},
        extra_files={BUFFER_FILE: plan.candidate.buffer},
    )
    assert crashed.state.watermark() == 0

    notes = Retrainer(settings, store=store).reconcile()

    assert notes and f"version {half.version}" in notes[0]
    info = registry.get_version(settings.model_name, half.version)
    assert info.tags["complete"] == "true"
    versions = registry.list_versions(settings.model_name)
    assert [v.version for v in versions] == [half.version, registered_base]  # no duplicate
    if plan.passed:
        assert registry.get_version(settings.model_name, CANARY).version == half.version
    assert crashed.state.watermark() == max(ids)
    assert crashed.state.job(job.id).status == "done"
    assert {s.state for s in store.by_ids(ids)} <= {TRAINED, "quarantined"}


def test_one_job_learns_at_most_max_samples_per_job_and_the_rest_stay_pending(
    registered_base: str,
    store: SampleStore,
    mnist: MnistArrays,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INKWELL_TRAINER_HPO_TRIALS", "1")
    monkeypatch.setenv("INKWELL_TRAINER_MAX_SAMPLES_PER_JOB", "24")
    ids = upload(store, "alice", mnist.test_images[:40], mnist.test_labels[:40])
    settings = TrainerSettings()
    retrainer = Retrainer(settings, store=store)

    outcome = retrainer.retrain("test")

    assert outcome.version is not None
    assert retrainer.state.watermark() == ids[23]
    assert {s.state for s in store.by_ids(ids[:24])} <= {TRAINED, "quarantined"}
    assert {s.state for s in store.by_ids(ids[24:])} == {ACCEPTED}  # nothing lost
    assert [i for i, _, _ in retrainer.state.pending()] == ids[24:]
    tags = Registry(settings).get_version(settings.model_name, outcome.version).tags
    assert tags["watermark"] == str(ids[23])


def _computed_job(
    settings: TrainerSettings,
    store: SampleStore,
    mnist: MnistArrays,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[int], JobView, JobPlan]:
    """32 uploads and a job computed from them (trained and gated, not published)."""
    monkeypatch.setenv("INKWELL_TRAINER_HPO_TRIALS", "1")
    ids = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    job, plan = Retrainer(settings, store=store).compute_job("test")
    computed = Retrainer(settings, store=store).state.job(job.id)
    assert computed is not None and computed.status == "computed"
    return ids, computed, plan


def _publishes_once_when_healthy_again(
    settings: TrainerSettings, store: SampleStore, base: str, ids: list[int]
) -> None:
    """The next poll publishes the waiting job: one new version, complete, watermark moved."""
    retrainer = Retrainer(settings, store=store)
    notes = retrainer.reconcile()
    registry = Registry(settings)
    versions = [v.version for v in registry.list_versions(settings.model_name)]
    assert versions == [str(int(base) + 1), base]  # registered once
    assert notes and f"version {versions[0]}" in notes[0]
    assert registry.get_version(settings.model_name, versions[0]).tags["complete"] == "true"
    assert retrainer.state.watermark() == max(ids)
    job = retrainer.state.last_job()
    assert job is not None and job.status == "done"


def test_publishing_while_mlflow_fails_keeps_the_job_computed_and_a_later_poll_publishes_once(
    registered_base: str,
    store: SampleStore,
    mnist: MnistArrays,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = TrainerSettings()
    ids, job, plan = _computed_job(settings, store, mnist, monkeypatch)
    assert plan.candidate is not None and plan.candidate.weights.is_file()
    assert not list(plan.candidate.weights.parent.glob("*.tmp"))  # renamed into place

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    for mode in ("error", "hang"):
        with failing_server(mode) as server:
            down = TrainerSettings(
                tracking_uri=server.url, publish_attempts=2, publish_backoff_seconds=0.1
            )
            broken = Retrainer(down, store=store, registry=Registry(down))
            with pytest.raises(RegistryUnavailableError, match="stays computed"):
                broken.reconcile()
            assert len(server.requests) >= 2  # it retried
        assert broken.state.job(job.id).status == "computed"
        assert broken.state.watermark() == 0

    _publishes_once_when_healthy_again(settings, store, registered_base, ids)


def test_a_full_disk_while_publishing_reads_as_disk_full_not_as_mlflow_down(
    registered_base: str,
    store: SampleStore,
    mnist: MnistArrays,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = TrainerSettings(publish_attempts=3, publish_backoff_seconds=0.1)
    ids, job, _ = _computed_job(settings, store, mnist, monkeypatch)

    # The filesystem edge: every file copied into the (embedded) MLflow artifact store fails as
    # a full disk does; MLflow itself runs unchanged.
    real_copyfile = shutil.copyfile
    writes: list[str] = []

    def full_artifact_store(src: str, dst: str, *args: object, **kwargs: object) -> object:
        if Path(dst).resolve().is_relative_to(settings.artifact_root.resolve()):
            writes.append(str(dst))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_copyfile(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "copyfile", full_artifact_store)
    retrainer = Retrainer(settings, store=store)
    worker = Worker(retrainer, settings)
    worker.poll_once()  # the worker's reconcile publishes the computed job

    assert worker.last_error is not None and worker.last_error.startswith("disk_full: ")
    assert "No space left on device" in worker.last_error
    assert "MLflow" not in worker.last_error.split("(")[0]  # not "MLflow unavailable"
    assert len(writes) == 1  # no pointless retries against a full disk
    assert retrainer.state.job(job.id).status == "computed"
    assert retrainer.state.watermark() == 0
    failures = retrainer.metrics.publish_failures
    assert failures.labels(reason="disk_full")._value.get() == 1
    assert failures.labels(reason="registry_unavailable")._value.get() == 0
    with pytest.raises(DiskFullError, match="stays computed"):
        Retrainer(settings, store=store).reconcile()

    monkeypatch.setattr(shutil, "copyfile", real_copyfile)  # space freed
    _publishes_once_when_healthy_again(settings, store, registered_base, ids)


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
import torch
from inkwell.model import DigitNet, ModelConfig
from trainer.pipeline import save_weights

path = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with an error
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
torch.manual_seed(1)
try:
    save_weights(DigitNet(ModelConfig(width=8)), path)
except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
    print("failed:", exc)
    sys.exit(3)
"""


def test_a_candidate_write_that_fails_midway_leaves_the_previous_file_whole(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    previous = DigitNet(ModelConfig(width=8))
    path = save_weights(previous, tmp_path / "jobs" / "7" / WEIGHTS_FILE)

    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 3, result.stdout + result.stderr
    kept = torch.load(path, weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in previous.state_dict().items())
    assert [p.name for p in path.parent.iterdir()] == [WEIGHTS_FILE]  # no temp file left
