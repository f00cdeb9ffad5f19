"""Delayed labels across router replicas: predictions wait in the shared database.

Two routers here are two apps on two servers, sharing nothing but the database (SQLite and real
PostgreSQL through the `database_url` fixture): predictions go through router A, labels through
router B, and the online accuracy summed over both equals one router's on the same traffic.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from router.app import create_app
from router.feedback import Served
from router.pending import PendingPredictions
from router.settings import RouterSettings
from tests.router.router_fakes import digit_of, serve_in_thread
from tests.router.test_router_proxy import image, metric, predict, users_on

ONLINE = "inkwell_router_online_predictions_total"


def test_pending_table_never_holds_more_than_its_capacity(database_url):
    pending = PendingPredictions(database_url, capacity=20, ttl_s=3600)
    try:
        for i in range(50):
            pending.remember(f"img-{i}", Served("stable", "1", str(i % 10)))
            if i % 7 == 0:
                pending.flush()
        pending.flush()
        assert len(pending) == 20
        assert pending.take("img-0") == []  # the oldest fell out
        assert pending.take("img-49") == [Served("stable", "1", "9")]
    finally:
        pending.dispose()


def test_pending_predictions_expire_after_their_ttl(database_url):
    pending = PendingPredictions(database_url, capacity=100, ttl_s=0.2)
    try:
        pending.remember("old", Served("stable", "1", "3"))
        pending.flush()
        time.sleep(0.3)
        pending.remember("new", Served("stable", "1", "4"))
        pending.flush()
        assert pending.take("old") == []
        assert pending.take("new") == [Served("stable", "1", "4")]
    finally:
        pending.dispose()


def test_a_label_on_another_replica_scores_each_prediction_once(database_url):
    a = PendingPredictions(database_url, capacity=100, ttl_s=3600)
    b = PendingPredictions(database_url, capacity=100, ttl_s=3600)
    try:
        a.remember("x", Served("stable", "1", "7"))
        a.remember("x", Served("canary", "2", "1"))
        a.remember("x", Served("canary", "2", "2"))  # the same model again: the newest counts
        assert b.take("x") == []  # not written yet: A flushes every served_flush_s
        a.flush()
        assert sorted(b.take("x"), key=lambda s: s.variant) == [
            Served("canary", "2", "2"),
            Served("stable", "1", "7"),
        ]
        assert a.take("x") == [] and b.take("x") == []
    finally:
        a.dispose()
        b.dispose()


@contextmanager
def routers(
    home: Path, database_url: str, stable_url: str, canary_url: str, count: int
) -> Iterator[list[httpx.Client]]:
    """`count` routers on one database at a 50 % static split, each ready with both versions."""
    with ExitStack() as stack:
        clients = []
        for i in range(count):
            settings = RouterSettings(
                home=home / f"router-{i}",
                database_url=database_url,
                stable_url=stable_url,
                canary_url=canary_url,
                controller=False,
                canary_weight=50,
                probe_interval_s=0.1,
                served_flush_s=0.1,
                admin_api_key="pending-test-admin-key-0123456789",
            )
            url = stack.enter_context(serve_in_thread(create_app(settings)))
            client = stack.enter_context(httpx.Client(base_url=url))
            deadline = time.monotonic() + 30
            while True:
                ready = client.get("/readyz")
                if ready.status_code == 200 and ready.json()["served_versions"]["canary"]:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"router not ready: {ready.text}")
                time.sleep(0.05)
            clients.append(client)
        yield clients


def run_traffic(predict_via: httpx.Client, label_via: httpx.Client, flushed: PendingPredictions):
    """16 predictions (8 users on each side of the split) through one router, labels through
    the other once the predictions are in the database."""
    users = users_on("stable", 50, 8) + users_on("canary", 50, 8)
    for i, user in enumerate(users):
        assert predict(predict_via, image(i), **{"X-User-Id": user}).status_code == 200
    deadline = time.monotonic() + 10
    while len(flushed) < len(users):  # A writes its served predictions every served_flush_s
        assert time.monotonic() < deadline, "the predictions never reached the database"
        time.sleep(0.05)
    for i in range(len(users)):
        upload = label_via.post(
            "/v1/samples",
            files={"image": ("d.png", image(i), "image/png")},
            data={"label": str(digit_of(image(i))), "user_id": "labeller"},
        )
        assert upload.status_code == 201


def online(clients: list[httpx.Client]) -> dict[tuple[str, str], float]:
    """Online predictions by (variant, correct), summed over replicas as Prometheus does."""
    return {
        (variant, correct): sum(
            metric(c, ONLINE, variant=variant, correct=correct) for c in clients
        )
        for variant in ("stable", "canary")
        for correct in ("true", "false")
    }


def test_two_routers_give_the_single_router_online_accuracy(
    tmp_path, database_url, stable_service, canary_service
):
    canary, _ = canary_service
    canary.mode = "wrong"  # every canary answer is off by one: accuracy 1.0 vs 0.0
    reader = PendingPredictions(database_url, capacity=100, ttl_s=3600)
    try:
        with routers(tmp_path / "two", database_url, stable_service[1], canary_service[1], 2) as (
            a,
            b,
        ):
            run_traffic(a, b, reader)
            two = online([a, b])
        assert reader.take("anything") == [] and len(reader) == 0  # every label matched
        with routers(tmp_path / "one", database_url, stable_service[1], canary_service[1], 1) as (
            single,
        ):
            run_traffic(single, single, reader)
            one = online([single])
    finally:
        reader.dispose()
    assert one == {
        ("stable", "true"): 8,
        ("stable", "false"): 0,
        ("canary", "true"): 0,
        ("canary", "false"): 8,
    }
    assert two == one
