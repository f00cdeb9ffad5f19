"""The Kubernetes manifests: built by the real kustomize, validated against real API schemas.

Guards: every overlay builds with `kubectl kustomize` and passes `kubernetes-validate --strict`
for an old and a current Kubernetes; only current kustomize fields; one resource per file,
named `<app>-<kind>.yaml` and opening with a comment; probes, resources and security contexts
on every container; selectors, ports, Secret keys and ConfigMaps that really connect; settings
keys the components really read; the monitoring ConfigMaps equal the files in monitoring/.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.custom_resources import SHIPPED_GROUPS, custom_resource_errors, schema_errors
from tests.deploy.helpers import (
    DASHBOARDS_DIR,
    K8S,
    KUBERNETES_VERSIONS,
    MONITORING,
    OVERLAYS,
    REPO,
    RULES_DIR,
    filled_env_file,
    kubectl,
    settings_env_keys,
    tool,
    yaml_documents,
)

# Nearly every test reads the overlays as `kubectl kustomize` renders them (a process).
pytestmark = pytest.mark.integration

# Overlays built on prod: schema-validated and checked on what they add.
EXTRA_OVERLAYS = ("prod-gpu", "prod-capacity", "prod-argo", "ingress-nginx")
KIND_SUFFIX = {
    "AlertmanagerConfig": "alertmanagerconfig",
    "AnalysisTemplate": "analysistemplate",
    "ConfigMap": "configmap",
    "CronJob": "cronjob",
    "Deployment": "deployment",
    "HorizontalPodAutoscaler": "hpa",
    "Ingress": "ingress",
    "Job": "job",
    "Namespace": "namespace",
    "NetworkPolicy": "networkpolicy",
    "PersistentVolumeClaim": "pvc",
    "PodDisruptionBudget": "pdb",
    "PrometheusRule": "prometheusrule",
    "Role": "role",
    "Rollout": "rollout",
    "RoleBinding": "rolebinding",
    "Service": "service",
    "ServiceAccount": "serviceaccount",
    "ServiceMonitor": "servicemonitor",
    "StatefulSet": "statefulset",
}
DEPRECATED_KUSTOMIZE_FIELDS = {
    "bases",
    "patchesStrategicMerge",
    "patchesJson6902",
    "commonLabels",
    "vars",
    "imageTags",
}
# Container command -> settings class that reads its environment.
SETTINGS = {
    "service": ("service.settings", "ServiceSettings"),
    "router": ("router.settings", "RouterSettings"),
    "trainer": ("trainer.settings", "TrainerSettings"),
    "train": ("inkwell.settings", "CoreSettings"),
    "mlflow": ("inkwell.settings", "RegistryAccessSettings"),
}
# The MLflow user each `inkwell` command runs as (docs/deploy.md): only the services read only.
MLFLOW_USERS = {
    "service": "inkwell-service",
    "router": "inkwell-router",
    "trainer": "inkwell-trainer",
    "train": "inkwell-trainer",
}
PREFIXES = {
    "INKWELL_SERVICE_": "service",
    "INKWELL_ROUTER_": "router",
    "INKWELL_TRAINER_": "trainer",
    "INKWELL_MLFLOW_": "mlflow",
}


def _k8s_tree(tmp: Path) -> Path:
    """A copy of k8s/ and monitoring/ with prod's secrets.env made from its example (real keys
    in place of its placeholders, as a user does)."""
    shutil.copytree(K8S, tmp / "k8s")
    shutil.copytree(MONITORING, tmp / "monitoring")
    prod = tmp / "k8s" / "overlays" / "prod"
    filled_env_file(prod / "secrets.env.example", prod / "secrets.env")
    return tmp / "k8s"


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each overlay's `kubectl kustomize` output."""
    tree = _k8s_tree(tmp_path_factory.mktemp("k8s"))
    out: dict[str, str] = {}
    for overlay in (*OVERLAYS, *EXTRA_OVERLAYS):
        result = kustomize(tree / "overlays" / overlay)
        assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
        out[overlay] = result.stdout
    return out


