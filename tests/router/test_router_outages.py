"""Outages behind and in front of the router (issue 18): a slow stable upstream under load and
slow clients (slowloris); health checks and other users keep answering within a bound."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.outage import slowloris
from tests.router.router_fakes import FakeService, serve_in_thread
from tests.router.test_router_proxy import both_clients, image, predict, router, users_on

pytestmark = pytest.mark.integration
__all__ = ["both_clients"]  # the fixture: each test runs with each upstream client

STABLE_TIMEOUT_S = 1.5


def test_a_slow_stable_and_slow_clients_leave_health_checks_and_canary_users_answering(
    tmp_path, both_clients
) -> None:
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    stable.mode, stable.delay_s = "slow", 10.0  # predictions hang; its readiness answers
    on_stable, on_canary = users_on("stable", 50, 16), users_on("canary", 50, 4)
    answers: list[tuple[int, str, float]] = []
    stop = threading.Event()
    with (
        # its hanging predictions are cancelled when the test ends, not waited for (10 s)
        serve_in_thread(stable.app(), timeout_graceful_shutdown=0.5) as stable_url,
        serve_in_thread(canary.app()) as canary_url,
        router(
            tmp_path, stable_url, canary_url, canary_weight=50, stable_timeout_s=STABLE_TIMEOUT_S
        ) as client,
    ):

        def stable_user(user: str) -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
                while not stop.is_set():
                    started = time.monotonic()
                    response = predict(own, image(1), **{"X-User-Id": user})
                    code = response.json().get("code", "") if response.status_code >= 400 else ""
                    answers.append((response.status_code, code, time.monotonic() - started))

        threads = [threading.Thread(target=stable_user, args=(u,)) for u in on_stable]
        probes: list[tuple[str, int, float]] = []
        with slowloris(str(client.base_url), connections=200) as slow:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 3 * STABLE_TIMEOUT_S
            while time.monotonic() < deadline:
                for what in ("/healthz", "/readyz", "canary"):
                    started = time.monotonic()
                    if what == "canary":
                        status = predict(client, image(2), **{"X-User-Id": on_canary[0]})
                    else:
                        status = client.get(what)
                    probes.append((what, status.status_code, time.monotonic() - started))
                time.sleep(0.05)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert slow.connected == 200
    assert probes and all(status == 200 for _, status, _ in probes), [
        p for p in probes if p[1] != 200
    ]
    assert max(took for _, _, took in probes) < 1.0, sorted(probes, key=lambda p: -p[2])[:5]
    # the hanging stable costs its own users a bounded wait and a clear error, never a hang
    assert answers and {(status, code) for status, code, _ in answers} <= {
        (502, "upstream_unavailable"),
        (504, "upstream_timeout"),
    }, answers
    assert max(took for _, _, took in answers) < STABLE_TIMEOUT_S + 1.0, answers
