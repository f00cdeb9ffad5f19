"""What `inkwell up` would run, without running it: settings, process specs, keys, Prometheus
configuration, port checks."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from inkwell.errors import ConflictError, InvalidInputError
from inkwell_app.up import (
    COMPONENTS,
    Keys,
    UpSettings,
    build_specs,
    check_ports_free,
    cheque_training_spec,
    local_key,
    prometheus_binary,
    prometheus_config,
    resolve_keys,
    seed_shipped_models,
)
from router.settings import RouterSettings
from tests.cli import invoke

KEYS = Keys("client-key", "admin-key", "test", "test", "trainer-key", "test")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UpSettings:
    for name in list(os.environ):
        if name.startswith("INKWELL_"):
            monkeypatch.delenv(name)
    return UpSettings(home=tmp_path / "home")


def test_defaults_are_the_documented_ports_and_every_component(settings: UpSettings) -> None:
    assert settings.components == list(COMPONENTS)
    assert (settings.router_port, settings.stable_port, settings.canary_port) == (8000, 8001, 8002)
    assert settings.trainer_port == 8003 and settings.prometheus_port == 9090
    assert settings.resolved_log_dir == settings.home / "logs"


def test_components_come_from_the_environment_in_start_order(
    settings: UpSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INKWELL_UP_COMPONENTS", "router, service-stable")
    assert UpSettings().components == ["service-stable", "router"]
    monkeypatch.setenv("INKWELL_UP_COMPONENTS", "router,database")
    with pytest.raises(ValidationError, match="unknown components"):
        UpSettings()


def test_an_unknown_component_to_skip_is_a_usage_error(
    settings: UpSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INKWELL_HOME", str(settings.home))
    result = invoke("up", "--skip", "database")
    assert result.exit_code == 2
    assert "service-stable, service-canary, trainer, router" in result.output


def test_specs_wire_every_component_to_the_others(settings: UpSettings) -> None:
    specs = {spec.name: spec for spec in build_specs(settings, KEYS, prometheus=None)}
    assert list(specs) == ["service-stable", "service-canary", "trainer", "router"]
    stable, canary = specs["service-stable"], specs["service-canary"]
    assert stable.argv[:3] == (sys.executable, "-m", "inkwell")
    assert stable.argv[3:] == (
        "service",
        "--variant",
        "stable",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
    )
    assert canary.argv[5] == "canary" and canary.argv[-1] == "8002"
    # stable must have its model before the system is up; the canary may have none yet
    assert stable.ready_url == "http://127.0.0.1:8001/readyz"
    assert canary.ready_url is None and canary.health_url == "http://127.0.0.1:8002/healthz"
    assert stable.env["INKWELL_SERVICE_API_KEYS"] == "client-key"
    router = specs["router"].env
    assert router["INKWELL_ROUTER_STABLE_URL"] == "http://127.0.0.1:8001"
    assert router["INKWELL_ROUTER_CANARY_URL"] == "http://127.0.0.1:8002"
    assert router["INKWELL_ROUTER_TRAINER_URL"] == "http://127.0.0.1:8003"
    assert router["INKWELL_ROUTER_ADMIN_API_KEY"] == "admin-key"
    assert "INKWELL_ROUTER_PROMETHEUS_URL" not in router  # the controller scrapes itself
    assert specs["trainer"].env["INKWELL_TRAINER_PORT"] == "8003"
    # the router and the trainer have separate admin keys
    assert specs["trainer"].env["INKWELL_TRAINER_ADMIN_API_KEY"] == "trainer-key"
    for spec in specs.values():
        assert spec.env["INKWELL_HOME"] == str(settings.home)


def test_prometheus_starts_first_and_the_router_reads_from_it(settings: UpSettings) -> None:
    specs = build_specs(settings, KEYS, prometheus="/usr/bin/prometheus")
    assert specs[0].name == "prometheus"
    assert f"--web.listen-address=127.0.0.1:{settings.prometheus_port}" in specs[0].argv
    assert specs[0].ready_url == "http://127.0.0.1:9090/-/ready"
    assert specs[-1].env["INKWELL_ROUTER_PROMETHEUS_URL"] == "http://127.0.0.1:9090"
    written = (settings.home / "prometheus" / "prometheus.yml").read_text()
    assert written == prometheus_config(settings)


def test_prometheus_config_scrapes_each_component_that_runs(settings: UpSettings) -> None:
    settings = settings.model_copy(update={"components": ["service-stable", "router"]})
    config = yaml.safe_load(prometheus_config(settings))
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {"service-stable": ["127.0.0.1:8001"], "router": ["127.0.0.1:8000"]}
    assert config["global"]["scrape_interval"] == "5s"


def test_prometheus_on_without_the_binary_says_how_to_fix_it(settings: UpSettings) -> None:
    settings = settings.model_copy(
        update={"prometheus": "on", "prometheus_binary": "no-such-prometheus"}
    )
    with pytest.raises(InvalidInputError, match="apt-get install prometheus"):
        prometheus_binary(settings)
    auto = settings.model_copy(update={"prometheus": "auto"})
    assert prometheus_binary(auto) is None
    assert prometheus_binary(settings.model_copy(update={"prometheus": "off"})) is None


def test_a_missing_cheque_model_is_trained_in_the_background_once(settings: UpSettings) -> None:
    job = cheque_training_spec(settings)
    assert job is not None and job.oneshot  # started beside the services, never restarted
    assert job.argv[3:7] == ("cheques", "train", "--steps", str(settings.cheque_steps))
    assert cheque_training_spec(settings.model_copy(update={"train_missing": False})) is None


def test_base_training_uses_the_recipe_compose_and_kubernetes_train(settings: UpSettings) -> None:
    import inspect

    from inkwell_app.cli import train

    repo = Path(__file__).resolve().parents[2]
    assert settings.base_epochs == inspect.signature(train).parameters["epochs"].default == 4
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    assert compose["services"]["init"]["command"] == ["inkwell", "train", "--if-missing"]


def test_an_empty_registry_is_seeded_from_the_shipped_models_not_trained(
    settings: UpSettings,
) -> None:
    lines = seed_shipped_models(settings)
    assert len(lines) == 2 and all("from the shipped model" in line for line in lines)
    assert "inkwell-digits v1 (stable)" in lines[0] and "inkwell-cheques v1" in lines[1]
    assert cheque_training_spec(settings) is None  # a stable cheque model exists: no training
    assert seed_shipped_models(settings) == []  # the next start finds them


def test_seeding_can_be_turned_off(settings: UpSettings) -> None:
    settings = settings.model_copy(update={"seed_shipped": False})
    assert seed_shipped_models(settings) == []
    assert cheque_training_spec(settings) is not None


def test_local_keys_are_made_once_and_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "api.key"
    first = local_key(path)
    assert len(first) >= 24
    assert local_key(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_configured_keys_win_over_key_files(
    settings: UpSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "INKWELL_SERVICE_API_KEYS", " upload-key-0123456789:alice , k2-0123456789abcdef"
    )
    monkeypatch.setenv("INKWELL_ROUTER_ADMIN_API_KEY", "router-boss-0123456789")
    monkeypatch.setenv("INKWELL_TRAINER_ADMIN_API_KEY", "trainer-boss-0123456789")
    keys = resolve_keys(settings)
    # the key itself, as a client sends it: the service's settings split off the user scope
    assert keys.api_key == "upload-key-0123456789"
    assert (keys.admin_key, keys.trainer_key) == (
        "router-boss-0123456789",
        "trainer-boss-0123456789",
    )
    assert keys.api_key_source == "INKWELL_SERVICE_API_KEYS"
    assert keys.admin_key_source == "INKWELL_ROUTER_ADMIN_API_KEY"
    assert keys.trainer_key_source == "INKWELL_TRAINER_ADMIN_API_KEY"
    assert not (settings.home / "api.key").exists()
    specs = {spec.name: spec for spec in build_specs(settings, keys, prometheus=None)}
    assert "INKWELL_SERVICE_API_KEYS" not in specs["service-stable"].env  # the user's own stays
    assert "INKWELL_TRAINER_ADMIN_API_KEY" not in specs["trainer"].env
    assert specs["router"].env["INKWELL_ROUTER_ADMIN_API_KEY"] == "router-boss-0123456789"
    for name in ("SERVICE_API_KEYS", "ROUTER_ADMIN_API_KEY", "TRAINER_ADMIN_API_KEY"):
        monkeypatch.delenv(f"INKWELL_{name}")
    generated = resolve_keys(settings)
    assert generated.api_key == (settings.home / "api.key").read_text()
    # the router reads the same file when it runs without INKWELL_ROUTER_ADMIN_API_KEY
    assert generated.admin_key == (settings.home / "router-admin.key").read_text()
    assert generated.trainer_key == (settings.home / "trainer-admin.key").read_text()
    assert generated.trainer_key != generated.admin_key


def test_a_weak_admin_key_is_refused_by_up_as_the_router_would(
    settings: UpSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INKWELL_ROUTER_ADMIN_API_KEY", "boss")
    with pytest.raises(ValidationError, match="at least 16"):
        resolve_keys(settings)
    assert not (settings.home / "router-admin.key").exists()


def test_components_are_configured_through_their_own_settings_names(
    settings: UpSettings,
) -> None:
    specs = {spec.name: spec for spec in build_specs(settings, KEYS, prometheus=None)}
    given = {
        name.removeprefix("INKWELL_ROUTER_").lower(): value
        for name, value in specs["router"].env.items()
        if name.startswith("INKWELL_ROUTER_")
    }
    assert set(given) <= set(RouterSettings.model_fields)
    del given["admin_api_key"]  # the test's stand-in key is too short to validate
    router = RouterSettings.model_validate(given)
    assert (router.stable_url, router.canary_url) == (
        settings.url(settings.stable_port),
        settings.url(settings.canary_port),
    )
    assert router.trainer_url == settings.url(settings.trainer_port)
    assert router.port == settings.router_port
    assert specs["trainer"].env["INKWELL_TRAINER_PORT"] == str(settings.trainer_port)


def test_a_taken_port_is_reported_with_the_setting_to_change(settings: UpSettings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = settings.model_copy(update={"canary_port": port})
        with pytest.raises(ConflictError, match="INKWELL_UP_CANARY_PORT"):
            check_ports_free(taken, ["service-stable", "service-canary"])
