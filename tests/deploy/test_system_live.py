"""The Compose system on one machine, and the shipped rules and dashboards against it.

Starts, as separate processes on free ports: the MLflow server with the options and
environment docker-compose.yml gives it (with authentication; SQLite instead of PostgreSQL) and
its `mlflow-users` job, every component below acting as the MLflow user Compose gives it
(trainer, router, read-only service); the `init` job's command
against it (twice: it must register the base model once); a second tiny model as `canary`; the
stable and canary services, the trainer and the router (its rollout controller reading
analysis metrics from this Prometheus, as in Compose), all using the MLflow server; and Debian's
`prometheus` with the shipped scrape configuration (same job names, targets rewritten to this
machine) and the shipped rule files. Sends predictions and labelled uploads through the router
(enough for the trainer to retrain once), then checks that every target is up, every alert and
recording rule evaluates without error, every Grafana panel query runs, and the core panels
return data.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import Processes
from tests.deploy.helpers import (
    MONITORING,
    REPO,
    RULES_DIR,
    compose_mlflow,
    compose_mlflow_users,
    load_compose,
    mlflow_login,
    prometheus,
)
from tests.deploy.test_monitoring import all_rules, build_module, dashboards
from tests.harness import free_port, png

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UPLOAD_KEY = "live-test-upload-key"
ADMIN_KEY = "live-test-admin-key"
# Grafana's built-in variables, as Grafana would expand them for a short time range.
GRAFANA_VARIABLES = {
    "$__rate_interval": "15s",
    "$__range": "2m",
    "$__interval": "5s",
    "$namespace": ".*",  # "All": Compose series have no namespace
}
COMPONENT_JOBS = {
    "inkwell-router": "router",
    "inkwell-service-stable": "stable",
    "inkwell-service-canary": "canary",
    "inkwell-trainer": "trainer",
}


@dataclass
class LiveSystem:
    prometheus: str
    router: str
    mlflow: str
    artifacts: Path
    init_outputs: list[str]
    ports: dict[str, int]
    processes: Processes
    mlflow_login: tuple[str, str]  # the read-only service user's

    def query(self, expr: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        return dict(answer.json())

    def query_range(self, expr: str, seconds: int = 120) -> dict[str, Any]:
        now = time.time()
        answer = httpx.get(
            f"{self.prometheus}/api/v1/query_range",
            params={"query": expr, "start": now - seconds, "end": now, "step": "1s"},
            timeout=10,
        )
        return dict(answer.json())


def _base_env(home: Path, mnist_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INKWELL_", "MLFLOW_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "INKWELL_HOME": str(home),
            "INKWELL_DATA_DIR": str(mnist_dir),
            "COLUMNS": "200",
        }
    )
    return env


def _inkwell(*args: str) -> list[str]:
    return [sys.executable, "-c", "from inkwell_app.cli import main; main()", *args]


def _spawn(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen[str]) -> str:
    """Wait for a one-shot command; its output, or a failure showing it."""
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, output
    return output


def _start_mlflow(
    processes: Processes, compose: dict[str, Any], work: Path, env: dict[str, str]
) -> str:
    """`inkwell mlflow server` as Compose runs it (with authentication), with this machine's
    paths and port, then Compose's `mlflow-users` job."""
    port = free_port()
    argv, shipped = compose_mlflow(compose, work, port)
    artifacts = work / "mlflow-artifacts"
    # Artifacts on a local folder here; the S3 store has its own live test
    # (test_mlflow_s3_live.py).
    argv = [
        re.sub(r"^--artifacts-destination=.*", f"--artifacts-destination={artifacts}", a)
        for a in argv
    ]
    processes.start("mlflow", argv, env | shipped, work)
    url = f"http://127.0.0.1:{port}"
    processes.wait_http("mlflow", f"{url}/health", timeout=180)
    users = compose_mlflow_users(compose, env, url)
    assert users.returncode == 0, users.stdout + users.stderr
    return url


INIT_ARGS = ("--dry-run", "--width", "4")  # a one-batch model: seconds, not minutes
REGISTER_CANARY = """
from inkwell.model import ModelConfig
from inkwell.registry import Registry
from inkwell.train import train_base_model
from inkwell.training import TrainConfig
out = train_base_model(TrainConfig(dry_run=True), model_config=ModelConfig(width=4))
assert out.version is not None
Registry().set_alias(out.version.name, "canary", out.version.version)
"""


