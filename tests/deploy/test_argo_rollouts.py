"""The Argo Rollouts overlay (k8s/overlays/prod-argo) and the validation of Argo resources.

Guards: the overlay's Rollout, AnalysisTemplate and an AnalysisRun made from them pass the
strict CRD schemas shipped in k8s/schemas, and a broken one (unknown field, missing template,
missing argument) fails; the Rollout really replaces prod's service Deployments and the
router's controller, its steps run Inkwell's model-quality checks, its Services select its pods,
its pods equal prod's stable pods, and the ServiceMonitor labels each pod by its role once.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.deploy.custom_resources import argo_errors, schema_errors
from tests.deploy.helpers import yaml_documents
from tests.deploy.test_kubernetes import _k8s_tree, kustomize

# Every test reads the overlays as `kubectl kustomize` renders them (a process).
pytestmark = pytest.mark.integration

QUALITY = "inkwell-canary-quality"
ROUTER_WEIGHT = "inkwell-router-weight"


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """prod and prod-argo as `kubectl kustomize` renders them."""
    tree = _k8s_tree(tmp_path_factory.mktemp("k8s"))
    out = {}
    for overlay in ("prod", "prod-argo"):
        result = kustomize(tree / "overlays" / overlay)
        assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
        out[overlay] = yaml_documents(result.stdout)
    return out


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def _analysis_run(
    template: dict[str, Any], namespace: str, values: dict[str, str] | None = None
) -> dict[str, Any]:
    """The AnalysisRun Argo makes from `template` for one step: its metrics, arguments set
    (`values` by name, else the template's value, else the namespace)."""
    given = values or {}
    args = [
        {"name": a["name"], "value": given.get(a["name"], a.get("value", namespace))}
        for a in template["spec"]["args"]
    ]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisRun",
        "metadata": {"name": "inkwell-service-6d4f9c-2-2", "namespace": namespace},
        "spec": {"metrics": copy.deepcopy(template["spec"]["metrics"]), "args": args},
    }


# ---- the validator ------------------------------------------------------------------------


