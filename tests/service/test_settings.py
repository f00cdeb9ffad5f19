"""ServiceSettings read from INKWELL_SERVICE_* and the shared INKWELL_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from service.settings import ServiceSettings


def test_defaults_work_on_one_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))
    settings = ServiceSettings()
    assert settings.variant == "stable" and settings.resolved_port == 8001
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'inkwell.db'}"
    assert settings.torch_threads >= 1
    assert not settings.predict_requires_key and settings.api_keys == []


def test_environment_configures_variant_keys_and_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))
    monkeypatch.setenv("INKWELL_SERVICE_VARIANT", "canary")
    monkeypatch.setenv("INKWELL_SERVICE_API_KEYS", "alpha-key-0123456789, beta-key-0123456789")
    monkeypatch.setenv("INKWELL_SERVICE_MICROBATCH_MAX_SIZE", "1")
    monkeypatch.setenv("INKWELL_SERVICE_MAX_BODY_BYTES", "1000")
    settings = ServiceSettings()
    assert settings.variant == "canary" and settings.resolved_port == 8002
    assert settings.accepts_key("beta-key-0123456789")
    assert not settings.accepts_key("gamma-key-0123456789")
    assert not settings.accepts_key(None)
    assert settings.microbatch_max_size == 1 and settings.max_body_bytes == 1000


def test_unknown_variant_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKWELL_SERVICE_VARIANT", "blue")
    with pytest.raises(ValidationError, match="stable"):
        ServiceSettings()


def test_cli_registers_service_and_bench_commands() -> None:
    from inkwell_app.cli import _register_components, app

    _register_components()
    runner = CliRunner()
    serve = runner.invoke(app, ["service", "--help"])
    assert serve.exit_code == 0 and "--variant" in serve.output and "--port" in serve.output
    bench = runner.invoke(app, ["bench", "service", "--help"])
    assert bench.exit_code == 0 and "--concurrency" in bench.output
    bad = runner.invoke(app, ["service", "--variant", "blue"])
    assert bad.exit_code != 0


def test_a_key_bound_to_user_ids_is_parsed_into_its_scope(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))
    monkeypatch.setenv(
        "INKWELL_SERVICE_API_KEYS", "plain-key-0123456789, branch-key-0123456789:alice|branch-7-*"
    )
    settings = ServiceSettings()
    plain = settings.grant_for("plain-key-0123456789")
    bound = settings.grant_for("branch-key-0123456789")
    assert plain is not None and plain.allows("anyone")
    assert bound is not None and bound.users == ("alice", "branch-7-*")
    assert bound.allows("alice") and bound.allows("branch-7-teller")
    assert not bound.allows("alice2") and not bound.allows("branch-8-teller")
    assert not settings.accepts_key("branch-key-0123456789:alice|branch-7-*")


@pytest.mark.parametrize(
    ("entry", "hint"),
    [("short-key:alice", "at least 16"), ("long-enough-key-0123:al*ce", "malformed")],
)
def test_a_short_key_or_malformed_scope_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, entry: str, hint: str
) -> None:
    monkeypatch.setenv("INKWELL_SERVICE_API_KEYS", entry)
    with pytest.raises(ValidationError, match=hint):
        ServiceSettings()


@pytest.mark.parametrize("value", ["latest", "0", "v3", "-1"])
def test_pinned_model_version_must_be_a_version_number(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))
    monkeypatch.setenv("INKWELL_SERVICE_MODEL_VERSION", value)
    with pytest.raises(ValidationError, match="model_version"):
        ServiceSettings()


def test_pinned_model_version_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))
    monkeypatch.setenv("INKWELL_SERVICE_MODEL_VERSION", "12")
    assert ServiceSettings().model_version == "12"
    monkeypatch.delenv("INKWELL_SERVICE_MODEL_VERSION")
    assert ServiceSettings().model_version is None
