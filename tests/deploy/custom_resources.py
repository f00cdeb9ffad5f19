"""Validation of the custom resources kubernetes-validate has no schemas for: Argo Rollouts'
and the prometheus-operator's.

Each resource against its strict JSON schema shipped in k8s/schemas/<group> (made by
k8s/schemas/build.py from the CRDs); for Argo, as its controller checks them, also what a
schema cannot see: the AnalysisTemplates, Services and arguments a Rollout names exist in the
same rendered overlay.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import jsonschema

from tests.deploy.helpers import K8S

SCHEMAS = K8S / "schemas"
ARGO_GROUP = "argoproj.io/"
MONITORING_GROUP = "monitoring.coreos.com/"
# API groups whose kinds are validated against the schemas in k8s/schemas.
SHIPPED_GROUPS = (ARGO_GROUP, MONITORING_GROUP)


def schema_path_for(doc: dict[str, Any]) -> str:
    """Where the schema of `doc`'s kind lives, named as kubernetes-validate names its files."""
    group, version = doc["apiVersion"].split("/")
    return f"{group}/{doc['kind'].lower()}-{group.split('.')[0]}-{version}.json"


@functools.cache
def _validator(relative: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / relative).read_text())
    return jsonschema.Draft202012Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every way `doc` breaks its kind's shipped strict schema ([] when it passes)."""
    relative = schema_path_for(doc)
    if not (SCHEMAS / relative).is_file():
        return [f"{doc['kind']} {doc['apiVersion']}: no schema at k8s/schemas/{relative}"]
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    return [
        f"{where}: {'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in map(_cause, _validator(relative).iter_errors(doc))
    ]


def _cause(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """The error that says what is wrong: for an optional field (`anyOf: [X, null]`) the one
    inside X ("'groupby' was unexpected"), not "is not valid under any of the given schemas"."""
    while error.context:
        not_null = [e for e in error.context if e.schema != {"type": "null"}]
        error = jsonschema.exceptions.best_match(not_null or error.context)
    return error


def _analysis_refs(rollout: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, analysis) for every analysis a Rollout runs: background, steps, blue-green."""
    strategy = rollout["spec"].get("strategy", {})
    canary = strategy.get("canary", {})
    if canary.get("analysis", {}).get("templates"):
        yield "strategy.canary.analysis", canary["analysis"]
    for index, step in enumerate(canary.get("steps", [])):
        if "analysis" in step:
            yield f"strategy.canary.steps[{index}].analysis", step["analysis"]
    blue_green = strategy.get("blueGreen", {})
    for key in ("prePromotionAnalysis", "postPromotionAnalysis"):
        if key in blue_green:
            yield f"strategy.blueGreen.{key}", blue_green[key]


def reference_errors(docs: list[dict[str, Any]]) -> list[str]:
    """What the Rollouts in one rendered overlay name and the overlay lacks."""
    templates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "AnalysisTemplate"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    rollouts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Rollout"}
    errors: list[str] = []
    for name, rollout in rollouts.items():
        for where, analysis in _analysis_refs(rollout):
            given = {arg["name"] for arg in analysis.get("args", [])}
            for ref in analysis.get("templates", []):
                template = templates.get(ref["templateName"])
                if template is None or ref.get("clusterScope"):
                    errors.append(
                        f"Rollout/{name} {where}: no AnalysisTemplate {ref['templateName']!r} "
                        f"(have {sorted(templates)})"
                    )
                    continue
                needed = {
                    arg["name"]
                    for arg in template["spec"].get("args", [])
                    if "value" not in arg and "valueFrom" not in arg
                }
                if needed - given:
                    errors.append(
                        f"Rollout/{name} {where}: {ref['templateName']} needs the arguments "
                        f"{sorted(needed - given)}"
                    )
        canary = rollout["spec"].get("strategy", {}).get("canary", {})
        pod_labels = rollout["spec"]["template"]["metadata"]["labels"]
        for key in ("canaryService", "stableService"):
            service = services.get(canary.get(key, ""))
            if key in canary and service is None:
                errors.append(f"Rollout/{name} {key}: no Service {canary[key]!r}")
            elif service is not None:
                selector = service["spec"]["selector"]
                if any(pod_labels.get(k) != v for k, v in selector.items()):
                    errors.append(f"Rollout/{name} {key}: {canary[key]} selects other pods")
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] == "Rollout" and target["name"] not in rollouts:
            errors.append(f"HPA/{hpa['metadata']['name']}: no Rollout {target['name']!r}")
    return errors


def argo_errors(docs: list[dict[str, Any]]) -> list[str]:
    """Schema and reference errors of every Argo resource in one rendered overlay."""
    errors = [e for d in docs if d["apiVersion"].startswith(ARGO_GROUP) for e in schema_errors(d)]
    return errors + reference_errors(docs)


def custom_resource_errors(docs: list[dict[str, Any]]) -> list[str]:
    """Every error of the custom resources in one rendered overlay: each against its shipped
    schema, and the references of the Argo ones."""
    errors = [
        e for d in docs if d["apiVersion"].startswith(SHIPPED_GROUPS) for e in schema_errors(d)
    ]
    return errors + reference_errors(docs)
