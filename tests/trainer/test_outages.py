"""Outages in the trainer's dependencies (issue 18): MLflow failing at each publish step, and
its state directory on a full disk; a flood of large valid images."""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from inkwell.errors import RegistryUnavailableError
from inkwell.registry import Registry
from inkwell.settings import CANARY
from inkwell.store import ACCEPTED, TRAINED, SampleStore
from tests.harness import Process, child_env, free_port, wait_http
from tests.outage import ProxyMode, faulty_proxy, fill, small_disk
from tests.trainer.conftest import MnistArrays, upload
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.parametrize("mode", ["error", "hang"])
def test_mlflow_failing_at_each_publish_step_still_publishes_exactly_one_version(
    registered_base: str,
    store: SampleStore,
    mnist: MnistArrays,
    monkeypatch: pytest.MonkeyPatch,
    trainer_home: Path,
    mnist_path: Path,
    mode: ProxyMode,
) -> None:
    monkeypatch.setenv("INKWELL_TRAINER_HPO_TRIALS", "1")
    ids = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    settings = TrainerSettings()
    job, _ = Retrainer(settings, store=store).compute_job("test")

    # a real MLflow server on the trainer's registry, behind a proxy that breaks one request
    port = free_port()
    server = Process(
        "mlflow",
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", Registry(settings).tracking_uri,
        ],
        child_env(trainer_home, mnist_path),
        trainer_home / "mlflow-server.log",
    )  # fmt: skip
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        wait_http(server, f"http://127.0.0.1:{port}/health")
        with faulty_proxy(f"http://127.0.0.1:{port}", mode) as proxy:
            remote = TrainerSettings(tracking_uri=proxy.url, publish_attempts=1)
            trainer = Retrainer(remote, store=store, registry=Registry(remote))
            # poll after poll, MLflow fails one step further on, until a poll gets through
            notes: list[str] = []
            for step in range(60):
                proxy.reset(fail_at=step)
                try:
                    notes += trainer.reconcile()
                except RegistryUnavailableError as exc:
                    assert "stays computed" in exc.message
                    left = trainer.state.job(job.id)
                    assert left is not None and left.status == "computed"
                    assert trainer.state.watermark() == 0  # nothing committed half-way
                    continue
                if step < len(proxy.requests):
                    continue  # a failure it tolerates (closing the run): poll again
                break
            # every request up to success failed once, registering the version among them
            assert any("model-versions/create" in failed for failed in proxy.failed), proxy.failed
            assert len(notes) == 1 and f"job {job.id}: finished" in notes[0], (notes, proxy.failed)
    finally:
        server.stop()

    registry = Registry(settings)
    published = [
        v
        for v in registry.list_versions(settings.model_name)
        if v.tags.get("inkwell.job_id") == str(job.id)
    ]
    assert len(published) == 1, [(v.version, v.tags) for v in published]  # exactly one version
    version = published[0]
    assert version.tags["complete"] == "true"
    assert version.version == str(int(registered_base) + 1)
    state = trainer.state.job(job.id)
    assert state is not None and state.status == "done"
    assert trainer.state.watermark() == max(ids)
    if state.outcome == "passed":
        assert registry.get_version(settings.model_name, CANARY).version == version.version


def test_a_full_state_directory_fails_the_job_cleanly_and_the_next_retrain_succeeds(
    registered_base: str, store: SampleStore, mnist: MnistArrays, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INKWELL_TRAINER_HPO_TRIALS", "1")
    ids = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    settings = TrainerSettings()
    with small_disk(settings.state_dir, "8m") as disk:
        filler = fill(disk, leave_bytes=0)
        retrainer = Retrainer(settings, store=store)
        with pytest.raises(OSError, match="No space left"):
            retrainer.retrain("test")
        failed = retrainer.state.last_job()
        assert failed is not None and failed.status == "failed", failed
        assert "No space left on device" in (failed.error or ""), failed.error
        assert retrainer.state.watermark() == 0
        assert {s.state for s in store.by_ids(ids)} == {ACCEPTED}  # all still pending
        assert [v.version for v in Registry(settings).list_versions(settings.model_name)] == [
            registered_base
        ]

        filler.unlink()  # space is back: the next retrain (the worker's next poll) goes through
        outcome = retrainer.retrain("test")
    assert outcome.version == str(int(registered_base) + 1)
    assert retrainer.state.watermark() == max(ids)
    assert {s.state for s in store.by_ids(ids)} <= {TRAINED, "quarantined"}


def large_scan(digit: np.ndarray, seed: int, side: int = 1_000) -> bytes:
    """A valid ~1 MB PNG: the digit upscaled onto paper with scanner noise (barely compresses)."""
    noise = np.random.default_rng(seed).integers(0, 40, (side, side), dtype=np.uint8)
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
    paper = (255 - (big.astype(np.int32) * 200 // 255) - noise).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_a_flood_of_large_valid_images_keeps_the_retraining_trainer_s_memory_bounded(
    registered_base: str, store: SampleStore, mnist: MnistArrays, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INKWELL_TRAINER_HPO_TRIALS", "1")
    monkeypatch.setenv("INKWELL_TRAINER_MAX_IMAGE_BYTES_PER_JOB", str(32 * 1024 * 1024))
    settings = TrainerSettings()
    retrainer = Retrainer(settings, store=store)
    # a first retrain on ordinary uploads: MNIST, the model and training's own memory in place
    upload(store, "warm-up", mnist.test_images[-40:], mnist.test_labels[-40:])
    assert retrainer.retrain("warm-up").version is not None
    flood = 640  # ~0.8 MB each: sixteen times what one job may load
    ids = []
    for i in range(flood):
        image = large_scan(mnist.test_images[i], seed=i)
        pixels = mnist.test_images[i].astype(np.uint8).tobytes()
        label = int(mnist.test_labels[i])
        ids.append(store.add(user_id=f"u{i % 8}", label=label, image=image, pixels=pixels))
    flooded = sum(len(s.image) for s in store.by_ids([a.sample_id for a in ids[:5]])) / 5
    assert flooded > 700_000, flooded
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    try:
        outcome = retrainer.retrain("test")
    finally:
        done.set()
        sampler.join()
    grew_mb = (peak[0] - before) / 2**20
    # one job holds at most its 32 MB of images (plus training); the flood's 500 MB waits
    assert grew_mb < 250, f"RSS grew {grew_mb:.0f} MB while retraining on a flood of images"
    assert outcome.version is not None
    learned = retrainer.state.watermark()
    assert 0 < learned < ids[-1].sample_id  # the rest is still pending for later jobs
    assert len(retrainer.state.pending()) == sum(1 for a in ids if a.sample_id > learned)
