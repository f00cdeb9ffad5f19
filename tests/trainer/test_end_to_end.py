"""End to end: uploads through the service's POST /v1/samples become a registered canary."""

from __future__ import annotations

import numpy as np
import pytest

from bench.customers import make_uploader
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE
from inkwell.store import ACCEPTED, SampleStore
from tests.trainer.conftest import MnistArrays, png_bytes
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_uploads_through_the_service_become_a_canary_with_tags(
    registered_base: str, store: SampleStore, mnist: MnistArrays
) -> None:
    settings = TrainerSettings()
    upload, path, close = make_uploader(settings)
    assert path.startswith("POST /v1/samples")
    try:
        for i in range(40):
            image = np.asarray(mnist.test_images[1000 + i])
            upload("dana", int(mnist.test_labels[1000 + i]), png_bytes(image), f"k{i}")
        upload("dana", int(mnist.test_labels[1000]), png_bytes(mnist.test_images[1000]), "k0")
    finally:
        close()
    pending = store.after(0, states=(ACCEPTED,))
    assert len(pending) == 40  # the repeated idempotency key stored nothing new
    worker = Worker(Retrainer(settings, store=store), settings)

    outcome = worker.poll_once()

    assert outcome is not None
    assert outcome.status == "passed", outcome.reasons
    registry = Registry(settings)
    canary = registry.get_version(settings.model_name, CANARY)
    assert canary.version == outcome.version
    assert canary.tags["validation_status"] == "passed"
    assert canary.tags["complete"] == "true"
    assert canary.tags["watermark"] == str(max(s.id for s in pending))
    assert canary.tags["parent_version"] == registered_base
    assert registry.get_version(settings.model_name, STABLE).version == registered_base
    assert not store.after(0, states=(ACCEPTED,))