def _init_command() -> list[str]:
    command = load_compose()["services"]["init"]["command"]
    assert command == ["inkwell", "train", "--if-missing"]
    return _inkwell(*command[1:], *INIT_ARGS)


def _prometheus_config(ports: dict[str, int], path: Path) -> None:
    """The shipped prometheus.yml with this machine's targets, fast intervals, real rules."""
    config = yaml.safe_load((MONITORING / "prometheus/prometheus.yml").read_text())
    config["global"].update(
        {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    )
    config["rule_files"] = [
        str((MONITORING / "prometheus" / f).resolve()) for f in config["rule_files"]
    ]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        key = COMPONENT_JOBS.get(name, "prometheus" if name == "prometheus" else None)
        assert key is not None, f"the shipped config has a job this test does not run: {name}"
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[key]}"]}]
    path.write_text(yaml.safe_dump(config))


def _wait_for_canary_in_rollout(router: str, timeout: float = 180.0) -> None:
    """Until the router has put the registered canary in a rollout and seen the canary service
    serve it: before that, `X-Inkwell-Variant: canary` is answered by stable (on a loaded
    machine the services can be ready well before the controller's first look)."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = httpx.get(f"{router}/admin/rollout", headers={"X-API-Key": ADMIN_KEY}, timeout=10)
        state = dict(answer.json())
        if state.get("phase") == "canary" and (state.get("canary_ready_at") or 0) > 0:
            return
        time.sleep(0.5)
    pytest.fail(f"the router never started routing to the canary: {state}")


def _send_traffic(system: LiveSystem, mnist_dir: Path) -> None:
    from inkwell.data import load_split

    split = load_split("test", mnist_dir)
    with httpx.Client(base_url=system.router, timeout=30) as client:
        for i in range(60):
            if i == 4:
                # rate() counts only what a series gains after its first scrape. On a fast
                # machine the whole burst fits between two scrapes and every rate reads 0, so
                # let Prometheus see the first requests' series before sending the rest.
                _wait_for(system, "inkwell_router_requests_total")
                _wait_for(system, "inkwell_service_prediction_confidence_count")
            image = png(split.images[i], dark_ink=True)
            user = f"user-{i % 30}"
            headers = {"X-User-Id": user}
            if i % 4 == 0:  # the canary's share is small early in a rollout: ask for it too
                headers["X-Inkwell-Variant"] = "canary"
                headers["X-Inkwell-Override-Key"] = ADMIN_KEY  # overrides need a key
            answer = client.post(
                "/v1/digits/predict",
                files={"image": ("digit.png", image, "image/png")},
                headers=headers,
            )
            assert answer.status_code == 200, answer.text
            if i % 2 == 0:  # a delayed label for an image the router served
                stored = client.post(
                    "/v1/samples",
                    files={"image": ("digit.png", image, "image/png")},
                    data={"label": str(int(split.labels[i])), "user_id": user},
                    headers={"X-API-Key": UPLOAD_KEY, "X-User-Id": user},
                )
                assert stored.status_code in (200, 201), stored.text


def _start_live(
    processes: Processes, tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path
) -> LiveSystem:
    work = tmp_path_factory.mktemp("live")
    env = _base_env(work / "home", mnist_dir)
    ports = {name: free_port() for name in ("router", "stable", "canary", "trainer", "prometheus")}
    prom_url = f"http://127.0.0.1:{ports['prometheus']}"
    # Independent starts overlap: this machine is small and shared.
    config = work / "prometheus.yml"
    _prometheus_config(ports, config)
    processes.start(
        "prometheus",
        [
            prometheus(),
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ],
        env,
        work,
    )
    compose = load_compose()  # once: its generated keys must agree between services
    mlflow_url = _start_mlflow(processes, compose, work, env)
    env["INKWELL_TRACKING_URI"] = mlflow_url
    # Each component as the MLflow user Compose gives it.
    trainer_env = env | mlflow_login(compose, "trainer")
    # Compose's `init`: registers v1 as stable. Its second run (below) must do nothing.
    init_outputs = [_finish(_spawn(_init_command(), trainer_env, work))]
    second_init = _spawn(_init_command(), trainer_env, work)
    canary = _spawn([sys.executable, "-c", REGISTER_CANARY], trainer_env, work)
    for variant in ("stable", "canary"):
        processes.start(
            f"service-{variant}",
            _inkwell("service", "--variant", variant),
            env
            | mlflow_login(compose, f"service-{variant}")
            | {
                "INKWELL_SEED_SHIPPED": "false",
                "INKWELL_SERVICE_PORT": str(ports[variant]),
                "INKWELL_SERVICE_API_KEYS": UPLOAD_KEY,
                "INKWELL_SERVICE_POLL_INTERVAL_S": "1",
                "INKWELL_SERVICE_TORCH_THREADS": "1",
            },
            work,
        )
    processes.start(
        "trainer",
        _inkwell("trainer"),
        trainer_env
        | {
            "INKWELL_TRAINER_PORT": str(ports["trainer"]),
            "INKWELL_TRAINER_ADMIN_API_KEY": ADMIN_KEY,
            # One small, quick retrain from the uploads below (the real trigger path).
            "INKWELL_TRAINER_MIN_NEW_SAMPLES": "20",
            "INKWELL_TRAINER_DEBOUNCE_SECONDS": "1",
            "INKWELL_TRAINER_POLL_SECONDS": "0.5",
            "INKWELL_TRAINER_HPO_TRIALS": "0",
            "INKWELL_TRAINER_EPOCHS": "1",
            "INKWELL_TRAINER_MIN_STEPS": "5",
            "INKWELL_TRAINER_THREADS": "1",
            # The stable model here is a one-batch model whose answers are near uniform, so
            # the validation checks that lean on it would quarantine every upload (and rightly
            # leave nothing to train). Turn them off: this test needs one real retrain for the
            # trainer's panels; validation has its own tests.
            "INKWELL_TRAINER_OOD_MAX_ENTROPY": "5",
            "INKWELL_TRAINER_OOD_DISTANCE_FACTOR": "1000",
            "INKWELL_TRAINER_LABEL_CONFLICT_CONFIDENCE": "1",
            "INKWELL_TRAINER_USER_DISAGREEMENT_FLOOR": "1",
        },
        work,
    )
    processes.start(
        "router",
        _inkwell("router"),
        env
        | mlflow_login(compose, "router")
        | {
            "INKWELL_ROUTER_PORT": str(ports["router"]),
            "INKWELL_ROUTER_STABLE_URL": f"http://127.0.0.1:{ports['stable']}",
            "INKWELL_ROUTER_CANARY_URL": f"http://127.0.0.1:{ports['canary']}",
            "INKWELL_ROUTER_PROMETHEUS_URL": prom_url,
            "INKWELL_ROUTER_ADMIN_API_KEY": ADMIN_KEY,
            "INKWELL_ROUTER_ANALYSIS_INTERVAL_S": "5",
            "INKWELL_ROUTER_MIN_REQUESTS": "5",
        },
        work,
    )
    init_outputs.append(_finish(second_init))
    _finish(canary)
    processes.wait_http("prometheus", f"{prom_url}/-/ready", timeout=60)
    for variant in ("stable", "canary"):
        processes.wait_http(
            f"service-{variant}", f"http://127.0.0.1:{ports[variant]}/readyz", timeout=180
        )
    processes.wait_http("trainer", f"http://127.0.0.1:{ports['trainer']}/healthz", timeout=180)
    router = f"http://127.0.0.1:{ports['router']}"
    processes.wait_http("router", f"{router}/readyz", timeout=180)
    service_login = mlflow_login(compose, "service-stable")
    system = LiveSystem(
        prom_url,
        router,
        mlflow_url,
        work / "mlflow-artifacts",
        init_outputs,
        ports,
        processes,
        (service_login["MLFLOW_TRACKING_USERNAME"], service_login["MLFLOW_TRACKING_PASSWORD"]),
    )
    _wait_for_canary_in_rollout(router)
    _send_traffic(system, mnist_dir)
    _wait_for(system, "sum(variant:inkwell_router_requests:rate5m) > 0")
    _wait_for(system, "sum(variant:inkwell_service_prediction_confidence:mean5m) > 0")
    _wait_for(
        system,
        'sum(inkwell_trainer_retrains_total{outcome=~"passed|rejected|failed"}) > 0',
        timeout=240,
    )
    _wait_for(system, "max by (dataset) (inkwell_trainer_candidate_accuracy)")
    return system


@pytest.fixture(scope="module")
def live(
    processes: Processes, tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path
) -> Iterator[LiveSystem]:
    try:
        system = _start_live(processes, tmp_path_factory, mnist_dir)
    except BaseException:
        processes.stop_all()  # a failed start must not leave servers running for the retry
        raise
    yield system


def _wait_for(system: LiveSystem, expr: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = system.query(expr)
        if answer["status"] == "success" and answer["data"]["result"]:
            return
        time.sleep(0.5)
    # the series the expression is built from, to tell missing data from NaN or zero
    names = sorted(set(re.findall(r"[a-z_:]*inkwell_[a-z_:0-9]+", expr)))
    seen = {name: system.query(name)["data"]["result"] for name in names}
    pytest.fail(f"Prometheus never returned data for {expr}; its series now: {seen}")


def _expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not expand: {expr}"
    return expr


def test_init_job_registers_the_base_model_once_through_the_artifact_proxy(
    live: LiveSystem,
) -> None:
    first, second = live.init_outputs
    assert "registered inkwell-digits v1 (stable)" in first
    assert "inkwell-digits v1 is already stable: nothing to train" in second
    # Weights went through the server's proxy to --artifacts-destination (v1, v2, retrains).
    assert len(list(live.artifacts.rglob("weights.pt"))) >= 2


def test_mlflow_accepts_the_compose_host_name_and_refuses_others(live: LiveSystem) -> None:
    search = f"{live.mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
    # checking a password (PBKDF2) on a machine busy retraining takes a while
    client = httpx.Client(auth=live.mlflow_login, timeout=30)
    assert client.get(search, headers={"Host": "mlflow:5000"}).status_code == 200
    assert client.get(search, headers={"Host": "attacker.example:5000"}).status_code == 403
    assert httpx.get(search, headers={"Host": "mlflow:5000"}, timeout=30).status_code == 401


def test_prometheus_scrapes_every_component_under_its_shipped_job_name(
    live: LiveSystem,
) -> None:
    targets = httpx.get(f"{live.prometheus}/api/v1/targets", timeout=10).json()["data"]
    health = {t["labels"]["job"]: t["health"] for t in targets["activeTargets"]}
    errors = {t["labels"]["job"]: t["lastError"] for t in targets["activeTargets"]}
    assert health == dict.fromkeys([*COMPONENT_JOBS, "prometheus"], "up"), errors


def test_every_alert_and_recording_rule_evaluates_without_error(live: LiveSystem) -> None:
    expected = {r.get("record") or r["alert"] for r in all_rules()}
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(f"{live.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        if all(r["health"] != "unknown" for r in rules.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(rules) == expected, "Prometheus did not load exactly the shipped rules"
    files = {Path(g["file"]).resolve() for g in groups}
    assert files == {p.resolve() for p in RULES_DIR.glob("*.yml")}
    broken = {n: r.get("lastError") for n, r in rules.items() if r["health"] != "ok"}
    assert not broken, broken
    for rule in all_rules():
        answer = live.query(rule["expr"])
        assert answer["status"] == "success", (rule, answer)


def test_every_grafana_panel_query_runs(live: LiveSystem) -> None:
    checked = 0
    for board in dashboards().values():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = _expand(target["expr"])
                for answer in (live.query(expr), live.query_range(expr)):
                    assert answer["status"] == "success", (board["title"], panel["title"], answer)
                checked += 1
        for annotation in board["annotations"]["list"]:
            answer = live.query_range(_expand(annotation["expr"]))
            assert answer["status"] == "success", annotation
    assert checked >= 40


def test_core_panels_return_data(live: LiveSystem) -> None:
    core = build_module().core_panels()
    empty = []
    for board in dashboards().values():
        for panel in board["panels"]:
            if panel["title"] not in core[board["uid"]]:
                continue
            results = [
                live.query_range(_expand(t["expr"]))["data"]["result"] for t in panel["targets"]
            ]
            if not any(results):
                empty.append(f"{board['title']} / {panel['title']}")
    assert not empty, f"core panels without data: {empty}"


def test_both_variants_appear_in_the_per_variant_series(live: LiveSystem) -> None:
    for series in (
        "variant:inkwell_service_requests:rate5m",
        "variant:inkwell_service_prediction_confidence:mean5m",
        "max by (variant) (inkwell_service_ready)",
    ):
        result = live.query(series)["data"]["result"]
        assert {r["metric"]["variant"] for r in result} == {"stable", "canary"}, series
