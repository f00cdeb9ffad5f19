"""The retrain pipeline against a real registry, store and MNIST (tiny base model)."""

from __future__ import annotations

import pytest

from inkwell.errors import NothingToTrainError
from inkwell.registry import Registry
from inkwell.settings import CANARY
from inkwell.store import QUARANTINED, TRAINED, SampleStore
from tests.trainer.conftest import MnistArrays, upload
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings


def test_retrain_registers_a_canary_with_its_tags(
    registered_base: str, store: SampleStore, mnist: MnistArrays
) -> None:
    ids = upload(store, "alice", mnist.test_images[:40], mnist.test_labels[:40])
    retrainer = Retrainer(TrainerSettings(), store=store)

    outcome = retrainer.retrain("test")

    assert outcome.status == "passed", outcome.reasons
    info = Registry(retrainer.settings).get_version("inkwell-digits", CANARY)
    assert info.version == outcome.version != registered_base
    tags = info.tags
    assert tags["validation_status"] == "passed"
    assert tags["complete"] == "true"
    assert tags["parent_version"] == registered_base
    assert tags["watermark"] == str(max(ids))
    assert int(tags["buffer.size"]) == 500
    assert int(tags["buffer.from_users"]) >= 1
    for key in ("forgetting", "backward_transfer", "peak_rss_bytes", "optimizer", "lr"):
        assert key in tags
    assert retrainer.state.watermark() == max(ids)
    states = {s.state for s in store.by_ids(ids)}
    assert states <= {TRAINED, QUARANTINED} and TRAINED in states
    assert retrainer.state.last_job().status == "done"


def test_retrain_with_nothing_pending_says_so(registered_base: str, store: SampleStore) -> None:
    with pytest.raises(NothingToTrainError, match="Upload labelled samples"):
        Retrainer(TrainerSettings(), store=store).retrain("test")
