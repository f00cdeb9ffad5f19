"""Rollout state in the database: optimistic concurrency between replicas, audit trail.

Each test runs on SQLite and on a real PostgreSQL cluster (the `database_url` fixture).
"""

from __future__ import annotations

import threading

from router.state import Phase, RolloutStore


def test_new_model_starts_idle(database_url):
    store = RolloutStore(database_url)
    state = store.load("digits")
    assert (state.phase, state.version, state.weight) == (Phase.IDLE, 0, 0.0)


def test_only_one_replica_wins_a_transition(database_url):
    url = database_url
    a, b = RolloutStore(url), RolloutStore(url)
    read_a, read_b = a.load("digits"), b.load("digits")
    won_a = a.swap(read_a, read_a.evolve(phase=Phase.CANARY, weight=5), actor="a")
    won_b = b.swap(read_b, read_b.evolve(phase=Phase.CANARY, weight=25), actor="b")
    assert won_a is not None and won_b is None
    assert b.load("digits").weight == 5


def test_concurrent_swaps_apply_exactly_once(database_url):
    url = database_url
    stores = [RolloutStore(url) for _ in range(4)]
    start = stores[0].load("digits")
    wins: list[str] = []
    barrier = threading.Barrier(len(stores))

    def attempt(i: int) -> None:
        barrier.wait()
        if stores[i].swap(start, start.evolve(phase=Phase.CANARY, weight=i), actor=str(i)):
            wins.append(str(i))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert stores[0].load("digits").version == 1


def test_transitions_are_recorded_with_actor_and_reason(database_url):
    store = RolloutStore(database_url)
    s0 = store.load("digits")
    s1 = store.swap(
        s0,
        s0.evolve(phase=Phase.CANARY, weight=5, canary_version="2", reason="new canary"),
        actor="replica-a",
    )
    assert s1 is not None
    s2 = store.swap(
        s1, s1.evolve(phase=Phase.ROLLING_BACK, weight=0, reason="5xx"), actor="admin@x"
    )
    assert s2 is not None
    events = store.events("digits")
    assert [(e.from_phase, e.to_phase, e.actor) for e in events] == [
        ("canary", "rolling_back", "admin@x"),
        ("idle", "canary", "replica-a"),
    ]
    assert events[0].reason == "5xx"


def test_analysis_round_trips_as_json(database_url):
    store = RolloutStore(database_url)
    s0 = store.load("digits")
    store.swap(s0, s0.evolve(analysis={"result": "pass", "checks": []}), actor="a")
    assert store.load("digits").analysis == {"result": "pass", "checks": []}
