"""The shipped Alertmanager configuration: valid for the real `amtool`, and every shipped alert
routed to the receiver its severity asks for; for the prometheus-operator the same routes as an
AlertmanagerConfig that passes its strict CRD schema, reads every receiver's URL from the
generated Secret and, turned into Alertmanager's format as the operator does, routes every
alert as the file does."""

from __future__ import annotations

import base64
import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.custom_resources import schema_errors
from tests.deploy.helpers import K8S, MONITORING, amtool, yaml_documents
from tests.deploy.test_kubernetes import _k8s_tree, kustomize
from tests.deploy.test_monitoring import all_rules

pytestmark = pytest.mark.integration  # runs amtool

CONFIG = MONITORING / "alertmanager/alertmanager.yml"
CRD = K8S / "components/prometheus-operator/inkwell-alertmanagerconfig.yaml"
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


def _labels(rule: dict[str, object]) -> dict[str, str]:
    labels = {"alertname": str(rule["alert"]), "namespace": "inkwell"}
    labels |= {str(k): str(v) for k, v in dict(rule["labels"]).items()}  # type: ignore[call-overload]
    return labels


def _routed(config: Path, labels: dict[str, str]) -> str:
    args = [f"{k}={v}" for k, v in labels.items()]
    result = _amtool("config", "routes", "test", f"--config.file={config}", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: str(r["alert"]))
def test_each_shipped_alert_reaches_the_receiver_for_its_severity(rule: dict[str, object]) -> None:
    labels = _labels(rule)
    expected = RECEIVER_BY_SEVERITY[labels["severity"]]
    assert _routed(CONFIG, labels) == expected, labels


# ---- the AlertmanagerConfig (prometheus-operator) -----------------------------------------


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """k8s/overlays/prod as `kubectl kustomize` renders it (secrets.env from its example, with
    webhook URLs where it asks for them)."""
    tree = _k8s_tree(tmp_path_factory.mktemp("k8s"))
    env = tree / "overlays/prod/secrets.env"
    lines = [
        f"{line.partition('=')[0]}=https://hooks.example.com/{line.partition('=')[0]}"
        if line.startswith("alert-") and "-webhook-url=" in line
        else line
        for line in env.read_text().splitlines()
    ]
    env.write_text("\n".join(lines) + "\n")
    result = kustomize(tree / "overlays/prod")
    assert result.returncode == 0, result.stderr
    return yaml_documents(result.stdout)


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def _matcher(crd: dict[str, str]) -> str:
    return f'{crd["name"]}{crd.get("matchType", "=")}"{crd["value"]}"'


def _route(crd: dict[str, Any]) -> dict[str, Any]:
    """An AlertmanagerConfig route in Alertmanager's own format."""
    names = {
        "groupBy": "group_by",
        "groupWait": "group_wait",
        "groupInterval": "group_interval",
        "repeatInterval": "repeat_interval",
    }
    out: dict[str, Any] = {
        names.get(k, k): v for k, v in crd.items() if k not in ("matchers", "routes")
    }
    if "matchers" in crd:
        out["matchers"] = [_matcher(m) for m in crd["matchers"]]
    if "routes" in crd:
        out["routes"] = [_route(child) for child in crd["routes"]]
    return out


def as_alertmanager_config(crd: dict[str, Any], secret: dict[str, Any]) -> dict[str, Any]:
    """What the operator hands Alertmanager for `crd`: its routes under a route for its
    namespace, the receivers' URLs read from `secret`."""
    namespace = crd["metadata"].get("namespace", "inkwell")
    spec = crd["spec"]
    receivers = []
    for receiver in spec["receivers"]:
        hooks = []
        for hook in receiver["webhookConfigs"]:
            ref = hook["urlSecret"]
            assert ref["name"] == secret["metadata"]["name"], ref
            url = base64.b64decode(secret["data"][ref["key"]]).decode()
            hooks.append({"url": url, "send_resolved": hook.get("sendResolved", True)})
        receivers.append({"name": receiver["name"], "webhook_configs": hooks})
    scoped = _route(spec["route"]) | {"matchers": [f'namespace="{namespace}"']}
    inhibit = [
        {
            "source_matchers": [_matcher(m) for m in rule["sourceMatch"]],
            "target_matchers": [_matcher(m) for m in rule["targetMatch"]],
            "equal": rule["equal"],
        }
        for rule in spec.get("inhibitRules", [])
    ]
    return {
        "route": {"receiver": "null", "routes": [scoped]},
        "receivers": [{"name": "null"}, *receivers],
        "inhibit_rules": inhibit,
    }


def test_alertmanagerconfig_passes_its_strict_crd_schema(prod: list[dict[str, Any]]) -> None:
    """The schema is strict where the CRD is (its child routes are free-form there too: the
    operator checks them, and amtool does below)."""
    crd = _one(prod, "AlertmanagerConfig")
    assert schema_errors(crd) == []
    misspelt = copy.deepcopy(crd)
    misspelt["spec"]["route"]["groupby"] = misspelt["spec"]["route"].pop("groupBy")
    assert any("'groupby' was unexpected" in e for e in schema_errors(misspelt))
    plain_url = copy.deepcopy(crd)
    plain_url["spec"]["receivers"][0]["webhookConfigs"][0]["urlSecret"] = "http://pager"
    assert any("urlSecret" in e for e in schema_errors(plain_url))
    bad_type = copy.deepcopy(crd)
    bad_type["spec"]["inhibitRules"][0]["sourceMatch"][0]["matchType"] = "=="
    assert any("matchType" in e for e in schema_errors(bad_type))


def test_alertmanagerconfig_reads_every_receiver_url_from_the_generated_secret(
    prod: list[dict[str, Any]],
) -> None:
    crd = _one(prod, "AlertmanagerConfig")
    secret = _one(prod, "Secret")
    hooks = [h for r in crd["spec"]["receivers"] for h in r["webhookConfigs"]]
    assert hooks and all("url" not in hook for hook in hooks), "no URL written in the manifest"
    for hook in hooks:
        assert hook["urlSecret"]["name"] == secret["metadata"]["name"]  # the hashed name
        assert hook["urlSecret"]["key"] in secret["data"]
    assert crd["metadata"]["namespace"] == secret["metadata"]["namespace"] == "inkwell"


def test_alertmanagerconfig_is_what_the_file_says(tmp_path: Path) -> None:
    """Generated from alertmanager.yml: same receivers, same routes, nothing else."""
    (crd,) = yaml_documents(CRD.read_text())
    config = yaml.safe_load(CONFIG.read_text())
    assert [r["name"] for r in crd["spec"]["receivers"]] == [r["name"] for r in config["receivers"]]
    assert _route(crd["spec"]["route"]) == config["route"]


def test_alertmanagerconfig_as_the_operator_loads_it_passes_amtool(
    prod: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = as_alertmanager_config(_one(prod, "AlertmanagerConfig"), _one(prod, "Secret"))
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = _amtool("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: str(r["alert"]))
def test_alertmanagerconfig_routes_each_alert_as_the_file_does(
    prod: list[dict[str, Any]], tmp_path: Path, rule: dict[str, object]
) -> None:
    config = as_alertmanager_config(_one(prod, "AlertmanagerConfig"), _one(prod, "Secret"))
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    labels = _labels(rule)
    assert (
        _routed(path, labels) == _routed(CONFIG, labels) == RECEIVER_BY_SEVERITY[labels["severity"]]
    )
    # Another install's alerts do not reach this install's receivers.
    assert _routed(path, labels | {"namespace": "elsewhere"}) == "null"
