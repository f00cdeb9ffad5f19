"""MLflow on an S3-compatible artifact store, with two server replicas, live.

Starts a real S3-compatible server (moto's, from PyPI) and two `mlflow server` processes with the
options and environment docker-compose.yml gives MLflow (artifacts proxied to
`s3://<bucket>/`, `MLFLOW_S3_ENDPOINT_URL` pointing at the S3 server), sharing one backend store
and one bucket, with authentication as Compose runs it (its `mlflow-users` job makes the users).
The trainer's registry code registers a model through the first replica as the trainer user; a
stable service started against the second replica loads it by alias as the read-only service
user. Neither client holds S3 credentials: the servers proxy the artifacts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from inkwell.registry import ARTIFACT_DIR, WEIGHTS_FILE
from tests.deploy.conftest import Processes
from tests.deploy.helpers import (
    REPO,
    compose_mlflow,
    compose_mlflow_users,
    environment,
    load_compose,
    mlflow_login,
)
from tests.harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

S3_KEYS = {"AWS_ACCESS_KEY_ID": "inkwell-test", "AWS_SECRET_ACCESS_KEY": "inkwell-test-secret"}
CLI = "from inkwell_app.cli import main; main()"
REGISTER = """
from inkwell.model import ModelConfig
from inkwell.registry import Registry
from inkwell.train import train_base_model
from inkwell.training import TrainConfig
out = train_base_model(TrainConfig(dry_run=True), model_config=ModelConfig(width=4))
if out.version is None:
    raise SystemExit("nothing registered")
print("REGISTERED", out.version.version, out.version.source)
"""


def _client_env(home: Path, mnist: Path, tracking_uri: str) -> dict[str, str]:
    """A component's environment: no S3 keys, no MLflow variables, only the tracking URI (its
    MLflow login is added by the caller)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INKWELL_", "MLFLOW_", "AWS_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "INKWELL_HOME": str(home),
            "INKWELL_DATA_DIR": str(mnist),
            "INKWELL_TRACKING_URI": tracking_uri,
        }
    )
    return env


def _start_s3(processes: Processes, work: Path) -> str:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    processes.start("s3", argv, env, work)
    url = f"http://127.0.0.1:{port}"
    processes.wait_http("s3", f"{url}/moto-api/", timeout=60)
    return url


def _start_mlflow(
    processes: Processes,
    compose: dict[str, Any],
    work: Path,
    name: str,
    s3_url: str,
    bucket: str,
) -> str:
    """`inkwell mlflow server` as Compose runs it, with this machine's port and S3 endpoint;
    both replicas share the backend store and the user store, as in Compose."""
    port = free_port()
    argv, shipped = compose_mlflow(compose, work, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env |= shipped | S3_KEYS
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_url
    env["HOME"] = str(work)
    env["PYTHONPATH"] = str(REPO)
    argv = [a for a in argv if not a.startswith("--artifacts-destination")]
    argv.append(f"--artifacts-destination=s3://{bucket}/")
    processes.start(name, argv, env, work)
    url = f"http://127.0.0.1:{port}"
    processes.wait_http(name, f"{url}/health", timeout=180)
    return url


def test_compose_mlflow_stores_artifacts_in_s3_through_the_proxy() -> None:
    spec = load_compose()["services"]["mlflow"]
    destination = next(a for a in spec["command"] if a.startswith("--artifacts-destination="))
    assert destination.split("=", 1)[1].startswith("s3://")
    assert "--serve-artifacts" in spec["command"]
    env = environment(spec)
    assert env["MLFLOW_S3_ENDPOINT_URL"].startswith("http://minio:")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys()
    for name in ("router", "service-stable", "service-canary", "trainer", "init"):
        component = environment(load_compose()["services"][name])
        assert not any(k.startswith("AWS_") for k in component), f"{name} holds S3 keys"


def test_two_mlflow_replicas_share_the_bucket_and_a_service_loads_by_alias(
    processes: Processes, tmp_path: Path, mnist_dir: Path
) -> None:
    boto3 = pytest.importorskip("boto3")
    s3_url = _start_s3(processes, tmp_path)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **_boto_keys())
    bucket = "inkwell-artifacts"
    s3.create_bucket(Bucket=bucket)
    compose = load_compose()
    first = _start_mlflow(processes, compose, tmp_path, "mlflow-a", s3_url, bucket)
    # the replica starts on the user store the first one made (admin bootstrapped once)
    second = _start_mlflow(processes, compose, tmp_path, "mlflow-b", s3_url, bucket)
    users = compose_mlflow_users(compose, _client_env(tmp_path, mnist_dir, first), first)
    assert users.returncode == 0, users.stdout + users.stderr

    registered = subprocess.run(
        [sys.executable, "-c", REGISTER],
        env=_client_env(tmp_path / "trainer-home", mnist_dir, first)
        | mlflow_login(compose, "trainer"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert registered.returncode == 0, registered.stdout + registered.stderr
    version = registered.stdout.split("REGISTERED", 1)[1].split()[0]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith(f"/{ARTIFACT_DIR}/{WEIGHTS_FILE}") for k in keys), keys

    port = free_port()
    processes.start(
        "service-stable",
        [sys.executable, "-c", CLI, "service", "--variant", "stable"],
        _client_env(tmp_path / "service-home", mnist_dir, second)
        | mlflow_login(compose, "service-stable")
        | {
            "INKWELL_SERVICE_PORT": str(port),
            "INKWELL_SERVICE_TORCH_THREADS": "1",
            "INKWELL_SEED_SHIPPED": "false",
        },
        tmp_path,
    )
    ready = f"http://127.0.0.1:{port}/readyz"
    processes.wait_http("service-stable", ready, timeout=180)
    assert httpx.get(ready, timeout=5).json()["model_version"] == version


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    }
