"""Prometheus config, rules and Grafana dashboards, checked by the real tools and the real code.

Guards: `promtool check config` / `check rules` / `test rules` (alerts fire on the right
series with the right text); the generated files (dashboards, PrometheusRule) equal what
monitoring/build.py writes, so there is one source; dashboards are well formed; every metric a
rule or panel reads is one the components really export.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    DASHBOARDS_DIR,
    K8S,
    MONITORING,
    RULES_DIR,
    promtool,
    yaml_documents,
)

PROMETHEUS_YML = MONITORING / "prometheus" / "prometheus.yml"
RULES_TESTS = MONITORING / "prometheus" / "tests"
# Where each component defines its metrics: (module, factory building a registry owner).
METRICS_MODULES = {
    "service": ("service.metrics", lambda m: m.ServiceMetrics("stable").registry),
    "router": ("router.metrics", lambda m: m.RouterMetrics().registry),
    "trainer": ("trainer.metrics", lambda m: m.TrainerMetrics().registry),
}
METRIC_NAME = re.compile(r"\b(inkwell_[a-z0-9_]+|process_[a-z_]+|up)\b(?!\s*\()")
RECORDED = re.compile(r"\b([a-z_][a-z0-9_]*(?::[a-z0-9_]+)+)\b")
LABEL_MATCHERS = re.compile(r"\{[^}]*\}")


def build_module() -> ModuleType:
    """monitoring/build.py, imported from its path (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "inkwell_monitoring_build", MONITORING / "build.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def all_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, expr) for every query of every panel."""
    out = []
    for board in dashboards().values():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((board["title"], panel["title"], target["expr"]))
    return out


# ---- promtool -----------------------------------------------------------------------------


@pytest.mark.integration
def test_prometheus_config_passes_promtool() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    rule_files = {(PROMETHEUS_YML.parent / f).resolve() for f in config["rule_files"]}
    assert rule_files == {p.resolve() for p in RULES_DIR.glob("*.yml")}


@pytest.mark.integration
def test_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_alerts_fire_on_the_right_series_with_the_right_text() -> None:
    tests = sorted(RULES_TESTS.glob("*.yml"))
    assert tests
    result = _promtool("test", "rules", *(p.name for p in tests), cwd=RULES_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_severity_and_text() -> None:
    tested = {
        case["alertname"]
        for path in RULES_TESTS.glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = [r for r in all_rules() if "alert" in r]
    assert len(alerts) >= 8
    for rule in alerts:
        assert rule["alert"] in tested, f"{rule['alert']} has no firing case in {RULES_TESTS}"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.integration
def test_prometheus_rule_for_the_operator_holds_exactly_the_rules_files(tmp_path: Path) -> None:
    path = K8S / "components/prometheus-operator/inkwell-prometheusrule.yaml"
    (manifest,) = yaml_documents(path.read_text())
    groups = [
        g for p in sorted(RULES_DIR.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]
    ]
    assert manifest["spec"]["groups"] == groups
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    result = _promtool("check", "rules", str(extracted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_files_are_up_to_date() -> None:
    for path, text in build_module().outputs().items():
        assert path.read_text() == text, (
            f"{path} is stale: run `python monitoring/build.py` and commit the result"
        )


# ---- dashboards ---------------------------------------------------------------------------


def test_the_four_dashboards_exist_with_unique_uids() -> None:
    boards = dashboards()
    assert set(boards) == {
        "inkwell-rollout.json",
        "inkwell-models.json",
        "inkwell-data.json",
        "inkwell-serving.json",
    }
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board["uid"] == name.removesuffix(".json")


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS_DIR.glob("*.json")))
def test_dashboard_panels_are_well_formed(name: str) -> None:
    board = dashboards()[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"


def test_core_panels_are_named_in_the_dashboards() -> None:
    core = build_module().core_panels()
    titles = {b["uid"]: {p["title"] for p in b["panels"]} for b in dashboards().values()}
    for uid, panels in core.items():
        assert set(panels) <= titles[uid]
    assert sum(len(p) for p in core.values()) >= 15


# ---- metric names -------------------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Sample names the components' metric registries really expose."""
    names: set[str] = {"up"}
    for module_name, registry_of in METRICS_MODULES.values():
        registry = registry_of(importlib.import_module(module_name))
        for family in registry.collect():
            names.add(family.name)
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
            }.get(family.type, ())
            names.update(family.name + s for s in suffixes)
        names.update({"process_cpu_seconds_total", "process_resident_memory_bytes"})
    return names


def referenced_names() -> dict[str, set[str]]:
    """Raw metric names (not recorded series) each rule or panel query reads."""
    exprs: dict[str, str] = {}
    for rule in all_rules():
        exprs[rule.get("record") or rule["alert"]] = rule["expr"]
    for board, panel, expr in panel_queries():
        exprs[f"{board} / {panel}: {expr}"] = expr
    out: dict[str, set[str]] = {}
    for where, expr in exprs.items():
        bare = RECORDED.sub("", LABEL_MATCHERS.sub("", expr))
        out[where] = set(METRIC_NAME.findall(bare))
    return out


def test_every_metric_read_by_rules_and_panels_is_exported_by_a_component() -> None:
    exported = exported_metric_names()
    missing = {
        where: sorted(names - exported)
        for where, names in referenced_names().items()
        if names - exported
    }
    assert not missing, f"metrics no component exports: {json.dumps(missing, indent=1)}"


def test_every_recorded_series_used_is_recorded() -> None:
    recorded = {r["record"] for r in all_rules() if "record" in r}
    used = {
        name
        for expr in [r["expr"] for r in all_rules()] + [q[2] for q in panel_queries()]
        for name in RECORDED.findall(LABEL_MATCHERS.sub("", expr))
    }
    assert used <= recorded, f"never recorded: {sorted(used - recorded)}"
