"""`PUT /admin/canary/weight`: the controller-less split set from outside (an Argo Rollouts step
or an operator), checked, shared by every replica through the database, kept across restarts,
exported as a metric and refused while the rollout controller owns the weight."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from router import metrics as m
from router.app import create_app
from router.settings import RouterSettings
from router.state import Event, RolloutStore
from tests.harness import free_port
from tests.router.router_fakes import FakeService, serve_in_thread
from tests.router.test_router_controller import FakeAliases, FakeSource
from tests.router.test_router_proxy import ADMIN_KEY, image, metric, predict, router

ADMIN = {"X-API-Key": ADMIN_KEY}
PATH = "/admin/canary/weight"


def set_weight(client: httpx.Client, weight: object) -> httpx.Response:
    return client.put(PATH, json={"weight": weight}, headers=ADMIN)


def variants_answering(client: httpx.Client, users: int = 40) -> set[str]:
    return {
        predict(client, image(u), **{"X-User-Id": f"user-{u}"}).json()["variant"]
        for u in range(users)
    }


def test_put_weight_moves_the_split_and_the_metric(tmp_path, stable_service, canary_service):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=0) as client:
        assert client.get(PATH, headers=ADMIN).json() == {
            "weight": 0.0,
            "previous": None,
            "source": "settings",
        }
        assert variants_answering(client) == {"stable"}
        answer = set_weight(client, 100)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"weight": 100.0, "previous": 0.0, "source": "admin"}
        assert variants_answering(client) == {"canary"}
        assert metric(client, m.CANARY_WEIGHT) == 100
        assert set_weight(client, 20).json()["previous"] == 100.0
        assert metric(client, m.CANARY_WEIGHT) == 20


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"weight": -1}, "greater than or equal to 0"),
        ({"weight": 100.5}, "less than or equal to 100"),
        ({"weight": "half"}, "weight"),
        ({}, "weight"),
    ],
)
def test_weight_outside_0_to_100_is_a_422_that_says_what_is_wrong(
    tmp_path, stable_service, canary_service, body, says
):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=5) as client:
        answer = client.put(PATH, json=body, headers=ADMIN)
        assert answer.status_code == 422, answer.text
        assert says in answer.json()["message"]
        assert client.get(PATH, headers=ADMIN).json()["weight"] == 5.0


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "not-the-admin-key-0123456789"}])
def test_setting_the_weight_needs_the_admin_key(tmp_path, stable_service, canary_service, headers):
    with router(tmp_path, stable_service[1], canary_service[1]) as client:
        answer = client.put(PATH, json={"weight": 50}, headers=headers)
        assert answer.status_code == 401
        assert client.get(PATH, headers=ADMIN).json()["weight"] == 0.0


def test_weight_survives_a_router_restart_and_is_in_the_audit_trail(
    tmp_path, stable_service, canary_service
):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=0) as client:
        assert set_weight(client, 50).status_code == 200
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=0) as client:
        assert client.get(PATH, headers=ADMIN).json() == {
            "weight": 50.0,
            "previous": None,
            "source": "admin",
        }
        assert metric(client, m.CANARY_WEIGHT) == 50
    store_events = _events(tmp_path)
    assert store_events[0].weight == 50 and store_events[0].actor.startswith("admin@")
    assert "set to 50 % (was unset)" in store_events[0].reason


def _events(home: Path) -> list[Event]:
    store = RolloutStore(f"sqlite:///{home / 'inkwell.db'}")
    try:
        return store.events("inkwell-digits")
    finally:
        store.dispose()


def test_a_weight_set_on_one_replica_reaches_the_others(tmp_path, stable_service, canary_service):
    urls = (stable_service[1], canary_service[1])
    with (
        router(tmp_path, *urls, state_refresh_s=0.1) as first,
        router(tmp_path, *urls, state_refresh_s=0.1) as second,
    ):
        assert set_weight(first, 20).status_code == 200
        deadline = time.monotonic() + 10
        while second.get(PATH, headers=ADMIN).json()["weight"] != 20.0:
            assert time.monotonic() < deadline, "the second replica never saw the weight"
            time.sleep(0.05)
        assert metric(second, m.CANARY_WEIGHT) == 20


def test_weight_is_refused_while_the_rollout_controller_owns_it(tmp_path):
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    with serve_in_thread(stable.app()) as stable_url, serve_in_thread(canary.app()) as canary_url:
        settings = RouterSettings(
            home=tmp_path, stable_url=stable_url, canary_url=canary_url, admin_api_key=ADMIN_KEY
        )
        app = create_app(settings, source=FakeSource(), aliases=FakeAliases(canary="2"))
        with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
            answer = set_weight(client, 50)
            status = client.get(PATH, headers=ADMIN).json()
    assert answer.status_code == 409
    assert answer.json()["code"] == "controller_enabled"
    assert "INKWELL_ROUTER_CONTROLLER=false" in answer.json()["message"]
    assert status["source"] == "controller"


def test_with_its_database_down_the_router_starts_on_the_setting_and_refuses_to_store(
    tmp_path, stable_service, canary_service
):
    dead = f"postgresql+psycopg://inkwell:unused@127.0.0.1:{free_port()}/inkwell"
    started = time.monotonic()
    with router(
        tmp_path,
        stable_service[1],
        canary_service[1],
        canary_weight=5,
        database_url=dead,
        served_store="memory",
    ) as client:
        assert time.monotonic() - started < 15
        assert client.get(PATH, headers=ADMIN).json()["source"] == "settings"
        answer = set_weight(client, 50)
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        assert "cannot be stored for every replica" in answer.json()["message"]
        assert client.get(PATH, headers=ADMIN).json()["weight"] == 5.0
