"""End to end with real processes: two inference services (one per alias) on a temporary MLflow
sqlite registry with tiny trained models, the router with its rollout controller, users sending
predictions and delayed labels through it, and (in one test) a real Prometheus."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import Result

from tests.cli import invoke
from tests.harness import free_port
from tests.router import e2e_harness as h

pytest.importorskip("service.main", reason="the end-to-end tests need the inference service")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

INTERVAL = 2.0


@pytest.fixture(scope="session")
def models(mnist_dir: Path) -> h.Models:
    return h.train_models(mnist_dir)


@pytest.fixture(scope="session")
def digits(mnist_dir: Path) -> list[h.Digit]:
    return h.mnist_pngs(mnist_dir)


@dataclass
class System:
    """The registry and the two services most tests share (one per alias)."""

    home: Path
    mnist: Path
    logs: Path
    stable: h.Process
    stable_url: str
    canary_proc: h.Process
    canary_url: str
    models: h.Models
    digits: list[h.Digit]
    base_version: str

    def own_canary(self, **settings: object) -> tuple[h.Process, str]:
        """A canary service just for one test (its own settings, or to be killed)."""
        return h.start_service("canary", self.home, self.mnist, self.logs, **settings)

    def router(self, canary_url: str, **settings: object) -> tuple[h.Process, str]:
        return h.start_router(
            self.home, self.mnist, self.logs, self.stable_url, canary_url, **settings
        )

    def stable_alias(self) -> str:
        from inkwell.registry import Registry
        from inkwell.settings import CoreSettings

        return (
            Registry(CoreSettings(home=self.home)).get_version("inkwell-digits", "stable").version
        )


@pytest.fixture(scope="module")
def system(
    tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, models: h.Models, digits
) -> Iterator[System]:
    home = tmp_path_factory.mktemp("router-e2e")
    logs = home / "logs"
    logs.mkdir()
    base = h.register(home, models.base, ("stable",), "base")
    stable, stable_url = h.start_service("stable", home, mnist_dir, logs)
    try:
        canary, canary_url = h.start_service("canary", home, mnist_dir, logs)
    except Exception:
        stable.stop()
        raise
    try:
        h.wait_until(
            lambda: httpx.get(f"{stable_url}/readyz").status_code == 200, 60, "stable model", stable
        )
        yield System(
            home, mnist_dir, logs, stable, stable_url, canary, canary_url, models, digits, base
        )
    finally:
        canary.stop()
        stable.stop()


@pytest.fixture
def stop_later() -> Iterator[list[h.Process]]:
    """Processes a test started; stopped however the test ends."""
    started: list[h.Process] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def assert_no_failures(traffic: h.Traffic) -> None:
    failures = traffic.failures()
    assert not failures, f"{len(failures)} of {len(traffic.answers)} failed: {failures[:3]}"
    assert len(traffic.answers) > 50


def rolled_back_within(router_url: str, intervals: float) -> float:
    """Seconds from the canary service serving the version (the first moment users could get
    it) to the rollback; fails beyond `intervals` analysis intervals."""
    state = h.rollout(router_url)
    assert state["canary_ready_at"] > 0, state
    finished = next(
        e
        for e in h.events(router_url)
        if e["to_phase"] == "rolled_back" and e["rollout_id"] == state["rollout_id"]
    )
    took = finished["at"] - state["canary_ready_at"]
    assert took <= intervals * INTERVAL, f"rolled back {took:.1f} s after the canary was ready"
    return took


def test_good_canary_is_promoted_through_every_step_and_stable_reloads_it(system, stop_later):
    router, router_url = system.router(system.canary_url, shadow=True)
    stop_later.append(router)
    traffic = h.Traffic(router_url, system.digits).start()
    try:
        time.sleep(1)
        version = h.register(system.home, system.models.good, ("canary",), "good")
        h.wait_phase(router_url, ("promoted", "rolled_back"), 120, router, version)
        time.sleep(1.5)  # users keep going after the promotion
    finally:
        traffic.stop()
    state = h.rollout(router_url)
    assert state["phase"] == "promoted", json.dumps(state)[:3000]
    transitions = [(e["to_phase"], e["weight"]) for e in h.events(router_url)]
    rollout_id = state["rollout_id"]
    ours = [
        (e["to_phase"], e["weight"]) for e in h.events(router_url) if e["rollout_id"] == rollout_id
    ]
    assert ours == [
        ("canary", 5),
        ("canary", 5),  # the canary service serves the version
        ("canary", 25),
        ("canary", 50),
        ("canary", 100),
        ("promoting", 100),
        ("promoted", 0),
    ], transitions
    assert_no_failures(traffic)
    # the stable service hot-reloaded the promoted version; the aliases and tags say so
    ready = httpx.get(f"{system.stable_url}/readyz").json()
    assert ready["model_version"] == version
    aliases, tags = h.registry_state(system.home, version)
    assert "stable" in aliases and "canary" not in aliases
    assert tags["rollout_status"] == "promoted"
    # the canary really answered users, and shadow copies were compared
    assert any(a.variant == "canary" and a.version == version for a in traffic.answers)
    assert metric(router_url, "inkwell_router_shadow_comparisons_total", agree="true") > 0
    # sticky users never went back to the old version once they had the new one (except when
    # the canary failed and stable answered instead: availability wins, and it is rare)
    fallbacks = [a for a in traffic.answers if a.fallback]
    assert len(fallbacks) <= len(traffic.answers) // 50, fallbacks[:3]
    moved: set[str] = set()
    for answer in sorted(traffic.answers, key=lambda a: a.at):
        if answer.fallback:
            continue
        if answer.version == version:
            moved.add(answer.user)
        else:
            assert answer.user not in moved, f"{answer.user} flipped back to {answer.version}"


BAD_CANARIES = {
    # model name, canary service settings, words one of which the rollback reason contains
    "wrong_answers": ("wrong", {}, ("accuracy", "confidence", "agreement")),
    "nan_answers_5xx": ("broken", {}, ("error rate", "NaN", "breaker")),
    # every request waits 0.7 s for a batch to fill (the router gives up on the canary at 1 s)
    "slow": ("good", {"microbatch_max_wait_ms": 700}, ("p95",)),
}


@pytest.mark.parametrize("kind", list(BAD_CANARIES))
def test_bad_canary_is_rolled_back_within_two_intervals_with_no_failed_request(
    system, stop_later, kind
):
    model_name, service_settings, reasons = BAD_CANARIES[kind]
    canary_url = system.canary_url
    if service_settings:
        canary, canary_url = system.own_canary(**service_settings)
        stop_later.append(canary)
    router, router_url = system.router(canary_url)
    stop_later.append(router)
    stable_before = system.stable_alias()
    traffic = h.Traffic(router_url, system.digits, label_every=1).start()
    try:
        time.sleep(1)
        version = h.register(system.home, getattr(system.models, model_name), ("canary",), kind)
        h.wait_phase(router_url, ("rolled_back", "promoted"), 60, router, version)
        time.sleep(1)
    finally:
        traffic.stop()
    state = h.rollout(router_url)
    assert state["phase"] == "rolled_back", state
    assert state["canary_version"] == version
    rolled_back_within(router_url, 2)
    assert_no_failures(traffic)
    aliases, tags = h.registry_state(system.home, version)
    assert "canary" not in aliases
    assert tags["rollout_status"] == "rolled_back"
    assert any(word in tags["rolled_back"] for word in reasons), tags["rolled_back"]
    assert system.stable_alias() == stable_before


def test_killed_canary_process_causes_no_client_error(system, stop_later):
    canary, canary_url = system.own_canary()
    stop_later.append(canary)
    router, router_url = system.router(
        canary_url, rollout_steps="50,100", analysis_interval_s=30, breaker_cooldown_s=60
    )
    stop_later.append(router)
    traffic = h.Traffic(router_url, system.digits).start()
    try:
        version = h.register(system.home, system.models.good, ("canary",), "to-be-killed")
        h.wait_until(
            lambda: any(a.version == version for a in traffic.answers), 60, "canary answers"
        )
        canary.kill()
        time.sleep(3)
    finally:
        traffic.stop()
    assert_no_failures(traffic)
    assert metric(router_url, "inkwell_router_fallbacks_total") >= 1
    state = h.wait_phase(router_url, ("rolled_back",), 30, router, version)
    assert state["canary_version"] == version


def test_shadow_mode_never_changes_responses(system, stop_later):
    router, router_url = system.router(
        system.canary_url,
        shadow=True,
        rollout_steps="0,100",
        analysis_interval_s=600,
        canary_timeout_s=10,  # every copy should be compared, however loaded this machine is
        # judge nothing here: this test watches the responses, not the verdict
        min_agreement=0,
        confidence_drop=1,
        accuracy_drop=1,
        latency_margin_ms=60_000,
    )
    stop_later.append(router)
    version = h.register(system.home, system.models.wrong, ("canary",), "shadowed")

    def canary_serving() -> bool:
        state = h.rollout(router_url)
        return state["canary_version"] == version and state["canary_ready_at"] > 0

    h.wait_until(canary_serving, 30, "the rollout to start and the canary to load", router)
    stable_version = system.stable_alias()
    with (
        httpx.Client(base_url=router_url) as via,
        httpx.Client(base_url=system.stable_url) as direct,
    ):
        for i, digit in enumerate(system.digits[:40]):
            headers = {"content-type": "image/png", "X-User-Id": f"shadow-user-{i}"}
            routed = via.post("/v1/digits/predict", content=digit.png, headers=headers)
            straight = direct.post("/v1/digits/predict", content=digit.png, headers=headers)
            assert routed.status_code == straight.status_code == 200
            assert routed.headers["x-inkwell-variant"] == "stable"
            a, b = routed.json(), straight.json()
            assert (a["digit"], a["model_version"], a["variant"]) == (
                b["digit"],
                stable_version,
                "stable",
            )
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)

    def compared() -> float:
        return metric(router_url, "inkwell_router_shadow_comparisons_total", canary_version=version)

    try:
        h.wait_until(lambda: compared() >= 40, 30, "shadow comparisons")
    except TimeoutError:
        shadow = [
            ln for ln in httpx.get(f"{router_url}/metrics").text.splitlines() if "shadow" in ln
        ]
        raise AssertionError("\n".join(shadow)) from None
    # the wrong canary disagrees with stable on most digits, yet no user saw its answers
    assert (
        metric(
            router_url,
            "inkwell_router_shadow_comparisons_total",
            canary_version=version,
            agree="false",
        )
        > 20
    )
    state = h.rollout(router_url)
    assert (state["phase"], state["weight"]) == ("canary", 0)  # shadow only: no user got it


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus")
def test_rollout_decided_from_a_real_prometheus(system, stop_later, tmp_path):
    canary_url = system.canary_url
    router_port = free_port()
    router_url = f"http://127.0.0.1:{router_port}"
    prometheus, prometheus_url = h.start_prometheus(
        {"router": router_url, "stable": system.stable_url, "canary": canary_url},
        tmp_path,
        system.logs,
    )
    stop_later.append(prometheus)
    router, _ = system.router(canary_url, port=router_port, prometheus_url=prometheus_url)
    stop_later.append(router)
    traffic = h.Traffic(router_url, system.digits, label_every=1).start()
    try:
        time.sleep(1)
        version = h.register(system.home, system.models.wrong, ("canary",), "prometheus")
        h.wait_phase(router_url, ("rolled_back", "promoted"), 60, router, version)
    finally:
        traffic.stop()
    state = h.rollout(router_url)
    assert state["metrics_source"] == "prometheus"
    assert state["phase"] == "rolled_back" and state["canary_version"] == version
    assert_no_failures(traffic)
    checks = {c["name"]: c for c in state["analysis"]["checks"]}
    assert any(c["status"] == "fail" for c in checks.values())
    # Prometheus scraped all three real components
    for query in (
        f'inkwell_router_upstream_requests_total{{variant="canary",model_version="{version}"}}',
        f'inkwell_service_prediction_confidence_count{{variant="canary",model_version="{version}"}}',
        'inkwell_service_requests_total{variant="stable"}',
    ):
        result = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}).json()
        assert result["data"]["result"], query


def test_rollout_cli_and_admin_api_need_the_key(system, stop_later):
    router, router_url = system.router(system.canary_url)
    stop_later.append(router)
    assert httpx.get(f"{router_url}/admin/rollout").status_code == 401
    assert httpx.post(f"{router_url}/admin/rollout/promote").status_code == 401

    # in this process (tests/router/test_router_cli.py runs the real entry point)
    def cli(*args: str) -> Result:
        return invoke("rollout", *args, "--url", router_url)

    denied = cli("status", "--key", "not-the-key")
    assert denied.exit_code == 2 and "invalid_api_key" in denied.stdout
    version = h.register(system.home, system.models.good, ("canary",), "manual")
    h.wait_phase(router_url, ("canary",), 30, router, version)
    key = {"X-API-Key": h.ADMIN_KEY}
    paused = httpx.post(f"{router_url}/admin/rollout/pause", headers=key, timeout=30)
    assert paused.json()["phase"] == "paused"
    resumed = httpx.post(f"{router_url}/admin/rollout/resume", headers=key, timeout=30)
    assert resumed.json()["phase"] == "canary"
    done = cli("rollback", "--key", h.ADMIN_KEY, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["phase"] == "rolled_back"
    _, tags = h.registry_state(system.home, version)
    assert "rolled back manually" in tags["rolled_back"]
