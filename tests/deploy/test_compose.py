"""docker-compose.yml against the code it runs (no Docker engine here, so read it like Compose).

Guards: every Inkwell container runs a command the real CLI has, sets only environment
variables its real settings class reads, and those values validate and agree with the ports,
health checks, Prometheus targets and the other services' names; start-up order waits on real
health checks; state lives on volumes; keys must come from .env.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import typer.main
import yaml

from tests.deploy.helpers import (
    MONITORING,
    REPO,
    compose_config,
    container_ports,
    environment,
    load_compose,
    mounts,
    settings_env_keys,
)

# Every test reads the file as `docker compose config` resolves it (a process).
pytestmark = pytest.mark.integration

INKWELL_SERVICES = ("init", "service-stable", "service-canary", "router", "trainer")
# Compose service -> (settings module, class, the command it must run).
COMPONENTS: dict[str, tuple[str, str, list[str]]] = {
    "init": ("inkwell.settings", "CoreSettings", ["inkwell", "train", "--if-missing"]),
    "service-stable": (
        "service.settings",
        "ServiceSettings",
        ["inkwell", "service", "--variant", "stable"],
    ),
    "service-canary": (
        "service.settings",
        "ServiceSettings",
        ["inkwell", "service", "--variant", "canary"],
    ),
    "router": ("router.settings", "RouterSettings", ["inkwell", "router"]),
    "trainer": ("trainer.settings", "TrainerSettings", ["inkwell", "trainer"]),
    "mlflow-users": (
        "inkwell.settings",
        "RegistryAccessSettings",
        ["inkwell", "mlflow", "init-users"],
    ),
}
# The MLflow user each component runs as (docs/deploy.md): only the services are read-only.
MLFLOW_USERS = {
    "init": "inkwell-trainer",
    "trainer": "inkwell-trainer",
    "router": "inkwell-router",
    "service-stable": "inkwell-service",
    "service-canary": "inkwell-service",
}
# Read by the image's health check (docker/healthcheck.py), not by a settings class.
NON_SETTINGS_KEYS = {"INKWELL_HEALTHCHECK_URL"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No INKWELL_*/MLFLOW_* variables of this machine leak into settings under test."""
    import os

    for key in list(os.environ):
        if key.startswith(("INKWELL_", "MLFLOW_")):
            monkeypatch.delenv(key)
    yield monkeypatch


def _settings_class(service: str) -> type[Any]:
    module_name, class_name, _ = COMPONENTS[service]
    settings_cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return settings_cls


def _cli() -> Any:
    """The real `inkwell` command group, with the components' commands attached."""
    from inkwell_app.cli import _register_components, app

    _register_components()
    return typer.main.get_command(app)


def test_compose_defines_the_whole_system(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "postgres",
        "mlflow-users",
        "minio",
        "minio-bucket",
        "mlflow",
        "init",
        "service-stable",
        "service-canary",
        "router",
        "trainer",
        "prometheus",
        "grafana",
    }


def test_compose_refuses_to_start_without_the_keys(tmp_path: Path) -> None:
    empty = tmp_path / ".env"
    empty.write_text("")
    result = compose_config(empty)
    assert result.returncode != 0
    # Compose stops at the first missing one it meets, and its order varies between runs
    missing = r"required variable (\w+) is missing a value: set (\w+) in \.env"
    refused = re.search(missing, result.stderr)
    assert refused is not None and refused.group(1) == refused.group(2), result.stderr
    example = (REPO / ".env.example").read_text()
    assert re.search(rf"^{refused.group(1)}=", example, re.MULTILINE), refused.group(1)
    assert "(see .env.example)" in result.stderr


def test_example_env_file_sets_every_required_variable() -> None:
    assert compose_config().returncode == 0


def _example_env(service: str) -> dict[str, str]:
    """The service's environment with the example .env copied without replacing its values."""
    result = compose_config()
    assert result.returncode == 0, result.stderr
    return environment(json.loads(result.stdout)["services"][service])


def _refusal(
    settings_cls: type[Any], env: dict[str, str], clean_env: pytest.MonkeyPatch, service: str
) -> str:
    """Read `settings_cls` from `env` as the process would at start; the refusal's text."""
    from pydantic import ValidationError

    for key, value in env.items():
        clean_env.setenv(key, value)
    extra = {"variant": "stable"} if service.startswith("service") else {}
    with pytest.raises(ValidationError, match="placeholder") as refused:
        settings_cls(**extra)
    return str(refused.value)


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("service-stable", "INKWELL_SERVICE_API_KEYS"),
        ("router", "INKWELL_ROUTER_ADMIN_API_KEY"),
        ("trainer", "INKWELL_TRAINER_ADMIN_API_KEY"),
    ],
)
def test_the_example_placeholder_keys_are_refused_at_start(
    service: str, variable: str, clean_env: pytest.MonkeyPatch
) -> None:
    env = _example_env(service)
    assert env[variable].startswith("change-me")
    _refusal(_settings_class(service), env, clean_env, service)


