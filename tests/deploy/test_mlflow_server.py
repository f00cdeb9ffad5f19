"""The Compose MLflow server configuration, run for real (SQLite instead of PostgreSQL).

Starts `mlflow server` with the options and environment docker-compose.yml gives it, then runs
the `init` job's command against it twice: the first run trains and registers the base model
with its weights uploaded through the server's artifact proxy; the second finds `stable` and
does nothing. Also checks the Host-header guard accepts the Compose name and refuses others.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import Processes, free_port
from tests.deploy.helpers import REPO, environment, load_compose

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("INKWELL_", "MLFLOW_"))}


def test_init_job_registers_the_base_model_once_through_the_compose_mlflow_server(
    processes: Processes, tmp_path: Path, mnist_dir: Path
) -> None:
    spec = load_compose()["services"]["mlflow"]
    command = list(spec["command"])
    artifacts = tmp_path / "mlflow-artifacts"
    port = free_port()
    # Same options as Compose, with this machine's paths, port and a SQLite store.
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        *command[1:],
    ]
    argv = [
        a.replace("/var/lib/mlflow/artifacts", str(artifacts))
        .replace("--port=5000", f"--port={port}")
        .replace("--host=0.0.0.0", "--host=127.0.0.1")
        .replace("--workers=2", "--workers=1")
        for a in argv
    ]
    env = _clean_env() | environment(spec)
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The Compose list plus this test's address (clients here reach 127.0.0.1:<port>).
    env["MLFLOW_SERVER_ALLOWED_HOSTS"] += f",127.0.0.1:{port}"
    processes.start("mlflow", argv, env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    processes.wait_http("mlflow", f"{base}/health", timeout=180)

    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(search, headers={"Host": "mlflow:5000"}).status_code == 200
    assert httpx.get(search, headers={"Host": "attacker.example:5000"}).status_code == 403

    init = load_compose()["services"]["init"]
    init_env = _clean_env() | {
        "PYTHONPATH": str(REPO),
        "INKWELL_HOME": str(tmp_path / "home"),
        "INKWELL_DATA_DIR": str(mnist_dir),
        "INKWELL_TRACKING_URI": base,
        "COLUMNS": "200",
    }
    assert init["command"][:3] == ["inkwell", "train", "--if-missing"]
    train = [sys.executable, "-c", "from inkwell.cli import main; main()", *init["command"][1:]]
    first = subprocess.run(
        [*train, "--dry-run", "--width", "4"],
        env=init_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "registered inkwell-digits v1 (stable)" in first.stdout
    weights = list(artifacts.rglob("weights.pt"))
    assert weights, "model weights did not reach --artifacts-destination through the proxy"

    second = subprocess.run(
        [*train, "--dry-run", "--width", "4"],
        env=init_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "inkwell-digits v1 is already stable: nothing to train" in second.stdout
    assert len(list(artifacts.rglob("weights.pt"))) == 1
