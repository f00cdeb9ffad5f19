"""The shipped Alertmanager configuration: valid for the real `amtool`, and every shipped alert
routed to the receiver its severity asks for."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deploy.helpers import MONITORING, amtool
from tests.deploy.test_monitoring import all_rules

pytestmark = pytest.mark.integration  # runs amtool

CONFIG = MONITORING / "alertmanager/alertmanager.yml"
RECEIVER_BY_SEVERITY = {
    "critical": "inkwell-pager",
    "warning": "inkwell-chat",
    "info": "inkwell-chat-once",
}
ALERTS = [rule for rule in all_rules() if "alert" in rule]


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [amtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_alertmanager_config_passes_amtool_check_config() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_severity_has_its_own_route() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    matchers = {m for route in config["route"]["routes"] for m in route["matchers"]}
    for rule in ALERTS:
        assert f'severity="{rule["labels"]["severity"]}"' in matchers, rule["alert"]


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: str(r["alert"]))
def test_each_shipped_alert_reaches_the_receiver_for_its_severity(rule: dict[str, object]) -> None:
    labels = {"alertname": str(rule["alert"]), "namespace": "inkwell"}
    labels |= {str(k): str(v) for k, v in dict(rule["labels"]).items()}  # type: ignore[call-overload]
    args = [f"{k}={v}" for k, v in labels.items()]
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = RECEIVER_BY_SEVERITY[labels["severity"]]
    assert result.stdout.strip() == expected, (labels, result.stdout)
