"""The cheque model's own rollout: the controller's state machine judged on cheque reads."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import httpx

from router import metrics as m
from router.analysis import Sample
from router.app import create_app
from router.cheque_analysis import CHEQUE_CONFIDENCE, CHEQUE_READS, CHEQUE_REVIEWED
from router.cheque_rollout import ChequeRolloutController, ChequeServed
from router.cli import RolloutModel, pause_cmd, status_cmd
from router.proxy import Backend
from router.routing import Split
from router.settings import RouterSettings
from router.sources import parse_exposition
from router.state import Phase, RolloutStore
from service.metrics import ServiceMetrics
from tests.harness import free_port
from tests.router.router_fakes import FakeService, serve_in_thread
from tests.router.test_router_controller import (
    INTERVAL,
    Clock,
    FakeAliases,
    FakeServed,
    FakeSource,
    healthy,
)
from tests.router.test_router_proxy import PNG, metric, users_on

CHEQUES = "inkwell-cheques"


def cheque_reads(
    variant: str, version: str, n: int, flagged: int, confidence: float, errors: int = 0
):
    """The services' cheque reads and the router's cheque requests (`errors` more 5xx)."""
    labels = {"variant": variant, "model_version": version}
    requests = f"{m.CHEQUE_UPSTREAM_REQUESTS}_total"
    latency = f"{m.CHEQUE_UPSTREAM_LATENCY}_bucket"
    return [
        Sample(f"{CHEQUE_READS}_total", {**labels, "needs_review": "true"}, flagged),
        Sample(f"{CHEQUE_READS}_total", {**labels, "needs_review": "false"}, n - flagged),
        Sample(f"{CHEQUE_CONFIDENCE}_sum", labels, confidence * n),
        Sample(f"{CHEQUE_CONFIDENCE}_count", labels, n),
        Sample(requests, {**labels, "outcome": "ok", "mode": "live"}, n),
        Sample(requests, {**labels, "outcome": "error", "mode": "live"}, errors),
        Sample(latency, {**labels, "le": "0.05"}, n + errors),
        Sample(latency, {**labels, "le": "+Inf"}, n + errors),
    ]


class ChequeHarness:
    def __init__(self, tmp_path) -> None:
        self.settings = RouterSettings(
            home=tmp_path, analysis_interval_s=INTERVAL, registry_poll_s=0.001, min_requests=20
        )
        self.aliases = FakeAliases(canary="2")
        self.source = FakeSource()
        self.served = FakeServed()
        self.clock = Clock()
        self.store = RolloutStore(self.settings.resolved_database_url)
        self.controller = ChequeRolloutController(
            self.settings, self.store, self.aliases, self.source, self.served, clock=self.clock
        )

    def later(self, seconds: float = INTERVAL):
        self.clock.now += seconds
        return asyncio.run(self.controller.tick())


def test_good_cheque_canary_goes_through_every_step_and_is_promoted(tmp_path):
    h = ChequeHarness(tmp_path)
    h.source.samples = cheque_reads("canary", "2", 100, 5, 0.9) + cheque_reads(
        "stable", "1", 400, 20, 0.9
    )
    weights = [h.later(0).weight]
    for _ in range(3):
        weights.append(h.later().weight)
    assert weights == [5, 25, 50, 100]
    assert h.later().phase is Phase.PROMOTING
    h.served.versions["stable"] = "2"
    assert h.later(0).phase is Phase.PROMOTED
    assert h.aliases.aliases == {"stable": "2"}
    assert h.store.load(CHEQUES).phase is Phase.PROMOTED
    assert h.store.load("inkwell-digits").phase is Phase.IDLE  # its own rollout


def test_cheque_canary_flagging_more_reads_for_review_is_rolled_back(tmp_path):
    h = ChequeHarness(tmp_path)
    h.later(0)
    h.source.samples = cheque_reads("canary", "2", 60, 40, 0.9) + cheque_reads(
        "stable", "1", 600, 30, 0.9
    )
    state = h.later(1.0)
    assert (state.phase, state.weight) == (Phase.ROLLED_BACK, 0)
    assert "canary" not in h.aliases.aliases
    assert "needs_review" in h.aliases.tags["2"]["rolled_back"]


def test_cheque_canary_failing_cheque_requests_is_rolled_back(tmp_path):
    h = ChequeHarness(tmp_path)
    h.later(0)
    h.source.samples = cheque_reads("canary", "2", 60, 3, 0.9, errors=20) + cheque_reads(
        "stable", "1", 600, 30, 0.9
    )
    state = h.later(1.0)
    assert (state.phase, state.weight) == (Phase.ROLLED_BACK, 0)
    assert "error rate" in h.aliases.tags["2"]["rolled_back"]


def test_digit_traffic_alone_does_not_judge_the_cheque_canary(tmp_path):
    h = ChequeHarness(tmp_path)
    h.later(0)
    h.source.samples = healthy()  # a healthy digit canary's router traffic, no cheque reads
    for _ in range(3):
        state = h.later()
        assert (state.phase, state.weight) == (Phase.CANARY, 5)
    assert h.controller.last_verdict is not None
    assert "waiting for data" in h.controller.last_verdict.reason()


def test_scraping_a_service_keeps_its_cheque_series():
    service = ServiceMetrics("canary")
    service.observe_cheque("2", 0.8, needs_review=True)
    service.cheque_reading_reviewed("canary", "2", exact=False)
    names = {name for name, _ in parse_exposition(service.render().decode())}
    wanted = {f"{CHEQUE_READS}_total", f"{CHEQUE_CONFIDENCE}_count", f"{CHEQUE_REVIEWED}_total"}
    assert wanted <= names


def test_cheque_rollout_waits_for_the_canary_service_to_read_with_the_canary_version(tmp_path):
    backends = {
        "stable": Backend("stable", "http://s", None, 1.0, cheque_version="1"),  # type: ignore[arg-type]
        "canary": Backend("canary", "http://c", None, 1.0, cheque_version="1"),  # type: ignore[arg-type]
    }
    h = ChequeHarness(tmp_path)
    h.controller.served = ChequeServed(backends.__getitem__)
    assert h.later(0).canary_ready_at == 0  # still reading with stable's version
    backends["canary"].cheque_version = "2"
    assert h.later(1.0).canary_ready_at > 0


@contextmanager
def cheque_rollout_router(tmp_path, digits: FakeAliases, cheques: FakeAliases):
    """A router running both rollouts over fake services; yields it once the cheque canary
    (version 3) takes its first step."""
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    stable.cheque_version, canary.cheque_version = "1", "3"
    with serve_in_thread(stable.app()) as stable_url, serve_in_thread(canary.app()) as canary_url:
        settings = RouterSettings(
            home=tmp_path, stable_url=stable_url, canary_url=canary_url, cheque_rollout=True,
            analysis_interval_s=600, registry_poll_s=0.1, probe_interval_s=0.1, tick_s=0.1,
        )  # fmt: skip
        app = create_app(settings, source=FakeSource(), aliases=digits, cheque_aliases=cheques)
        with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
            deadline = time.monotonic() + 30
            while not (app.runtime.cheque_controller and app.runtime.cheque_split()):
                assert time.monotonic() < deadline, "the cheque rollout never started"
                time.sleep(0.05)
            while app.runtime.cheque_controller.state.canary_ready_at <= 0:
                assert time.monotonic() < deadline, "the canary never read with version 3"
                time.sleep(0.05)
            yield app, url, client


def test_a_running_router_rolls_the_cheque_canary_out_to_its_own_users(tmp_path, capsys):
    digits, cheques = FakeAliases(), FakeAliases(canary="3")
    with cheque_rollout_router(tmp_path, digits, cheques) as (app, url, client):
        assert app.runtime.cheque_split() == Split(5, "3", "1")
        assert app.runtime.controller is not None
        assert app.runtime.controller.state.phase is Phase.IDLE  # the digit rollout
        headers = {"content-type": "image/png"}
        for variant in ("canary", "stable"):
            for user in users_on(variant, 5, 3, canary_version="3"):
                answer = client.post(
                    "/v1/cheques/read", content=PNG, headers={**headers, "X-User-Id": user}
                ).json()
                assert answer["variant"] == variant
        key = (tmp_path / "router-admin.key").read_text()
        status = client.get("/admin/rollout", headers={"X-API-Key": key})
        cheque_status = status.json()["cheques"]
        assert (cheque_status["model_name"], cheque_status["phase"]) == (CHEQUES, "canary")
        assert cheque_status["served_versions"] == {"stable": "1", "canary": "3"}
        assert status.json()["phase"] == "idle"
        capsys.readouterr()
        status_cmd(url=url, key=key)
        shown = capsys.readouterr().out
        assert "cheque rollout" in shown and "5 %" in shown


def test_admin_actions_with_model_cheques_steer_only_the_cheque_rollout(tmp_path, capsys):
    digits, cheques = FakeAliases(canary="2"), FakeAliases(canary="3")
    with cheque_rollout_router(tmp_path, digits, cheques) as (app, url, client):
        key = (tmp_path / "router-admin.key").read_text()
        admin = {"X-API-Key": key}
        refused = client.post("/admin/rollout/pause?model=cheques")
        assert refused.status_code == 401  # the admin key, as for digits
        bogus = client.post("/admin/rollout/pause?model=letters", headers=admin)
        assert bogus.status_code == 422 and "cheques" in bogus.text
        pause_cmd(model=RolloutModel.CHEQUES, url=url, key=key)
        assert "cheque rollout" in capsys.readouterr().out
        assert app.runtime.cheque_controller.state.phase is Phase.PAUSED
        assert app.runtime.controller.state.phase is not Phase.PAUSED  # the digit rollout
        assert metric(client, m.CHEQUE_ROLLOUT_PHASE, phase="paused") == 1
        assert metric(client, m.CHEQUE_CANARY_WEIGHT) == 5
        assert metric(client, m.ROLLOUT_PHASE, phase="paused") == 0  # digit gauges unchanged
        resumed = client.post("/admin/rollout/resume?model=cheques", headers=admin).json()
        assert (resumed["model_name"], resumed["phase"]) == (CHEQUES, "canary")
        rolled = client.post(
            "/admin/rollout/rollback?model=cheques", headers=admin, json={"reason": "bad reads"}
        ).json()
        assert (rolled["model_name"], rolled["phase"]) == (CHEQUES, "rolled_back")
        assert "canary" not in cheques.aliases and "bad reads" in cheques.tags["3"]["rolled_back"]
        assert digits.aliases.get("canary") == "2"  # the digit canary is left alone
        assert app.runtime.cheque_split() == Split(0, None, "1")
        assert metric(client, m.CHEQUE_CANARY_WEIGHT) == 0
        events = client.get("/admin/rollout/events?model=cheques", headers=admin).json()
        by_admin = [e["to_phase"] for e in events if e["actor"].startswith("admin@")]
        assert {"paused", "canary", "rolling_back"} <= set(by_admin)  # the audit trail


def test_cheque_admin_actions_while_the_cheque_rollout_is_off_say_how_to_turn_it_on(tmp_path):
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    with serve_in_thread(stable.app()) as stable_url, serve_in_thread(canary.app()) as canary_url:
        settings = RouterSettings(home=tmp_path, stable_url=stable_url, canary_url=canary_url)
        app = create_app(settings, source=FakeSource(), aliases=FakeAliases(canary="2"))
        with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
            key = (tmp_path / "router-admin.key").read_text()
            answer = client.post("/admin/rollout/promote?model=cheques", headers={"X-API-Key": key})
    assert answer.status_code == 409
    assert "INKWELL_ROUTER_CHEQUE_ROLLOUT=true" in answer.json()["message"]


def test_a_running_router_rolls_back_a_cheque_canary_whose_reads_fail(tmp_path):
    # the router's own metrics, scraped by the real source: the cheque canary's 5xx on
    # /v1/cheques/read (answered by stable, so clients see none) roll it back
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    stable.cheque_version, canary.cheque_version = "1", "3"
    canary.cheque_mode = "error"
    digits, cheques = FakeAliases(canary="2"), FakeAliases(canary="3")
    port = free_port()
    with serve_in_thread(stable.app()) as stable_url, serve_in_thread(canary.app()) as canary_url:
        settings = RouterSettings(
            home=tmp_path, stable_url=stable_url, canary_url=canary_url, cheque_rollout=True,
            analysis_interval_s=2.0, registry_poll_s=0.1, probe_interval_s=0.1, tick_s=0.1,
            min_requests=20, breaker_consecutive_failures=1000, breaker_min_requests=1000,
            metrics_targets=[f"http://127.0.0.1:{port}/metrics"],  # the fakes have none
        )  # fmt: skip
        app = create_app(settings, aliases=digits, cheque_aliases=cheques)
        with serve_in_thread(app, port) as url, httpx.Client(base_url=url) as client:
            deadline = time.monotonic() + 30
            while not (app.runtime.cheque_controller and app.runtime.cheque_split()):
                assert time.monotonic() < deadline, "the cheque rollout never started"
                time.sleep(0.05)
            while app.runtime.cheque_controller.state.canary_ready_at <= 0:
                assert time.monotonic() < deadline, "the canary never read with version 3"
                time.sleep(0.05)
            headers = {"content-type": "image/png"}
            for user in users_on("canary", 5, 40, canary_version="3"):
                answer = client.post(
                    "/v1/cheques/read", content=PNG, headers={**headers, "X-User-Id": user}
                )
                assert answer.status_code == 200 and answer.json()["variant"] == "stable"
            controller = app.runtime.cheque_controller
            while controller.state.phase is not Phase.ROLLED_BACK:
                verdict = controller.last_verdict
                why = (verdict.reason() if verdict else None, controller.last_error)
                assert time.monotonic() < deadline + 30, f"the failing cheque canary stayed: {why}"
                time.sleep(0.1)
    assert "canary" not in cheques.aliases
    assert "error rate" in cheques.tags["3"]["rolled_back"]
    assert digits.aliases == {"stable": "1", "canary": "2"}  # the digit rollout is untouched
