"""Two installs on one real Prometheus: every rule, alert and panel reads only its own install.

Each install (namespace) gets the real router, service (stable, canary) and trainer metric
registries, scraped under the shipped job names and told apart only by their `namespace`
label, with the shipped rule files loaded. Recording rules and alerts must keep `namespace` on
every series they return (never a sum over both installs); every dashboard query, with its
`$namespace` variable set to one install, must return nothing of the other, and nothing at all
for an install that does not exist.
"""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from tests.deploy.helpers import K8S, yaml_documents
from tests.deploy.test_monitoring import RULES_DIR, all_rules, panel_queries
from tests.harness import Process, free_port, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus"),
]

NAMESPACES = ("inkwell-a", "inkwell-b")
# Label values that the shipped queries select on; any other label gets "x".
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "variant": ("stable", "canary"),
    "mode": ("live",),
    "outcome": ("ok", "error", "passed", "failed"),
    "correct": ("true", "false"),
    "agree": ("true", "false"),
    "route": ("/v1/digits/predict",),
    "status": ("200", "500"),
    "created": ("true",),
    "phase": ("canary", "promoting"),
    "to": ("canary", "rolled_back"),
}
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "2m", "$__interval": "5s"}


def registries() -> dict[str, CollectorRegistry]:
    """One install's components, each with its own registry, by shipped job name."""
    service = importlib.import_module("service.metrics")
    router = importlib.import_module("router.metrics")
    trainer = importlib.import_module("trainer.metrics")
    return {
        "inkwell-router": router.RouterMetrics().registry,
        "inkwell-service-stable": service.ServiceMetrics("stable").registry,
        "inkwell-service-canary": service.ServiceMetrics("canary").registry,
        "inkwell-trainer": trainer.TrainerMetrics().registry,
    }


def _children(collector: Any) -> Iterator[Any]:
    names = getattr(collector, "_labelnames", ())
    if not names:
        yield collector
        return
    for values in itertools.product(*(LABEL_VALUES.get(n, ("x",)) for n in names)):
        yield collector.labels(*values)


def touch(registry: CollectorRegistry, amount: float) -> None:
    """Give every metric of `registry` series: counters and histograms grow, gauges are set."""
    for collector in list(registry._collector_to_names):  # the registry has no public list
        kind = getattr(collector, "_type", None)
        if kind not in ("counter", "gauge", "histogram", "summary"):
            continue
        for child in _children(collector):
            if kind == "counter":
                child.inc(amount)
            elif kind == "gauge":
                child.set(1 if amount == 0 else amount)
            elif amount:
                child.observe(0.01 * amount)


def scrape_config(targets: dict[tuple[str, str], str]) -> str:
    """One job per component; each install's target labelled with its namespace."""
    lines = ["global:", "  scrape_interval: 200ms", "  evaluation_interval: 200ms"]
    lines += ["rule_files:"] + [f"  - {p}" for p in sorted(RULES_DIR.glob("*.yml"))]
    lines.append("scrape_configs:")
    for job in sorted({job for job, _ in targets}):
        lines += [f"  - job_name: {job}", "    static_configs:"]
        for (target_job, namespace), address in targets.items():
            if target_job == job:
                lines += [
                    f"      - targets: ['{address}']",
                    f"        labels: {{namespace: {namespace}}}",
                ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus with the shipped rules, scraping both installs, after two rounds of data."""
    tmp_path = tmp_path_factory.mktemp("two-installs")
    installs = {namespace: registries() for namespace in NAMESPACES}
    servers, targets = [], {}
    for namespace, components in installs.items():
        for job, registry in components.items():
            touch(registry, 0)
            port = free_port()
            servers.append(start_http_server(port, addr="127.0.0.1", registry=registry))
            targets[(job, namespace)] = f"127.0.0.1:{port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(targets))
    port = free_port()
    proc = Process(
        f"prometheus-{port}",
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        tmp_path / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 60, "prom", proc)
        wait_until(lambda: len(_result(url, "up == 1")) == len(targets), 30, "all scraped")
        for amount, components in zip((1, 3), installs.values(), strict=True):
            for registry in components.values():
                touch(registry, amount)
        for recorded in (
            "variant:inkwell_router_online_accuracy:ratio_rate1h > 0",
            "reason:inkwell_trainer_quarantined_samples:ratio_increase30m > 0",
        ):
            wait_until(lambda e=recorded: bool(_result(url, e)), 30, "rules evaluated", proc)
        yield url
    finally:
        proc.stop()
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _result(url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


def _expand(expr: str, namespace: str) -> str:
    for name, value in {**GRAFANA_VARIABLES, "$namespace": namespace}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not expand: {expr}"
    return expr


def test_every_rule_and_alert_keeps_each_installs_series_apart(prometheus):
    mixed = {}
    for rule in all_rules():
        for series in _result(prometheus, rule["expr"]):
            if series["metric"].get("namespace") not in NAMESPACES:
                mixed[rule.get("record") or rule["alert"]] = series["metric"]
    assert not mixed, f"series summed over both installs: {mixed}"
    # install b's counters grew 3x install a's: each its own rate, not a shared one (the
    # factor is not exact: each target's scrapes fall at their own times)
    rates = {
        s["metric"]["namespace"]: float(s["value"][1])
        for s in _result(prometheus, 'variant:inkwell_router_requests:rate5m{variant="canary"}')
    }
    assert rates["inkwell-b"] > 2 * rates["inkwell-a"] > 0


def test_every_panel_query_returns_only_the_chosen_install(prometheus):
    other = {}
    for board, panel, expr in panel_queries():
        assert "$namespace" in expr or "vector(" in expr, f"{board} / {panel} is not scoped"
        for series in _result(prometheus, _expand(expr, "inkwell-a")):
            if series["metric"].get("namespace", "inkwell-a") != "inkwell-a":
                other[f"{board} / {panel}"] = series["metric"]
        leaked = _result(prometheus, _expand(expr, "elsewhere"))
        if leaked:
            other[f"{board} / {panel} (no such install)"] = leaked[0]["metric"]
    assert not other, f"panels showing another install's series: {other}"


def analysis_queries() -> list[tuple[str, str, str]]:
    """(metric name, query, success condition) of every Prometheus metric of the shipped Argo
    AnalysisTemplates (the router-weight step calls the router, not Prometheus)."""
    out = []
    for path in sorted((K8S / "components" / "argo-analysis").glob("*-analysistemplate.yaml")):
        for template in yaml_documents(path.read_text()):
            for metric in template["spec"]["metrics"]:
                if "prometheus" not in metric["provider"]:
                    continue
                query = metric["provider"]["prometheus"]["query"]
                out.append((metric["name"], query, metric["successCondition"]))
    return out


def test_argo_analysis_queries_read_one_number_of_their_own_install(prometheus):
    assert len(analysis_queries()) >= 5
    for name, query, condition in analysis_queries():
        for namespace in (*NAMESPACES, "elsewhere"):
            expr = query.replace("{{args.namespace}}", namespace)
            result = _result(prometheus, expr)
            if namespace == "elsewhere":
                assert result == [], f"{name} reads another install's series"
                continue
            assert len(result) == 1, f"{name} for {namespace}: {result}"
            assert result[0]["metric"].get("namespace") == namespace, name
            # Argo's `result` is the vector's values; the conditions use Python's syntax too
            values = [float(result[0]["value"][1])]
            assert isinstance(eval(condition, {"__builtins__": {}}, {"result": values}), bool)