@pytest.mark.parametrize("service", ["service-stable", "router", "trainer"])
def test_the_example_mlflow_passwords_are_refused_at_start(
    service: str, clean_env: pytest.MonkeyPatch
) -> None:
    # every other key real, so only the MLflow password can be what is refused
    env = {k: "x" * 32 if "API_KEY" in k else v for k, v in _example_env(service).items()}
    refused = _refusal(_settings_class(service), env, clean_env, service)
    assert "MLFLOW_TRACKING_PASSWORD" in refused


@pytest.mark.parametrize("service", ["mlflow", "mlflow-users"])
def test_the_example_mlflow_admin_secrets_are_refused_at_start(
    service: str, clean_env: pytest.MonkeyPatch
) -> None:
    from inkwell.settings import RegistryAccessSettings

    env = _example_env(service)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("change-me")
    refused = _refusal(RegistryAccessSettings, env, clean_env, service)
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in refused


def test_each_component_runs_as_its_own_mlflow_user_and_only_the_trainer_seeds(
    compose: dict[str, Any],
) -> None:
    for service, user in MLFLOW_USERS.items():
        env = environment(compose["services"][service])
        assert env["MLFLOW_TRACKING_USERNAME"] == user, service
    for service in ("service-stable", "service-canary"):
        # read-only: seeding the shipped models would be refused, the trainer does it
        assert environment(compose["services"][service])["INKWELL_SEED_SHIPPED"] == "false"
    users = environment(compose["services"]["mlflow-users"])
    passwords = {
        users["INKWELL_MLFLOW_TRAINER_PASSWORD"],
        users["INKWELL_MLFLOW_ROUTER_PASSWORD"],
        users["INKWELL_MLFLOW_SERVICE_PASSWORD"],
    }
    assert len(passwords) == 3
    service = environment(compose["services"]["service-stable"])
    assert service["MLFLOW_TRACKING_PASSWORD"] == users["INKWELL_MLFLOW_SERVICE_PASSWORD"]
    admin = environment(compose["services"]["mlflow"])["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert users["MLFLOW_AUTH_ADMIN_PASSWORD"] == admin
    assert not any(admin == v for s in MLFLOW_USERS for v in environment(
        compose["services"][s]).values())  # fmt: skip


def test_router_and_trainer_have_separate_admin_keys(compose: dict[str, Any]) -> None:
    router = environment(compose["services"]["router"])["INKWELL_ROUTER_ADMIN_API_KEY"]
    trainer = environment(compose["services"]["trainer"])["INKWELL_TRAINER_ADMIN_API_KEY"]
    assert router != trainer


@pytest.mark.parametrize("service", list(COMPONENTS))
def test_each_container_runs_a_command_the_cli_really_has(
    compose: dict[str, Any], service: str
) -> None:
    command = compose["services"][service]["command"]
    assert command == COMPONENTS[service][2]
    _settings_class(service)  # skips until the component is merged
    cli = _cli()
    sub = cli.commands.get(command[1])
    assert sub is not None, f"`inkwell {command[1]}` does not exist"
    args = list(command[2:])
    while args and isinstance(sub, click.Group):  # `inkwell mlflow init-users`
        sub = sub.commands.get(args.pop(0))
        assert sub is not None, f"`{' '.join(command)}` does not exist"
    context = sub.make_context(command[1], args, resilient_parsing=False)
    assert context.params is not None


@pytest.mark.parametrize("service", list(COMPONENTS))
def test_environment_keys_are_read_by_the_components_settings_class(
    compose: dict[str, Any], service: str
) -> None:
    settings_cls = _settings_class(service)
    known = settings_env_keys(settings_cls) | NON_SETTINGS_KEYS
    env = environment(compose["services"][service])
    unknown = sorted(k for k in env if k.startswith("INKWELL_") and k not in known)
    assert not unknown, f"{service} sets variables {settings_cls.__name__} never reads: {unknown}"


@pytest.mark.parametrize("service", [s for s in COMPONENTS if s not in ("init", "mlflow-users")])
def test_settings_validate_and_listen_where_compose_expects(
    compose: dict[str, Any], service: str, clean_env: pytest.MonkeyPatch
) -> None:
    settings_cls = _settings_class(service)
    spec = compose["services"][service]
    env = environment(spec)
    for key, value in env.items():
        clean_env.setenv(key, value)
    command = spec["command"]
    extra = {"variant": command[command.index("--variant") + 1]} if "--variant" in command else {}
    settings = settings_cls(**extra)
    assert settings.host == "0.0.0.0", f"{service} must listen on all interfaces in a container"
    port = getattr(settings, "resolved_port", settings.port)
    assert container_ports(spec) == {port}
    health = urlsplit(env["INKWELL_HEALTHCHECK_URL"])
    assert health.port == port
    assert settings.resolved_tracking_uri == "http://mlflow:5000"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://inkwell:")


def test_database_urls_match_the_postgres_service(compose: dict[str, Any]) -> None:
    postgres = environment(compose["services"]["postgres"])
    expected = (
        f"postgresql+psycopg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    for service in INKWELL_SERVICES:
        assert environment(compose["services"][service])["INKWELL_DATABASE_URL"] == expected
    mlflow_url = environment(compose["services"]["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow_url == expected.rsplit("/", 1)[0] + "/mlflow"
    initdb = (REPO / "docker/postgres/initdb/10-mlflow-database.sql").read_text()
    assert re.search(r"CREATE DATABASE mlflow OWNER inkwell;", initdb)


def test_mlflow_server_options_exist_and_accept_the_clients_host_header(
    compose: dict[str, Any],
) -> None:
    import mlflow.cli

    from inkwell.settings import RegistryAccessSettings

    spec = compose["services"]["mlflow"]
    # `inkwell mlflow server` writes the auth config, then runs `mlflow server` with the rest
    assert spec["command"][:3] == ["inkwell", "mlflow", "server"]
    server = mlflow.cli.server
    context = server.make_context("server", list(spec["command"][3:]))
    assert context.params["serve_artifacts"] is True
    assert context.params["artifacts_destination"].startswith("s3://")
    envvars = {p.envvar for p in server.params if p.envvar}
    # Read by boto3 and MLflow's S3 artifact repository, not by the CLI.
    s3_keys = {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    env = environment(spec)
    for key in env:
        known = NON_SETTINGS_KEYS | s3_keys | {"HOME"}
        known |= settings_env_keys(RegistryAccessSettings)  # the auth config
        assert key in envvars or key in known, f"mlflow ignores {key}"
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    tracking = urlsplit(environment(compose["services"]["router"])["INKWELL_TRACKING_URI"])
    assert tracking.netloc in allowed, "MLflow would answer the components' requests with 403"


def test_router_reaches_both_services_and_prometheus_by_compose_name(
    compose: dict[str, Any],
) -> None:
    env = environment(compose["services"]["router"])
    services = compose["services"]
    for key, target in (
        ("INKWELL_ROUTER_STABLE_URL", "service-stable"),
        ("INKWELL_ROUTER_CANARY_URL", "service-canary"),
        ("INKWELL_ROUTER_PROMETHEUS_URL", "prometheus"),
    ):
        url = urlsplit(env[key])
        assert url.hostname == target
        assert url.port in container_ports(services[target])


def test_prometheus_scrapes_every_component_where_compose_runs_it(
    compose: dict[str, Any],
) -> None:
    config = yaml.safe_load((MONITORING / "prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    for service in ("router", "service-stable", "service-canary", "trainer"):
        port = next(iter(container_ports(compose["services"][service])))
        assert targets[f"inkwell-{service}"] == [f"{service}:{port}"]


def test_start_up_order_waits_on_real_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    image_has_healthcheck = "HEALTHCHECK" in (REPO / "Dockerfile").read_text()
    for name, spec in services.items():
        for dependency, rule in (spec.get("depends_on") or {}).items():
            target = services[dependency]
            condition = rule["condition"]
            if condition == "service_healthy":
                check = target.get("healthcheck")
                inherits = "build" in target and image_has_healthcheck
                assert (check and not check.get("disable")) or (check is None and inherits), (
                    f"{name} waits for {dependency} to be healthy, but it has no health check"
                )
            elif condition == "service_completed_successfully":
                assert target.get("restart", "no").startswith(("no", "on-failure")), (
                    f"{dependency} is a one-shot job: it must not restart forever"
                )
            else:
                assert condition == "service_started"
    assert services["router"]["depends_on"]["service-stable"]["condition"] == "service_healthy"
    # Only the stable service waits for a model; the canary has none until the trainer makes one.
    stable_check = environment(services["service-stable"])["INKWELL_HEALTHCHECK_URL"]
    canary_check = environment(services["service-canary"])["INKWELL_HEALTHCHECK_URL"]
    assert stable_check.endswith("/readyz") and canary_check.endswith("/healthz")


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("postgres", "/var/lib/postgresql/data"),
        ("minio", "/data"),
        ("trainer", "/var/lib/inkwell"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
    ],
)
def test_state_that_must_persist_is_on_a_named_volume(
    compose: dict[str, Any], service: str, path: str
) -> None:
    mount = mounts(compose["services"][service]).get(path)
    assert mount is not None and mount["type"] == "volume", f"{service}:{path} is not a volume"
    assert mount["source"] in compose["volumes"]


def test_bind_mounted_config_exists_in_the_repository(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for mount in mounts(spec).values():
            if mount["type"] == "bind" and "mnist" not in mount["source"]:
                source = Path(mount["source"])
                assert source.is_relative_to(REPO) and source.exists(), (name, mount)
                assert mount.get("read_only") is True, f"{name} may write into the checkout"


def test_grafana_is_provisioned_with_the_datasource_and_every_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    sources = {target: Path(m["source"]) for target, m in mounts(grafana).items()}
    provisioning = sources["/etc/grafana/provisioning"]
    assert provisioning == MONITORING / "grafana/provisioning"
    provider = yaml.safe_load((provisioning / "dashboards/inkwell.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert sources[path] == MONITORING / "grafana/dashboards"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname == "prometheus"
    assert url.port in container_ports(compose["services"]["prometheus"])
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (sources[path] / Path(home).name).is_file()
