"""Property-based fuzzing of the router (issue 18): its own admin routes and the service routes
it proxies, in front of fake upstreams. No 5xx, ever; every 4xx is the error map's shape.
`INKWELL_FUZZ_EXAMPLES` sets the number of requests (see tests/fuzz.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from router.app import create_app
from router.cli import forwarding_options
from router.settings import RouterSettings
from service.main import create_app as create_service_app
from service.settings import ServiceSettings
from tests.fuzz import fuzz, operations
from tests.router.router_fakes import FakeService, serve_in_thread

pytestmark = pytest.mark.slow
ADMIN_KEY = "router-admin-key-for-tests-0123456789"
# what the fake upstreams serve, so that every 4xx comes from the router or the real contract
PROXIED = ("/v1/digits/predict", "/v1/samples", "/v1/samples/stats")


@pytest.fixture
def router_client(
    tmp_path: Path,
    stable_service: tuple[FakeService, str],
    canary_service: tuple[FakeService, str],
) -> Iterator[httpx.Client]:
    """A real router (uvicorn in a thread) in front of a stable and a canary fake."""
    settings = RouterSettings(
        home=tmp_path,
        stable_url=stable_service[1],
        canary_url=canary_service[1],
        controller=False,
        probe_interval_s=0.1,
        admin_api_key=SecretStr(ADMIN_KEY),
    )
    app = create_app(settings)
    with (
        serve_in_thread(app, **forwarding_options(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def test_no_generated_request_gets_a_server_error(
    router_client: httpx.Client, tmp_path: Path
) -> None:
    router_app = create_app(RouterSettings(home=tmp_path / "schema", controller=False))
    service_app = create_service_app(ServiceSettings(home=tmp_path / "service"))
    ops = operations(router_app.fastapi.openapi()) + operations(
        service_app.openapi(), keep=lambda path: path in PROXIED, proxied=True
    )
    seen = fuzz(router_client, ops, {"X-API-Key": [ADMIN_KEY]})
    print(sorted(seen.items()))