def test_argo_resources_pass_the_shipped_strict_schemas(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    argo = [d for d in docs["prod-argo"] if d["apiVersion"].startswith("argoproj.io/")]
    assert {d["kind"] for d in argo} == {"Rollout", "AnalysisTemplate"}
    assert argo_errors(docs["prod-argo"]) == []
    templates = [d for d in argo if d["kind"] == "AnalysisTemplate"]
    assert {t["metadata"]["name"] for t in templates} == {
        "inkwell-canary-quality",
        "inkwell-router-weight",
    }
    for template in templates:
        assert schema_errors(_analysis_run(template, "inkwell")) == []


def test_a_rollout_with_an_unknown_field_fails_validation(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    rollout = copy.deepcopy(_one(docs["prod-argo"], "Rollout"))
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWieght"] = 20
    errors = schema_errors(rollout)
    assert any("setWieght" in e for e in errors), errors
    deep = copy.deepcopy(_one(docs["prod-argo"], "Rollout"))
    deep["spec"]["template"]["spec"]["containers"][0]["resources"]["request"] = {"cpu": "1"}
    assert any("'request' was unexpected" in e for e in schema_errors(deep))


def test_a_rollout_with_a_wrongly_typed_value_fails_validation(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    rollout = copy.deepcopy(_one(docs["prod-argo"], "Rollout"))
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWeight"] = "twenty"
    assert any("setWeight" in e for e in schema_errors(rollout))


def test_a_rollout_step_naming_a_missing_template_fails_validation(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    broken = copy.deepcopy(docs["prod-argo"])
    rollout = _one(broken, "Rollout")
    step = next(s for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s)
    step["analysis"]["templates"][0]["templateName"] = "inkwell-canary-qualty"
    assert schema_errors(rollout) == [], "the schema cannot see this: the references do"
    errors = argo_errors(broken)
    assert any("no AnalysisTemplate 'inkwell-canary-qualty'" in e for e in errors), errors


def test_a_rollout_step_missing_a_template_argument_fails_validation(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    broken = copy.deepcopy(docs["prod-argo"])
    steps = _one(broken, "Rollout")["spec"]["strategy"]["canary"]["steps"]
    quality = next(s for s in steps if _template_of(s) == QUALITY)
    quality["analysis"]["args"] = []
    assert any("needs the arguments ['namespace']" in e for e in argo_errors(broken))
    router = next(s for s in steps if _template_of(s) == ROUTER_WEIGHT)
    router["analysis"]["args"] = router["analysis"]["args"][1:]
    assert any("needs the arguments ['weight']" in e for e in argo_errors(broken))


def test_a_rollout_naming_a_missing_or_foreign_service_fails_validation(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    broken = copy.deepcopy(docs["prod-argo"])
    _one(broken, "Rollout")["spec"]["strategy"]["canary"]["canaryService"] = "inkwell-canary"
    assert any("no Service 'inkwell-canary'" in e for e in argo_errors(broken))
    foreign = copy.deepcopy(docs["prod-argo"])
    _one(foreign, "Rollout")["spec"]["strategy"]["canary"]["stableService"] = "inkwell-router"
    assert any("inkwell-router selects other pods" in e for e in argo_errors(foreign))


def test_an_analysis_run_with_an_unknown_provider_field_fails_validation(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    run = _analysis_run(_one(docs["prod-argo"], "AnalysisTemplate", QUALITY), "inkwell")
    run["spec"]["metrics"][0]["provider"]["prometheus"]["querry"] = "up"
    assert any("querry" in e for e in schema_errors(run))


def test_a_kind_without_a_shipped_schema_is_an_error_not_a_pass() -> None:
    experiment = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "inkwell-service"},
        "spec": {},
    }
    (error,) = schema_errors(experiment)
    assert "no schema" in error


# ---- the overlay --------------------------------------------------------------------------


def test_the_rollout_replaces_the_service_deployments_and_the_router_controller(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    from router.settings import RouterSettings

    argo = docs["prod-argo"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in argo}
    for name in ("inkwell-service-stable", "inkwell-service-canary"):
        assert ("Deployment", name) not in kinds and ("HorizontalPodAutoscaler", name) not in kinds
        assert ("Service", f"{name}-pods") not in kinds
    assert ("PodDisruptionBudget", "inkwell-service-stable") not in kinds
    rollout = _one(argo, "Rollout", "inkwell-service")
    hpa = _one(argo, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "name": "inkwell-service",
    }
    pdb = _one(argo, "PodDisruptionBudget", "inkwell-service")
    assert pdb["spec"]["selector"]["matchLabels"] == rollout["spec"]["selector"]["matchLabels"]
    config = _one(argo, "ConfigMap", "inkwell-config")["data"]
    settings = RouterSettings(
        **{
            k.removeprefix("INKWELL_ROUTER_").lower(): v
            for k, v in config.items()
            if k.startswith("INKWELL_ROUTER_")
        }
    )
    assert settings.controller is False
    # The Rollout's steps set the router's share; before the first release ran, nobody.
    assert settings.canary_weight == 0
    canary = rollout["spec"]["strategy"]["canary"]
    assert settings.stable_url == f"http://{canary['stableService']}:8001"
    assert settings.canary_url == f"http://{canary['canaryService']}:8002"
    assert canary["stableMetadata"]["labels"] == {"inkwell.io/variant": "stable"}
    assert canary["canaryMetadata"]["labels"] == {"inkwell.io/variant": "canary"}


def test_the_rollout_judges_the_canary_with_inkwells_model_quality_checks(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    argo = docs["prod-argo"]
    rollout = _one(argo, "Rollout")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    judged = [i for i, step in enumerate(steps) if _template_of(step) == QUALITY]
    assert len(judged) == 3
    for index in judged:  # each check reads 5-minute rates that filled after the step's weight
        assert "pause" in steps[index - 1] and "setWeight" in steps[index - 3]
    analysis = steps[judged[0]]["analysis"]
    (ref,) = analysis["templates"]
    template = _one(argo, "AnalysisTemplate", ref["templateName"])
    queries = " ".join(m["provider"]["prometheus"]["query"] for m in template["spec"]["metrics"])
    for recorded in (
        "variant:inkwell_service_prediction_confidence:mean5m",
        "inkwell_router_shadow_agreement:ratio_rate15m",
        "variant:inkwell_router_online_accuracy:ratio_rate1h",
    ):
        assert recorded in queries
    assert analysis["args"] == [
        {"name": "namespace", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]


def _template_of(step: dict[str, Any]) -> str | None:
    if "analysis" not in step:
        return None
    (ref,) = step["analysis"]["templates"]
    return str(ref["templateName"])


def _router_weight(step: dict[str, Any]) -> float:
    (arg,) = [a for a in step["analysis"]["args"] if a["name"] == "weight"]
    return float(arg["value"])


def test_the_rollout_climbs_a_staircase_of_pods_and_users_together(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    """5 -> 20 -> 50 -> 100 % for the canary's pods and for its users, each check judging a
    canary whose share of users equals its share of pods (capacity follows the traffic)."""
    steps = _one(docs["prod-argo"], "Rollout")["spec"]["strategy"]["canary"]["steps"]
    pods, users = 0, None
    pod_weights, user_weights = [], []
    for step in steps:
        if "setWeight" in step:
            pods = step["setWeight"]
            pod_weights.append(pods)
            # Only the last step may give stable's pods away, once no user is left on them.
            assert pods < 100 or users == 100
        elif _template_of(step) == ROUTER_WEIGHT:
            users = _router_weight(step)
            user_weights.append(users)
            assert users <= pods or pods == 50, "users ahead of the pods before the last step"
        elif _template_of(step) == QUALITY:
            assert users == pods, f"judged at {users} % of users on {pods} % of the pods"
    assert pod_weights == [5, 20, 50, 100]
    assert user_weights == [0, 5, 20, 50, 100]
    assert _template_of(steps[0]) == ROUTER_WEIGHT, "a new canary starts with no users"


def test_the_router_weight_step_drives_a_real_router(
    docs: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The AnalysisRun's web request, as Argo sends it, against a real router: the PUT sets the
    split and the step's successCondition holds on the answer (and fails for another weight)."""
    import json

    import httpx

    from router.app import create_app
    from router.settings import RouterSettings
    from tests.router.router_fakes import FakeService, serve_in_thread

    key = "argo-step-admin-key-0123456789"
    template = _one(docs["prod-argo"], "AnalysisTemplate", ROUTER_WEIGHT)
    run = _analysis_run(template, "inkwell", {"weight": "20", "admin-key": key})
    args = {a["name"]: a["value"] for a in run["spec"]["args"]}
    (metric,) = run["spec"]["metrics"]

    def substituted(text: str) -> str:
        return re.sub(r"\{\{args\.([\w-]+)\}\}", lambda m: args[m[1]], text)

    web = metric["provider"]["web"]
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    with serve_in_thread(stable.app()) as stable_url, serve_in_thread(canary.app()) as canary_url:
        settings = RouterSettings(
            home=tmp_path,
            stable_url=stable_url,
            canary_url=canary_url,
            controller=False,
            admin_api_key=key,
        )
        with serve_in_thread(create_app(settings)) as router_url:
            url = substituted(web["url"])
            assert url.startswith("http://inkwell-router.inkwell.svc:8000/")
            answer = httpx.request(
                web["method"],
                url.replace("http://inkwell-router.inkwell.svc:8000", router_url),
                headers={h["key"]: substituted(h["value"]) for h in web["headers"]},
                content=substituted(web["body"]),
                timeout=web["timeoutSeconds"],
            )
            assert answer.status_code == 200, answer.text
            now = httpx.get(f"{router_url}/admin/canary/weight", headers={"X-API-Key": key})
    assert now.json()["weight"] == 20
    assert web["jsonPath"] == "{$.weight}"
    result = json.loads(answer.text)["weight"]
    condition = re.fullmatch(r"result == (\S+)", substituted(metric["successCondition"]))
    assert condition is not None and result == float(condition[1])
    other = re.fullmatch(
        r"result == (\S+)", metric["successCondition"].replace("{{args.weight}}", "50")
    )
    assert other is not None and result != float(other[1])


def test_the_router_weight_step_reads_the_admin_key_from_the_generated_secret(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    template = _one(docs["prod-argo"], "AnalysisTemplate", ROUTER_WEIGHT)
    (key,) = [a for a in template["spec"]["args"] if a["name"] == "admin-key"]
    ref = key["valueFrom"]["secretKeyRef"]
    secret = _one(docs["prod-argo"], "Secret", ref["name"])  # the hashed name kustomize made
    assert ref["key"] in secret["data"]
    router = _one(docs["prod-argo"], "Deployment", "inkwell-router")
    env = router["spec"]["template"]["spec"]["containers"][0]["env"]
    (admin,) = [e for e in env if e["name"] == "INKWELL_ROUTER_ADMIN_API_KEY"]
    assert admin["valueFrom"]["secretKeyRef"] == ref, "the step's key is the router's admin key"


def test_the_rollout_pods_are_prods_stable_pods(docs: dict[str, list[dict[str, Any]]]) -> None:
    """One pod spec, two places: the Rollout must not drift from the prod Deployment."""
    stable = _one(docs["prod"], "Deployment", "inkwell-service-stable")["spec"]["template"]
    rollout = _one(docs["prod-argo"], "Rollout")["spec"]["template"]
    expected = copy.deepcopy(stable["spec"])
    for constraint in expected["topologySpreadConstraints"]:
        constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] = "inkwell-service"
    assert rollout["spec"] == expected
    assert rollout["metadata"]["annotations"] == stable["metadata"]["annotations"]
    labels = dict(stable["metadata"]["labels"], **{"app.kubernetes.io/instance": "inkwell-service"})
    del labels["inkwell.io/variant"]
    assert rollout["metadata"]["labels"] == labels


def test_the_stable_and_canary_services_select_the_rollouts_pods(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    argo = docs["prod-argo"]
    pod_labels = _one(argo, "Rollout")["spec"]["template"]["metadata"]["labels"]
    for name in ("inkwell-service-stable", "inkwell-service-canary"):
        selector = _one(argo, "Service", name)["spec"]["selector"]
        assert selector.items() <= pod_labels.items(), name
    policy = _one(argo, "NetworkPolicy", "inkwell-service")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize(
    ("service", "pod_variant", "kept"),
    [
        ("inkwell-router", "", True),
        ("inkwell-trainer", "", True),
        ("inkwell-service-stable", "stable", True),
        ("inkwell-service-canary", "canary", True),
        # Between releases Argo points both Services at stable's pods: scraped once.
        ("inkwell-service-canary", "stable", False),
        ("inkwell-service-stable", "canary", False),
    ],
)
def test_the_servicemonitor_scrapes_each_pod_once_labelled_by_its_role(
    docs: dict[str, list[dict[str, Any]]], service: str, pod_variant: str, kept: bool
) -> None:
    monitor = _one(docs["prod-argo"], "ServiceMonitor")
    keep, label = monitor["spec"]["endpoints"][0]["relabelings"]
    assert keep["action"] == "keep"
    value = keep["separator"].join([service, pod_variant])
    # Prometheus anchors relabel regexes at both ends.
    assert bool(re.fullmatch(keep["regex"], value)) is kept
    assert label["targetLabel"] == "variant"
    assert label["sourceLabels"] == ["__meta_kubernetes_pod_label_inkwell_io_variant"]
    if kept and pod_variant:
        assert re.fullmatch(label["regex"], pod_variant)


def _schemas_build() -> ModuleType:
    """k8s/schemas/build.py, imported from its path (a script, not a package)."""
    import importlib.util

    from tests.deploy.helpers import K8S

    spec = importlib.util.spec_from_file_location("schemas_build", K8S / "schemas" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_schema_build_closes_listed_objects_and_keeps_free_form_ones_open() -> None:
    """k8s/schemas/build.py's strictness, on a CRD-shaped schema."""
    build = _schemas_build()
    crd = {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"properties": {"setWeight": {"type": "integer"}}}},
            "plugins": {"type": "object", "properties": {}, "nullable": True},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    strict = build.strict(crd)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["steps"]["items"]["additionalProperties"] is False
    assert strict["properties"]["plugins"] == {"type": ["object", "null"], "properties": {}}
    assert strict["properties"]["labels"]["additionalProperties"] == {"type": "string"}


def test_schema_build_drops_pydantic_annotations_but_not_fields_of_those_names() -> None:
    """The prometheus-operator schemas come from pydantic models: their `title`s and `default`s
    go, a field called `title` stays."""
    build = _schemas_build()
    model = {
        "title": "Rule",
        "properties": {"title": {"type": "string", "title": "Title", "default": ""}},
    }
    assert build.without(model, build.PYDANTIC_ONLY) == {
        "properties": {"title": {"type": "string"}}
    }


# ---- the relabelling, in a real Prometheus -----------------------------------------------

# (Service the endpoint belongs to, the pod's Argo role label) -> kept, and the variant seen.
ENDPOINTS = {
    ("inkwell-router", ""): ("", True),
    ("inkwell-router-pods", ""): ("", False),
    ("inkwell-service-stable", "stable"): ("stable", True),
    ("inkwell-service-canary", "canary"): ("canary", True),
    # Between releases Argo points both Services at stable's pods: each is scraped once.
    ("inkwell-service-canary", "stable"): ("", False),
}


def _prometheus_relabel_configs(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """The ServiceMonitor's relabelings as the prometheus-operator writes them for Prometheus."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [
        {names.get(key, key): value for key, value in rule.items()}
        for rule in monitor["spec"]["endpoints"][0]["relabelings"]
    ]


def test_servicemonitor_labels_each_service_pod_by_its_role_once_in_prometheus(
    docs: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Every Argo pod runs `--variant stable`; Prometheus must label its series by its role."""
    import os

    import httpx
    import yaml
    from prometheus_client import start_http_server

    from service.metrics import ServiceMetrics
    from tests.harness import Process, free_port, wait_until

    servers, static = [], []
    for (service, role), _ in ENDPOINTS.items():
        metrics = ServiceMetrics("stable")  # sets inkwell_service_ready{variant="stable"}
        port = free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=metrics.registry))
        labels = {"__meta_kubernetes_service_name": service, "pod": f"{service}-{role}"}
        if role:
            labels["__meta_kubernetes_pod_label_inkwell_io_variant"] = role
        static.append({"targets": [f"127.0.0.1:{port}"], "labels": labels})
    monitor = _one(docs["prod-argo"], "ServiceMonitor")
    config = {
        "global": {"scrape_interval": "200ms"},
        "scrape_configs": [
            {
                "job_name": "inkwell",
                "static_configs": static,
                "relabel_configs": _prometheus_relabel_configs(monitor),
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = Process(
        f"prometheus-{port}",
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        tmp_path / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"

    def query(expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{url}/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    kept = sum(1 for _, keep in ENDPOINTS.values() if keep)
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 60, "prom", proc)
        wait_until(lambda: len(query("up == 1")) == kept, 30, "kept targets scraped", proc)
        seen = {r["metric"]["pod"]: r["metric"].get("variant", "") for r in query("up == 1")}
        assert seen == {
            f"{service}-{role}": variant
            for (service, role), (variant, keep) in ENDPOINTS.items()
            if keep
        }
        # The process says `stable`; the pod's role wins, and the process's label is kept aside.
        ready = {r["metric"]["pod"]: r["metric"] for r in query("inkwell_service_ready")}
        assert set(ready) == set(seen)
        canary = ready["inkwell-service-canary-canary"]
        assert (canary["variant"], canary["exported_variant"]) == ("canary", "stable")
        assert ready["inkwell-service-stable-stable"]["variant"] == "stable"
    finally:
        proc.stop()
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