@pytest.fixture(scope="module")
def resources(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {overlay: yaml_documents(text) for overlay, text in rendered.items()}


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything that runs pods; a CronJob as its job template (same `spec.template` path)."""
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    for cron in (d for d in docs if d["kind"] == "CronJob"):
        found.append({**cron, "kind": "Job", "spec": cron["spec"]["jobTemplate"]["spec"]})
    return found


def _containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


# ---- build and schema ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("overlay", (*OVERLAYS, *EXTRA_OVERLAYS))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_overlay_passes_strict_schema_validation(
    rendered: dict[str, str], overlay: str, version: str
) -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate")
    result = subprocess.run(
        [validate, "--strict", "--kubernetes-version", version, "-"],
        input=rendered[overlay],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = (result.stdout + result.stderr).splitlines()
    # Custom resources are validated against the strict schemas shipped in k8s/schemas instead.
    unchecked = [
        line
        for line in output
        if line.startswith("WARN") and not any(group in line for group in SHIPPED_GROUPS)
    ]
    assert not unchecked, "resources without a schema:\n" + "\n".join(unchecked)
    passed = [line for line in output if "passed for resource" in line]
    docs = yaml_documents(rendered[overlay])
    shipped = [d for d in docs if d["apiVersion"].startswith(SHIPPED_GROUPS)]
    assert custom_resource_errors(docs) == []
    assert len(passed) + len(shipped) == len(docs)


@pytest.mark.integration
def test_schema_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The validator is strict for real: a misspelt field fails it."""
    validate = tool("kubernetes-validate", "pip install kubernetes-validate")
    service = yaml.safe_load((K8S / "base/inkwell-router-service.yaml").read_text())
    service["spec"]["selectr"] = {}
    result = subprocess.run(
        [validate, "--strict", "-"], input=yaml.safe_dump(service), capture_output=True, text=True
    )
    assert result.returncode != 0


def test_operator_resources_with_an_unknown_field_fail_their_shipped_schema(
    resources: dict[str, list[dict[str, Any]]],
) -> None:
    """ServiceMonitor, PrometheusRule and AlertmanagerConfig are checked as strictly as the
    built-in kinds (schemas in k8s/schemas/monitoring.coreos.com)."""
    for kind in ("ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"):
        (doc,) = _by_kind(resources["prod"], kind)
        assert schema_errors(doc) == [], kind
        broken = {**doc, "spec": {**doc["spec"], "selectr": {}}}
        assert any("'selectr' was unexpected" in e for e in schema_errors(broken)), kind


@pytest.mark.integration
def test_prod_refuses_to_build_without_its_secrets_file(tmp_path: Path) -> None:
    tree = _k8s_tree(tmp_path)
    (tree / "overlays/prod/secrets.env").unlink()
    result = kustomize(tree / "overlays/prod")
    assert result.returncode != 0
    assert "secrets.env" in result.stderr


def test_kustomizations_use_only_current_fields() -> None:
    files = [*K8S.rglob("kustomization.yaml"), MONITORING / "kustomization.yaml"]
    assert len(files) >= 5
    for path in files:
        fields = set(yaml.safe_load(path.read_text()))
        old = fields & DEPRECATED_KUSTOMIZE_FIELDS
        assert not old, f"{path.relative_to(REPO)} uses deprecated fields {sorted(old)}"
        for generator in yaml.safe_load(path.read_text()).get("secretGenerator", []):
            assert "env" not in generator, "secretGenerator `env:` is deprecated: use `envs:`"


def test_each_resource_file_holds_one_resource_named_app_kind_with_a_header() -> None:
    # kustomize transformer configurations are not resources.
    configurations = {
        kustomization.parent / name
        for kustomization in K8S.rglob("kustomization.yaml")
        for name in yaml.safe_load(kustomization.read_text()).get("configurations", [])
    }
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.stem.endswith("-patch"):
            continue
        if path in configurations:
            assert path.read_text().startswith("#"), f"{path.relative_to(REPO)}: say what for"
            continue
        text = path.read_text()
        assert text.startswith("#"), f"{path.relative_to(REPO)} must open with what it is for"
        docs = yaml_documents(text)
        assert len(docs) == 1, f"{path.relative_to(REPO)}: one resource per file"
        kind, name = docs[0]["kind"], docs[0]["metadata"]["name"]
        suffix = KIND_SUFFIX[kind]
        assert path.stem.endswith(f"-{suffix}"), f"{path.name}: name it <app>-{suffix}.yaml"
        app = path.stem.removesuffix(f"-{suffix}")
        assert name.startswith(app), f"{path.name} holds {kind} {name}"


def test_every_base_file_is_listed_in_the_base_kustomization() -> None:
    listed = set(yaml.safe_load((K8S / "base/kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk <= listed, f"not in resources: {sorted(on_disk - listed)}"


# ---- workloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_use_stable_canary_names(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    names = {w["metadata"]["name"] for w in _workloads(resources[overlay])}
    assert names == {
        "inkwell-service-stable",
        "inkwell-service-canary",
        "inkwell-router",
        "inkwell-trainer",
        "inkwell-mlflow",
        "inkwell-minio",
        "inkwell-minio-bucket",
        "inkwell-mlflow-users",
        "inkwell-postgres",
        "inkwell-postgres-backup",
    } | ({"inkwell-mnist"} if overlay == "prod" else set())
    for workload in _workloads(resources[overlay]):
        name = workload["metadata"]["name"]
        if name.startswith("inkwell-service-"):
            variant = name.removeprefix("inkwell-service-")
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert labels["inkwell.io/variant"] == variant
            container = workload["spec"]["template"]["spec"]["containers"][0]
            assert container["args"] == ["inkwell", "service", "--variant", variant]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_resources_and_a_locked_down_security_context(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for workload in _workloads(resources[overlay]):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"] if workload["kind"] != "Job" else []:
            assert "readinessProbe" in container and "livenessProbe" in container, name
        for container in _containers(workload):
            where = f"{name}/{container['name']}"
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), where
            assert "memory" in container["resources"]["limits"], where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_set_by_the_overlay(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    expected = {"dev": "inkwell:dev", "prod": "registry.example.com/inkwell/inkwell:0.1.0"}
    for workload in _workloads(resources[overlay]):
        for container in _containers(workload):
            image = container["image"]
            if workload["metadata"]["name"].startswith("inkwell-postgres"):
                assert re.fullmatch(r"postgres:\d+\.\d+-\w+", image)
            elif workload["metadata"]["name"].startswith("inkwell-minio"):
                assert re.fullmatch(r"minio/(minio|mc):RELEASE\.[\dTZ-]+", image), image
            else:
                assert image == expected[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_has_the_recommended_labels(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for doc in resources[overlay]:
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "inkwell", where
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", where
        assert labels.get("app.kubernetes.io/name", "").startswith("inkwell"), where
    for workload in _workloads(resources[overlay]):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app.kubernetes.io/part-of"] == "inkwell"
        assert (
            pod_labels["app.kubernetes.io/name"]
            == workload["metadata"]["labels"]["app.kubernetes.io/name"]
        )


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_hpas_pdbs_and_policies_select_real_pods_and_ports(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = resources[overlay]
    pods = [
        (w["spec"]["template"]["metadata"]["labels"], w["spec"]["template"]["spec"])
        for w in _workloads(docs)
    ]
    for service in _by_kind(docs, "Service"):
        selected = [spec for labels, spec in pods if _matches(service["spec"]["selector"], labels)]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
        port_names = {p["name"] for c in selected[0]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    workload_names = {w["metadata"]["name"] for w in _workloads(docs)}
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in workload_names
    for pdb in _by_kind(docs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(_matches(selector, labels) for labels, _ in pods)
    for policy in _by_kind(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert any(_matches(selector, labels) for labels, _ in pods)
        for rule in policy["spec"].get("ingress", []):
            for source in rule.get("from", []):
                peer = source.get("podSelector", {}).get("matchLabels")
                if peer:
                    assert any(_matches(peer, labels) for labels, _ in pods), policy


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against an object's labels."""
    if not _matches(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@pytest.mark.parametrize("overlay", ["prod", "prod-capacity"])
def test_the_servicemonitor_scrapes_every_pod_through_one_service_only(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = resources[overlay]
    (monitor,) = _by_kind(docs, "ServiceMonitor")
    scraped = [
        s
        for s in _by_kind(docs, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
    ]
    assert {s["metadata"]["name"] for s in scraped} >= {"inkwell-router", "inkwell-trainer"}
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads(docs)]
    for labels in pods:
        through = [
            s["metadata"]["name"] for s in scraped if _matches(s["spec"]["selector"], labels)
        ]
        assert len(through) <= 1, f"pods {labels} are scraped through {through}: rates doubled"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_and_configmap_references_resolve(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = resources[overlay]
    secrets = {s["metadata"]["name"]: s for s in _by_kind(docs, "Secret")}
    configmaps = {c["metadata"]["name"] for c in _by_kind(docs, "ConfigMap")}
    claims = {c["metadata"]["name"] for c in _by_kind(docs, "PersistentVolumeClaim")}
    for workload in _workloads(docs):
        for container in _containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["data"], ref
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_storage_is_persistent_where_state_lives(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = resources[overlay]
    stores = {s["metadata"]["name"]: s for s in _by_kind(docs, "StatefulSet")}
    # Database and artifact store; MLflow itself keeps no state (it proxies to S3).
    assert set(stores) == {"inkwell-postgres", "inkwell-minio"}
    for store in stores.values():
        assert store["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    claims = {c["metadata"]["name"]: c for c in _by_kind(docs, "PersistentVolumeClaim")}
    mnist = {"inkwell-mnist"} if overlay == "prod" else set()
    assert set(claims) == {"inkwell-trainer-home", "inkwell-postgres-backup"} | mnist
    if overlay == "prod":
        for claim in claims.values():
            assert claim["spec"]["storageClassName"]
        for store in stores.values():
            assert store["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"]


# ---- settings -----------------------------------------------------------------------------


def _settings_class(command: str) -> type[Any]:
    module_name, class_name = SETTINGS[command]
    settings_cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return settings_cls


def _container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom, then env with $(VAR) expanded."""
    import base64

    configmaps = {c["metadata"]["name"]: c["data"] for c in _by_kind(docs, "ConfigMap")}
    secrets = {s["metadata"]["name"]: s["data"] for s in _by_kind(docs, "Secret")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
    return env


def test_shared_configmap_keys_are_all_read_by_some_component(
    resources: dict[str, list[dict[str, Any]]],
) -> None:
    config = next(
        c
        for c in _by_kind(resources["prod"], "ConfigMap")
        if c["metadata"]["name"] == "inkwell-config"
    )
    core = settings_env_keys(_settings_class("train"))
    for key in config["data"]:
        component = next((c for p, c in PREFIXES.items() if key.startswith(p)), None)
        known = core if component is None else settings_env_keys(_settings_class(component))
        assert key in known, f"inkwell-config sets {key}, which no settings class reads"


def test_the_ingress_controller_closes_clients_that_trickle_their_headers(
    resources: dict[str, list[dict[str, Any]]],
) -> None:
    # uvicorn has no header-read timeout (docs/reliability.md): the edge must have a short one
    (config,) = resources["ingress-nginx"]
    assert config["kind"] == "ConfigMap"
    assert config["metadata"] == {**config["metadata"], "name": "ingress-nginx-controller"}
    assert config["metadata"]["namespace"] == "ingress-nginx"
    assert 0 < int(config["data"]["client-header-timeout"]) <= 10  # ingress-nginx default: 60
    assert 0 < int(config["data"]["client-body-timeout"]) <= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_container_environment_validates_in_its_settings_class(
    resources: dict[str, list[dict[str, Any]]],
    overlay: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    docs = resources[overlay]
    checked = 0
    for workload in _workloads(docs):
        for container in _containers(workload):
            args = container.get("args", [])
            if not args or args[0] != "inkwell":
                continue
            settings_cls = _settings_class(args[1])
            env = _container_env(container, docs)
            own = {k for k in env if k.startswith("INKWELL_") and not k.startswith(tuple(PREFIXES))}
            own |= {k for k in env if k.startswith(f"INKWELL_{args[1].upper()}_")}
            unknown = sorted(own - settings_env_keys(settings_cls))
            assert not unknown, f"{container['name']}: {settings_cls.__name__} ignores {unknown}"
            with monkeypatch.context() as patch:
                for key in list(os.environ):
                    if key.startswith(("INKWELL_", "MLFLOW_")):
                        patch.delenv(key)
                for key, value in env.items():
                    patch.setenv(key, value)
                extra = (
                    {"variant": args[args.index("--variant") + 1]} if "--variant" in args else {}
                )
                settings = settings_cls(**extra)
            checked += 1
            if args[1] == "mlflow":  # the server itself, and its users job
                if args[2] == "init-users":
                    assert settings.resolved_tracking_uri == "http://inkwell-mlflow:5000"
                continue
            assert settings.resolved_tracking_uri == "http://inkwell-mlflow:5000"
            assert settings.resolved_database_url.startswith(
                "postgresql+psycopg://inkwell:"
            ) and settings.resolved_database_url.endswith("@inkwell-postgres:5432/inkwell")
            if args[1] != "train":
                assert settings.host == "0.0.0.0"
                port = getattr(settings, "resolved_port", settings.port)
                assert [p["containerPort"] for p in container["ports"]] == [port]
                annotations = workload["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/port"] == str(port)
    assert checked >= 1


@pytest.mark.parametrize("overlay", [*OVERLAYS, "prod-argo"])
def test_each_component_runs_as_its_own_mlflow_user_and_the_server_requires_one(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = resources[overlay]
    seen = set()
    for workload in [*_workloads(docs), *_by_kind(docs, "Rollout")]:  # prod-argo's services
        for container in _containers(workload):
            args = container.get("args", [])
            if args[:1] != ["inkwell"]:
                continue
            env = _container_env(container, docs)
            if args[1] == "mlflow":
                assert args[2] in ("server", "init-users")
                assert len(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) >= 16
                continue
            assert env["MLFLOW_TRACKING_USERNAME"] == MLFLOW_USERS[args[1]], container["name"]
            assert len(env["MLFLOW_TRACKING_PASSWORD"]) >= 16
            if args[1] == "service":  # read-only: the trainer seeds the shipped models
                assert env["INKWELL_SEED_SHIPPED"] == "false"
            seen.add(args[1])
    assert seen == set(MLFLOW_USERS)
    server = next(w for w in _workloads(docs) if w["metadata"]["name"] == "inkwell-mlflow")
    assert next(_containers(server))["args"][:3] == ["inkwell", "mlflow", "server"]


# ---- monitoring ConfigMaps ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_configmaps_hold_exactly_the_monitoring_files(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    configmaps = {c["metadata"]["name"]: c for c in _by_kind(resources[overlay], "ConfigMap")}
    dashboards = configmaps["inkwell-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    on_disk = {p.name: p.read_text() for p in DASHBOARDS_DIR.glob("*.json")}
    assert dashboards["data"] == on_disk
    for text in on_disk.values():
        json.loads(text)
    rules = configmaps["inkwell-prometheus-rules"]["data"]
    assert rules == {p.name: p.read_text() for p in RULES_DIR.glob("*.yml")}


def test_postgres_initdb_is_the_same_sql_as_compose() -> None:
    configmap = yaml.safe_load((K8S / "base/inkwell-postgres-configmap.yaml").read_text())
    compose_sql = REPO / "docker/postgres/initdb"
    assert configmap["data"] == {p.name: p.read_text() for p in compose_sql.glob("*.sql")}


# ---- the Ingress ------------------------------------------------------------------------------

PUBLIC_PATHS = (
    "/",
    "/ui/app.js",
    "/ui/style.css",
    "/v1/digits/predict",
    "/v1/samples",
    "/v1/cheques/read",
    "/v2/models/inkwell-digits/infer",
)
PRIVATE_PATHS = (
    "/metrics",
    "/healthz",
    "/readyz",
    "/docs",
    "/openapi.json",
    "/router/docs",
    "/router/openapi.json",
    "/admin/rollout",
    "/ui/api/overview",
)


def _ingress_routes(rule: dict[str, Any], path: str) -> bool:
    """Whether one Ingress path rule sends `path` on (Kubernetes' Exact and Prefix semantics)."""
    wanted = rule["path"]
    if rule["pathType"] == "Exact":
        return bool(path == wanted)
    prefix = wanted.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def test_the_ingress_routes_only_the_public_api_and_the_page_with_rate_limits(
    resources: dict[str, list[dict[str, Any]]],
) -> None:
    (ingress,) = _by_kind(resources["prod"], "Ingress")
    rules = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    routed = {path: any(_ingress_routes(r, path) for r in rules) for path in PUBLIC_PATHS}
    assert all(routed.values()), routed
    exposed = [path for path in PRIVATE_PATHS if any(_ingress_routes(r, path) for r in rules)]
    assert exposed == []
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert int(annotations["nginx.ingress.kubernetes.io/limit-connections"]) > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_is_replicated_on_the_s3_artifact_store_and_only_it_holds_s3_keys(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = resources[overlay]
    workloads = {w["metadata"]["name"]: w for w in _workloads(docs)}
    mlflow = workloads["inkwell-mlflow"]
    assert mlflow["spec"]["replicas"] >= 2
    assert "volumes" not in mlflow["spec"]["template"]["spec"] or all(
        "persistentVolumeClaim" not in v for v in mlflow["spec"]["template"]["spec"]["volumes"]
    ), "MLflow must keep no state of its own to run replicated"
    server = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert "--artifacts-destination=s3://inkwell-artifacts/" in server["args"]
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://inkwell-minio:9000"
    bucket_job = workloads["inkwell-minio-bucket"]["spec"]["template"]["spec"]["containers"][0]
    assert "local/inkwell-artifacts" in bucket_job["args"][0]
    for name, workload in workloads.items():
        if name.startswith(("inkwell-mlflow", "inkwell-minio")):
            continue
        for container in _containers(workload):
            keys = {
                e["valueFrom"]["secretKeyRef"]["key"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert not any(k.startswith("s3-") for k in keys), f"{name} holds S3 keys"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_backup_dumps_both_databases_nightly_onto_its_claim(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    (cron,) = _by_kind(resources[overlay], "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = pod["containers"][0]["args"][0]
    assert "for db in inkwell mlflow" in script and "pg_dump -h inkwell-postgres" in script
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == "inkwell-postgres-backup"
    postgres = next(
        s
        for s in _by_kind(resources[overlay], "StatefulSet")
        if "postgres" in s["metadata"]["name"]
    )
    image = postgres["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pod["containers"][0]["image"] == image, "pg_dump must match the server's version"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_hung_or_missed_backup_cannot_stop_the_nightly_backups(
    resources: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Forbid skips a night while a Job still runs: a hung dump must end before the next."""
    (cron,) = _by_kind(resources[overlay], "CronJob")
    assert cron["spec"]["schedule"].split()[2:] == ["*", "*", "*"], "nightly"
    deadline = cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert 0 < deadline < 24 * 3600
    assert 0 < cron["spec"]["startingDeadlineSeconds"] <= deadline


def test_prod_trainer_reads_mnist_from_the_claim_the_mnist_job_fills(
    resources: dict[str, list[dict[str, Any]]],
) -> None:
    docs = resources["prod"]
    workloads = {w["metadata"]["name"]: w for w in _workloads(docs)}
    job = workloads["inkwell-mnist"]["spec"]["template"]["spec"]
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == "inkwell-mnist"
    assert "download_mnist(Path('/mnt/mnist')" in job["containers"][0]["args"][0]
    trainer = workloads["inkwell-trainer"]
    for container in _containers(trainer):
        mount = next(m for m in container["volumeMounts"] if m["name"] == "mnist")
        # download_mnist writes into <target>/MNIST/raw; the settings look in /data/mnist.
        assert mount == {
            "name": "mnist",
            "mountPath": "/data/mnist",
            "subPath": "MNIST/raw",
            "readOnly": True,
        }
        assert container["resources"]["requests"]["cpu"] == "2"
    env = _container_env(next(_containers(trainer)), docs)
    assert env["INKWELL_DATA_DIR"] == "/data/mnist"


def test_gpu_overlay_puts_only_the_trainer_on_a_gpu_node(
    resources: dict[str, list[dict[str, Any]]],
) -> None:
    gpu = {w["metadata"]["name"]: w for w in _workloads(resources["prod-gpu"])}
    prod = {w["metadata"]["name"]: w for w in _workloads(resources["prod"])}
    trainer = gpu["inkwell-trainer"]["spec"]["template"]["spec"]
    assert trainer["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    container = next(c for c in trainer["containers"] if c["name"] == "trainer")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["cpu"] == "2", "prod's resources are kept"
    for name in prod.keys() - {"inkwell-trainer"}:
        assert gpu[name] == prod[name], f"{name} differs in the GPU overlay"


def test_capacity_overlay_gives_only_the_router_a_token_and_just_the_scalers_rights(
    resources: dict[str, list[dict[str, Any]]],
) -> None:
    from router.settings import RouterSettings

    docs = resources["prod-capacity"]
    pods = {w["metadata"]["name"]: w["spec"]["template"]["spec"] for w in _workloads(docs)}
    router = pods.pop("inkwell-router")
    assert (router["serviceAccountName"], router["automountServiceAccountToken"]) == (
        "inkwell-router",
        True,
    )
    assert all(pod["automountServiceAccountToken"] is False for pod in pods.values())
    (role,) = _by_kind(docs, "Role")
    rights = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert rights == {
        ("apps", "deployments", "get"),
        ("autoscaling", "horizontalpodautoscalers", "get"),
        ("autoscaling", "horizontalpodautoscalers", "patch"),
    }
    (binding,) = _by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "inkwell-router", "namespace": "inkwell"}
    ]
    env = _container_env(router["containers"][0], docs)
    settings = RouterSettings(canary_capacity=env["INKWELL_ROUTER_CANARY_CAPACITY"])
    assert settings.canary_capacity == "kubernetes"
    assert settings.canary_deployment in pods and settings.stable_deployment in pods
    (hpa,) = [
        h for h in _by_kind(docs, "HorizontalPodAutoscaler") if "canary" in h["metadata"]["name"]
    ]
    assert hpa["metadata"]["name"] == settings.canary_deployment


def test_argo_analysis_templates_declare_every_argument_and_condition() -> None:
    """Beyond the shipped CRD schema: every argument declared, conditions on the result."""
    component = K8S / "components" / "argo-analysis"
    listed = yaml.safe_load((component / "kustomization.yaml").read_text())["resources"]
    for name in listed:
        (template,) = yaml_documents((component / name).read_text())
        assert schema_errors(template) == []
        assert template["apiVersion"] == "argoproj.io/v1alpha1"
        assert template["kind"] == "AnalysisTemplate"
        declared = {arg["name"] for arg in template["spec"]["args"]}
        names = [metric["name"] for metric in template["spec"]["metrics"]]
        assert len(set(names)) == len(names)
        for metric in template["spec"]["metrics"]:
            assert set(metric) <= {
                "name",
                "interval",
                "count",
                "failureLimit",
                "consecutiveErrorLimit",
                "successCondition",
                "provider",
            }, metric["name"]
            (kind,) = metric["provider"]
            # A query's result is a vector, a web call's the value at its jsonPath.
            result = {"prometheus": "result[0]", "web": "result"}[kind]
            assert result in metric["successCondition"], metric["name"]
            text = json.dumps(metric)
            used = set(re.findall(r"{{args\.([a-z-]+)}}", text))
            assert used <= declared and "namespace" in used, metric["name"]
