"""MLflow with authentication (issue 18): a real `mlflow server --app-name basic-auth`, the
init step's users and grants, and what each user can and cannot do."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from mlflow.exceptions import MlflowException
from pydantic import ValidationError
from typer.testing import CliRunner

from inkwell.model import DigitNet, ModelConfig
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE, CoreSettings
from inkwell_app.cli import app
from inkwell_app.mlflow_cli import auth_config_text, register
from tests.conftest import copy_mlflow_db
from tests.harness import Process, child_env, free_port, wait_http

ADMIN_PASSWORD = "admin-password-0123456789"
PASSWORDS = {
    "INKWELL_MLFLOW_TRAINER_PASSWORD": "trainer-password-0123456789",
    "INKWELL_MLFLOW_ROUTER_PASSWORD": "router-password-0123456789",
    "INKWELL_MLFLOW_SERVICE_PASSWORD": "service-password-0123456789",
}
MODEL = "inkwell-digits"


@dataclass
class AuthServer:
    url: str
    home: Path
    env: dict[str, str]

    def init_users(self, **passwords: str) -> str:
        """Run the init step as a process, as Compose and Kubernetes do; its output."""
        env = {**self.env, **PASSWORDS, **passwords}
        done = subprocess.run(
            [sys.executable, "-m", "inkwell", "mlflow", "init-users"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def shared_auth_server(
    tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, empty_mlflow_db: Path
) -> Iterator[AuthServer]:
    """One server for the file (a start is ~10 s of CPU: migrations, the admin's password).
    Every test runs the init step first, which sets every password and grant back."""
    inkwell_home = copy_mlflow_db(empty_mlflow_db, tmp_path_factory.mktemp("auth") / "home")
    port = free_port()
    env = child_env(inkwell_home, mnist_dir)
    env.update(
        MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MLFLOW_FLASK_SERVER_SECRET_KEY="flask-secret-key-0123456789",
        INKWELL_TRACKING_URI=f"http://127.0.0.1:{port}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
    )
    server = Process(
        "mlflow",
        [
            sys.executable, "-m", "inkwell", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{inkwell_home / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", str(inkwell_home / "artifacts"),
        ],
        env,
        inkwell_home / "mlflow-server.log",
    )  # fmt: skip
    try:
        wait_http(server, f"http://127.0.0.1:{port}/health", timeout=120)
        yield AuthServer(f"http://127.0.0.1:{port}", inkwell_home, env)
    finally:
        server.stop()


@pytest.fixture
def auth_server(shared_auth_server: AuthServer, inkwell_home: Path) -> AuthServer:
    """The file's server, with this test's own INKWELL_HOME for anything it runs in process."""
    return shared_auth_server


def act_as(monkeypatch: pytest.MonkeyPatch, username: str) -> None:
    """Make every MLflow call from now on act as `username` (MLflow reads these per request)."""
    role = username.removeprefix("inkwell-").upper()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS[f"INKWELL_MLFLOW_{role}_PASSWORD"])


def _forbidden(call: object) -> None:
    assert callable(call)
    with pytest.raises(MlflowException, match="403"):
        call()


@pytest.mark.integration
@pytest.mark.slow
def test_trainer_publishes_services_only_read_and_anonymous_is_refused(
    auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = auth_server.init_users()
    assert "inkwell-trainer: created" in first and "inkwell-service: created" in first
    again = auth_server.init_users()  # idempotent: the same users and grants, no error
    assert "inkwell-trainer: password set" in again

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry = Registry(CoreSettings(tracking_uri=auth_server.url))
    act_as(monkeypatch, "inkwell-trainer")
    experiment = registry.experiment_id()  # created by the init step
    torch.manual_seed(0)
    model = DigitNet(ModelConfig(width=4))
    with registry.start_run("auth-test") as run:
        published = registry.register_digit_model(model, run.info.run_id, aliases=(CANARY,))
    assert registry.get_version(MODEL, CANARY).version == published.version
    _forbidden(lambda: registry.delete_alias(MODEL, CANARY))  # only the rollout removes aliases

    act_as(monkeypatch, "inkwell-service")
    loaded = registry.load_digit_model(CANARY)
    assert loaded.info.version == published.version
    sample = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded.model(sample), model.eval()(sample))
    _forbidden(lambda: registry.set_alias(MODEL, STABLE, published.version))
    _forbidden(lambda: registry.delete_alias(MODEL, CANARY))
    _forbidden(lambda: registry.set_version_tags(MODEL, published.version, {"complete": "no"}))
    _forbidden(lambda: registry.delete_version(MODEL, published.version))
    _forbidden(lambda: registry.client.create_model_version(MODEL, source=published.source))
    _forbidden(lambda: registry.client.create_run(experiment))
    assert registry.get_version(MODEL, CANARY).version == published.version  # nothing moved

    act_as(monkeypatch, "inkwell-router")
    registry.set_alias(MODEL, STABLE, published.version)  # the rollout controller promotes
    registry.delete_alias(MODEL, CANARY)
    assert registry.get_version(MODEL, STABLE).version == published.version
    assert registry.find_version(MODEL, CANARY) is None
    _forbidden(lambda: registry.client.create_run(experiment))

    get = f"{auth_server.url}/api/2.0/mlflow/registered-models/get"
    assert httpx.get(get, params={"name": MODEL}).status_code == 401  # anonymous
    wrong = ("inkwell-service", "not-the-password-0123")
    assert httpx.get(get, params={"name": MODEL}, auth=wrong).status_code == 401
    assert httpx.get(f"{auth_server.url}/health").status_code == 200  # probes need no user


@pytest.mark.integration
@pytest.mark.slow
def test_running_the_init_step_again_rotates_a_password(
    auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth_server.init_users()
    get = f"{auth_server.url}/api/2.0/mlflow/registered-models/get"
    old = PASSWORDS["INKWELL_MLFLOW_SERVICE_PASSWORD"]
    assert httpx.get(get, params={"name": MODEL}, auth=("inkwell-service", old)).status_code == 200
    new = "rotated-service-password-0123456789"
    auth_server.init_users(INKWELL_MLFLOW_SERVICE_PASSWORD=new)
    assert httpx.get(get, params={"name": MODEL}, auth=("inkwell-service", old)).status_code == 401
    assert httpx.get(get, params={"name": MODEL}, auth=("inkwell-service", new)).status_code == 200


@pytest.mark.integration
@pytest.mark.slow
def test_a_checked_password_is_trusted_for_the_cache_ttl_not_checked_per_request(
    auth_server: AuthServer,
) -> None:
    """Each password check costs ~0.1 s of CPU; the server trusts a checked one for
    INKWELL_MLFLOW_AUTH_CACHE_TTL_S (60 s). A change that bypasses this server process (here:
    straight in the user store, as another replica's would) shows the cache at work."""
    import sqlite3

    from werkzeug.security import generate_password_hash

    auth_server.init_users()
    get = f"{auth_server.url}/api/2.0/mlflow/registered-models/get"
    old = ("inkwell-service", PASSWORDS["INKWELL_MLFLOW_SERVICE_PASSWORD"])
    assert httpx.get(get, params={"name": MODEL}, auth=old).status_code == 200
    with sqlite3.connect(auth_server.home / "mlflow-auth.db") as store:
        changed = store.execute(
            "UPDATE users SET password_hash = ? WHERE username = ?",
            (generate_password_hash("elsewhere-rotated-password-0123"), old[0]),
        )
        assert changed.rowcount == 1
    assert httpx.get(get, params={"name": MODEL}, auth=old).status_code == 200  # still trusted
    rotated = (old[0], "elsewhere-rotated-password-0123")
    assert httpx.get(get, params={"name": MODEL}, auth=rotated).status_code == 200
    wrong = (old[0], "never-was-the-password-0123")
    assert httpx.get(get, params={"name": MODEL}, auth=wrong).status_code == 401


def test_the_auth_config_sets_the_credential_cache_mlflow_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.server.auth.config import read_auth_config

    from inkwell.settings import RegistryAccessSettings

    ttl = RegistryAccessSettings().auth_cache_ttl_s
    assert ttl == 60
    config = tmp_path / "basic_auth.ini"
    config.write_text(auth_config_text("sqlite:///auth.db", "admin", ttl))
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(config))
    read = read_auth_config()
    assert read.auth_cache_ttl_seconds == 60
    assert read.default_permission == "NO_PERMISSIONS"


def test_a_placeholder_tracking_password_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "inkwell-service")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "change-me-mlflow-service")
    with pytest.raises(ValidationError, match="placeholder"):
        CoreSettings()
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "short")
    with pytest.raises(ValidationError, match="at least 16"):
        CoreSettings()


def test_a_tracking_username_without_a_password_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "inkwell-service")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(ValidationError, match="MLFLOW_TRACKING_PASSWORD"):
        CoreSettings()


def test_the_init_step_refuses_to_run_without_every_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(app)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("INKWELL_TRACKING_URI", "http://127.0.0.1:9")
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("INKWELL_MLFLOW_ROUTER_PASSWORD")
    result = CliRunner().invoke(app, ["mlflow", "init-users"])
    assert result.exit_code == 2
    assert "INKWELL_MLFLOW_ROUTER_PASSWORD" in result.output


def test_the_server_refuses_to_start_without_its_csrf_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(app)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    result = CliRunner().invoke(app, ["mlflow", "server", "--port", "5000"])
    assert result.exit_code == 2
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in result.output


def test_the_auth_config_keeps_a_percent_in_the_store_password() -> None:
    import configparser

    parser = configparser.ConfigParser()
    parser.read_string(auth_config_text("postgresql://u:p%25w@db/auth", "admin"))
    assert parser["mlflow"]["database_uri"] == "postgresql://u:p%25w@db/auth"
    assert parser["mlflow"]["default_permission"] == "NO_PERMISSIONS"
