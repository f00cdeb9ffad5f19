"""Property-based fuzzing of every service route (issue 18): no 5xx, ever; every 4xx is the
error map's shape. `INKWELL_FUZZ_EXAMPLES` sets the number of requests (see tests/fuzz.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.fuzz import fuzz, operations
from tests.service.conftest import API_KEY, TrainedRegistry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_client(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """A service with both models loaded (the shipped ones, seeded into a fresh home)."""
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    settings = trained_registry.settings(home=home, seed_shipped=True, poll_interval_s=60)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/models/inkwell-digits/ready").status_code == 200
        yield client


def test_no_generated_request_gets_a_server_error(full_client: TestClient) -> None:
    ops = operations(full_client.app.openapi())  # type: ignore[attr-defined]
    versions = full_client.get("/v2/models/inkwell-digits").json()["versions"]
    known = {"name": ["inkwell-digits"], "version": versions, "X-API-Key": [API_KEY]}
    seen = fuzz(full_client, ops, known)
    print(sorted(seen.items()))
