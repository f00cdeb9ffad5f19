"""Property-based fuzzing of every service route (issue 18): no 5xx, ever; every 4xx is the
error map's shape. `INKWELL_FUZZ_EXAMPLES` sets the number of requests (see tests/fuzz.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from service.main import create_app
from tests.fuzz import Body, Request, check, examples, fuzz, operations, send, v2_tensor_bodies
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


def test_no_well_formed_v2_request_gets_a_server_error(full_client: TestClient) -> None:
    """Past the parser: FP32 tensors with NaN, infinities, extremes, odd counts and outputs."""
    version = full_client.get("/v2/models/inkwell-digits").json()["versions"][0]
    paths = [
        "/v2/models/inkwell-digits/infer",
        f"/v2/models/inkwell-digits/versions/{version}/infer",
    ]

    @settings(max_examples=max(examples() // 10, 50), deadline=None, database=None)
    @given(st.sampled_from(paths), v2_tensor_bodies())
    def run(path: str, body: tuple[bytes, dict[str, str]]) -> None:
        content, headers = body
        request = Request("POST", path, headers, Body(content=content))
        response = send(full_client, request)
        seen[response.status_code] += 1
        check(request, response)

    seen: Counter[int] = Counter()
    run()
    print(seen)
    assert seen[200] > 0, seen  # the strategies reach inference, not only the parser
