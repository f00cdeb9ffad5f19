"""The retrain pipeline against a real registry, store and MNIST (tiny base model)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from inkwell.errors import NothingToTrainError
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE
from inkwell.store import ACCEPTED, QUARANTINED, TRAINED, SampleStore
from tests.trainer.conftest import MnistArrays, upload
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

pytestmark = pytest.mark.slow


def test_enough_uploads_trigger_a_retrain_that_registers_a_canary_with_its_tags(
    registered_base: str, store: SampleStore, mnist: MnistArrays
) -> None:
    ids = upload(store, "alice", mnist.test_images[:40], mnist.test_labels[:40])
    settings = TrainerSettings()
    worker = Worker(Retrainer(settings, store=store), settings)

    outcome = worker.poll_once()

    assert outcome is not None and outcome.status == "passed", outcome
    info = Registry(settings).get_version("inkwell-digits", CANARY)
    assert info.version == outcome.version != registered_base
    tags = info.tags
    assert tags["validation_status"] == "passed"
    assert tags["complete"] == "true"
    assert tags["trigger"] == "min_new_samples"
    assert tags["parent_version"] == registered_base
    assert tags["watermark"] == str(max(ids))
    assert int(tags["buffer.size"]) == 500
    assert int(tags["buffer.from_users"]) >= 1
    for key in ("forgetting", "backward_transfer", "peak_rss_bytes", "optimizer", "lr"):
        assert key in tags
    assert Registry(settings).get_version("inkwell-digits", STABLE).version == registered_base
    retrainer = worker.retrainer
    assert retrainer.state.watermark() == max(ids)
    assert {s.state for s in store.by_ids(ids)} <= {TRAINED, QUARANTINED}
    assert retrainer.state.last_job().status == "done"
    # the run has the sample ids (watermark), the buffer statistics and nested HPO trials
    client = MlflowClient(settings.resolved_tracking_uri)
    run = client.get_run(info.run_id)
    assert run.data.params["watermark"] == str(max(ids))
    assert run.data.params["augment_policy"] == "affine"
    assert "forgetting" in run.data.metrics and "peak_rss_bytes" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(info.run_id)}
    assert {"samples.json", "buffer_stats.json", "gate.json", "hpo.json"} <= artifacts
    trials = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{info.run_id}'"
    )
    assert len(trials) == 2
    # the buffer was recorded with the version and the next retrain starts from it
    buffer = retrainer.buffer_for(info)
    assert buffer.stats()["from_users"] == int(tags["buffer.from_users"])


def test_retrain_with_nothing_pending_says_so(registered_base: str, store: SampleStore) -> None:
    with pytest.raises(NothingToTrainError, match="Upload labelled samples"):
        Retrainer(TrainerSettings(), store=store).retrain("test")


def test_a_poisoned_batch_is_quarantined_and_counted(
    registered_base: str, store: SampleStore, mnist: MnistArrays
) -> None:
    honest = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    shuffled = np.random.default_rng(0).permutation(mnist.test_labels[200:232])
    poisoned = upload(store, "mallory", mnist.test_images[200:232], shuffled)
    retrainer = Retrainer(TrainerSettings(), store=store)

    outcome = retrainer.retrain("test")

    states = {s.id: (s.state, s.reason) for s in store.by_ids(poisoned)}
    wrong = [
        i
        for i, label in zip(poisoned, shuffled, strict=True)
        if label != mnist.test_labels[200 + poisoned.index(i)]
    ]
    assert all(states[i][0] == QUARANTINED for i in wrong)
    assert {states[i][1] for i in wrong} <= {"label_conflict", "user_disagreement"}
    assert sum(s.state == TRAINED for s in store.by_ids(honest)) >= 28
    assert outcome.quarantined.get("user_disagreement", 0) + outcome.quarantined.get(
        "label_conflict", 0
    ) >= len(wrong)
    metrics = retrainer.metrics.render().decode()
    assert 'inkwell_trainer_quarantined_samples_total{reason="user_disagreement"}' in metrics
    run = MlflowClient(retrainer.settings.resolved_tracking_uri).get_run(outcome.run_id)
    assert run.data.metrics["quarantined_total"] >= len(wrong)


def test_a_batch_that_is_all_quarantined_registers_no_version(
    registered_base: str, store: SampleStore, mnist: MnistArrays
) -> None:
    # every label off by one: the user's labels disagree with the model on nearly every sample
    wrong = (mnist.test_labels[300:348] + 1) % 10
    poisoned = upload(store, "mallory", mnist.test_images[300:348], wrong)
    settings = TrainerSettings()
    retrainer = Retrainer(settings, store=store)
    registry = Registry(settings)
    versions_before = registry.list_versions("inkwell-digits")

    outcome = retrainer.retrain("test")

    assert outcome.status == "quarantined" and outcome.version is None, outcome
    assert "nothing was trained" in outcome.reasons[0]
    assert sum(outcome.quarantined.values()) == len(poisoned)
    assert registry.list_versions("inkwell-digits") == versions_before
    assert registry.find_version("inkwell-digits", CANARY) is None
    assert registry.get_version("inkwell-digits", STABLE).version == registered_base
    assert {s.state for s in store.by_ids(poisoned)} == {QUARANTINED}
    assert retrainer.state.watermark() == max(poisoned)  # handled: not retried forever
    job = retrainer.state.last_job()
    assert job.status == "done" and job.outcome == "quarantined" and job.version is None
    metrics = retrainer.metrics.render().decode()
    assert 'inkwell_trainer_retrains_total{outcome="quarantined"} 1.0' in metrics
    run = MlflowClient(settings.resolved_tracking_uri).get_run(outcome.run_id)
    assert run.data.tags["validation_status"] == "quarantined"
    with pytest.raises(NothingToTrainError):  # and the batch does not trigger again
        retrainer.retrain("test")


def test_a_damaged_candidate_is_recorded_as_rejected_and_not_aliased(
    registered_base: str, store: SampleStore, mnist: MnistArrays, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no replay, no distillation and a learning rate far too high: the candidate is wrecked
    for key, value in {
        "REPLAY_RATIO": "0",
        "DISTILL_WEIGHT": "0",
        "HPO_TRIALS": "1",
        "DEFAULT_OPTIMIZER": "sgd",
        "DEFAULT_LR": "5",
        "GATE_MAX_OLD_DROP_PP": "0.3",
    }.items():
        monkeypatch.setenv(f"INKWELL_TRAINER_{key}", value)
    ids = upload(store, "alice", mnist.test_images[:32], mnist.test_labels[:32])
    retrainer = Retrainer(TrainerSettings(), store=store)

    outcome = retrainer.retrain("test")

    assert outcome.status == "rejected"
    registry = Registry(retrainer.settings)
    info = registry.get_version("inkwell-digits", outcome.version)
    assert info.tags["validation_status"] == "rejected"
    assert "MNIST test accuracy fell" in info.tags["validation_reasons"]
    assert info.tags["complete"] == "true" and CANARY not in info.aliases
    assert registry.find_version("inkwell-digits", CANARY) is None
    reasons = {s.reason for s in store.by_ids(ids) if s.state == QUARANTINED}
    assert (
        reasons <= {"gate_rejected", "label_conflict", "duplicate"} and "gate_rejected" in reasons
    )
    assert not [s for s in store.by_ids(ids) if s.state == ACCEPTED]
    assert retrainer.state.watermark() == max(ids)
