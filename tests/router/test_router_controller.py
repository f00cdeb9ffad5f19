"""The rollout state machine with an in-memory registry and programmable metrics."""

from __future__ import annotations

import asyncio
import math

import pytest

from inkwell.errors import ConflictError
from router import metrics as m
from router.analysis import Sample
from router.controller import RolloutController
from router.metrics import RouterMetrics
from router.settings import RouterSettings
from router.state import Phase, RolloutStore

INTERVAL = 10.0


class FakeAliases:
    """The registry's alias/tag operations, in memory."""

    def __init__(self, stable: str | None = "1", canary: str | None = None) -> None:
        self.aliases: dict[str, str] = {}
        if stable:
            self.aliases["stable"] = stable
        if canary:
            self.aliases["canary"] = canary
        self.tags: dict[str, dict[str, str]] = {}

    def alias_version(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def set_alias(self, alias: str, version: str) -> None:
        self.aliases[alias] = version

    def delete_alias(self, alias: str) -> None:
        self.aliases.pop(alias, None)

    def tag(self, version: str, tags: dict[str, str]) -> None:
        self.tags.setdefault(version, {}).update(tags)


class FakeSource:
    name = "fake"

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    async def observe(self) -> None:
        return None

    async def windows(self, *seconds: float) -> list[list[Sample]]:
        return [list(self.samples) for _ in seconds]

    async def aclose(self) -> None:
        return None


class FakeServed:
    def __init__(self) -> None:
        self.versions: dict[str, str | None] = {"stable": "1", "canary": "2"}

    def served_version(self, variant: str) -> str | None:
        return self.versions[variant]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def traffic(variant: str, version: str, n: int, errors: int = 0, latency: float = 0.005):
    labels = {"variant": variant, "model_version": version}
    out = [
        Sample(f"{m.UPSTREAM_REQUESTS}_total", {**labels, "outcome": "ok"}, n - errors),
        Sample(f"{m.UPSTREAM_REQUESTS}_total", {**labels, "outcome": "error"}, errors),
    ]
    for le in (*m.LATENCY_BUCKETS, math.inf):
        out.append(
            Sample(f"{m.UPSTREAM_LATENCY}_bucket", {**labels, "le": str(le)}, n * (latency <= le))
        )
    return out


def healthy(canary: str = "2") -> list[Sample]:
    return traffic("canary", canary, 100) + traffic("stable", "1", 900)


class Harness:
    def __init__(self, tmp_path, aliases: FakeAliases | None = None, **settings) -> None:
        self.settings = RouterSettings(
            home=tmp_path,
            analysis_interval_s=INTERVAL,
            registry_poll_s=0.001,
            reload_timeout_s=30,
            min_requests=20,
            **settings,
        )
        self.aliases = aliases or FakeAliases(canary="2")
        self.source = FakeSource()
        self.served = FakeServed()
        self.clock = Clock()
        self.store = RolloutStore(self.settings.resolved_database_url)
        self.controller = self.replica()

    def replica(self) -> RolloutController:
        return RolloutController(
            self.settings,
            self.store,
            self.aliases,
            self.source,
            RouterMetrics(),
            self.served,
            clock=self.clock,
        )

    def tick(self, controller: RolloutController | None = None):
        return asyncio.run((controller or self.controller).tick())

    def later(self, seconds: float = INTERVAL):
        self.clock.now += seconds
        return self.tick()


def test_good_canary_goes_through_every_step_and_is_promoted(tmp_path):
    h = Harness(tmp_path)
    h.source.samples = healthy()
    state = h.tick()
    assert (state.phase, state.weight, state.canary_version) == (Phase.CANARY, 5, "2")
    weights = [state.weight]
    for _ in range(3):
        state = h.later()
        weights.append(state.weight)
    assert weights == [5, 25, 50, 100]
    state = h.later()
    assert state.phase is Phase.PROMOTING
    assert h.aliases.aliases == {"stable": "2", "canary": "2"}  # canary users stay on v2
    assert h.tick().phase is Phase.PROMOTING  # the stable service has not reloaded yet
    h.served.versions["stable"] = "2"
    state = h.tick()
    assert (state.phase, state.weight) == (Phase.PROMOTED, 0)
    assert h.aliases.aliases == {"stable": "2"}
    assert h.aliases.tags["2"]["rollout_status"] == "promoted"


def test_step_does_not_advance_before_its_interval(tmp_path):
    h = Harness(tmp_path)
    h.source.samples = healthy()
    h.tick()
    assert h.later(INTERVAL / 2).weight == 5
    assert h.later(INTERVAL / 2).weight == 25


def test_failing_canary_is_rolled_back_at_once_with_the_reason(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    h.source.samples = traffic("canary", "2", 30, errors=12) + traffic("stable", "1", 600)
    state = h.later(1.0)  # long before the end of the interval
    assert (state.phase, state.weight) == (Phase.ROLLED_BACK, 0)
    assert "canary" not in h.aliases.aliases and h.aliases.aliases["stable"] == "1"
    assert "error rate" in h.aliases.tags["2"]["rolled_back"]
    assert h.aliases.tags["2"]["rollout_status"] == "rolled_back"
    assert state.analysis is not None and state.analysis["result"] == "fail"


def test_slow_canary_is_rolled_back(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    h.source.samples = traffic("canary", "2", 40, latency=0.4) + traffic("stable", "1", 800)
    assert h.later(2.0).phase is Phase.ROLLED_BACK
    assert "p95" in h.aliases.tags["2"]["rolled_back"]


def test_not_enough_traffic_holds_the_step(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    h.source.samples = traffic("canary", "2", 5) + traffic("stable", "1", 100)
    for _ in range(3):
        state = h.later()
        assert (state.phase, state.weight) == (Phase.CANARY, 5)
    assert h.controller.last_verdict is not None
    assert "waiting for data" in h.controller.last_verdict.reason()


def test_paused_rollout_makes_no_decision_until_resumed(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    assert asyncio.run(h.controller.pause()).phase is Phase.PAUSED
    h.source.samples = traffic("canary", "2", 30, errors=30) + traffic("stable", "1", 600)
    assert h.later().phase is Phase.PAUSED
    h.source.samples = healthy()
    state = asyncio.run(h.controller.resume())
    assert (state.phase, state.weight) == (Phase.CANARY, 5)
    assert h.later(INTERVAL - 1).weight == 5  # the interval restarted at resume
    assert h.later(1).weight == 25


def test_manual_promote_skips_the_remaining_steps(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    state = asyncio.run(h.controller.promote("admin@test"))
    assert state.phase is Phase.PROMOTING
    h.served.versions["stable"] = "2"
    assert h.tick().phase is Phase.PROMOTED
    promoting = [e for e in h.store.events("inkwell-digits") if e.to_phase == "promoting"]
    assert [e.actor for e in promoting] == ["admin@test"]


def test_manual_rollback_during_promotion_restores_the_old_stable(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    asyncio.run(h.controller.promote())
    assert h.aliases.aliases["stable"] == "2"
    state = asyncio.run(h.controller.rollback("operator saw bad cheques"))
    assert state.phase is Phase.ROLLED_BACK
    assert h.aliases.aliases == {"stable": "1"}
    assert h.aliases.tags["2"]["rolled_back"] == "operator saw bad cheques"


def test_manual_actions_in_the_wrong_phase_are_conflicts(tmp_path):
    h = Harness(tmp_path, aliases=FakeAliases())
    assert h.tick().phase is Phase.IDLE
    for action in (h.controller.promote, h.controller.pause, h.controller.resume):
        with pytest.raises(ConflictError):
            asyncio.run(action())
    with pytest.raises(ConflictError):
        asyncio.run(h.controller.rollback("x"))


def test_canary_alias_removed_by_hand_ends_the_rollout(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    h.aliases.delete_alias("canary")
    state = h.later(1)
    assert state.phase is Phase.ROLLED_BACK
    assert "removed outside" in state.reason
    assert "2" not in h.aliases.tags


def test_newer_canary_supersedes_the_running_one(tmp_path):
    h = Harness(tmp_path)
    first = h.tick()
    h.aliases.set_alias("canary", "3")
    state = h.later(1)
    assert (state.phase, state.canary_version, state.weight) == (Phase.CANARY, "3", 5)
    assert state.rollout_id == first.rollout_id + 1


def test_finished_version_is_not_rolled_out_again_unless_the_alias_is_set_again(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    asyncio.run(h.controller.rollback("bad"))
    assert h.later(1).phase is Phase.ROLLED_BACK
    h.aliases.set_alias("canary", "2")  # someone retries the version on purpose
    state = h.later(1)
    assert (state.phase, state.canary_version, state.rollout_id) == (Phase.CANARY, "2", 2)


def test_canary_equal_to_stable_is_not_a_rollout(tmp_path):
    h = Harness(tmp_path, aliases=FakeAliases(stable="4", canary="4"))
    assert h.tick().phase is Phase.IDLE


def test_promotion_finishes_with_a_note_if_stable_never_reloads(tmp_path):
    h = Harness(tmp_path)
    h.tick()
    asyncio.run(h.controller.promote())
    state = h.later(31)
    assert state.phase is Phase.PROMOTED
    assert "did not report version 2" in state.reason


def test_canary_service_that_never_loads_the_version_is_rolled_back(tmp_path):
    h = Harness(tmp_path, canary_ready_timeout_s=60)
    h.served.versions["canary"] = "1"  # still the old model: the new one does not load
    h.tick()
    assert h.later(59).phase is Phase.CANARY
    state = h.later(2)
    assert state.phase is Phase.ROLLED_BACK
    assert "did not serve version 2" in h.aliases.tags["2"]["rolled_back"]


def test_two_replicas_make_each_transition_once(tmp_path):
    h = Harness(tmp_path)
    other = h.replica()
    h.source.samples = healthy()
    h.tick()
    h.tick(other)
    for _ in range(4):
        h.clock.now += INTERVAL
        h.tick(other)
        h.tick()
    h.served.versions["stable"] = "2"
    h.tick(other)
    h.tick()
    events = list(reversed(h.store.events("inkwell-digits")))
    assert [(e.to_phase, e.weight) for e in events] == [
        ("canary", 5),
        ("canary", 5),  # the canary service serves the version: the first step's clock starts
        ("canary", 25),
        ("canary", 50),
        ("canary", 100),
        ("promoting", 100),
        ("promoted", 0),
    ]
