"""Property-based fuzzing of the trainer's admin API (issue 18): no 5xx, ever; every 4xx is the
error map's shape. `INKWELL_FUZZ_EXAMPLES` sets the number of requests (see tests/fuzz.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inkwell.store import SampleStore
from tests.fuzz import fuzz, operations
from trainer.app import create_app
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

pytestmark = pytest.mark.slow
KEY = "trainer-admin-secret-0123456789"


@pytest.fixture
def client(
    trainer_home: object, monkeypatch: pytest.MonkeyPatch, store: SampleStore
) -> Iterator[TestClient]:
    """The trainer app with an admin key; nothing uploaded, so no retrain can start."""
    monkeypatch.setenv("INKWELL_TRAINER_ADMIN_API_KEY", KEY)
    monkeypatch.setenv("INKWELL_TRAINER_MIN_NEW_SAMPLES", "1000")
    settings = TrainerSettings()
    worker = Worker(Retrainer(settings, store=store), settings)
    with TestClient(create_app(settings, worker=worker, poll=False)) as test_client:
        yield test_client


def test_no_generated_request_gets_a_server_error(client: TestClient) -> None:
    ops = operations(client.app.openapi())  # type: ignore[attr-defined]
    seen = fuzz(client, ops, {"x-api-key": [KEY]})
    print(sorted(seen.items()))
