"""API keys in every component's settings: placeholders and short keys are refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router.settings import ADMIN_KEY_FILE, RouterSettings
from service.settings import ServiceSettings
from trainer.settings import TrainerSettings

GOOD = "k3y-0f-at-least-16-chars"
KEY_SETTINGS = [
    (ServiceSettings, "INKWELL_SERVICE_API_KEYS"),
    (RouterSettings, "INKWELL_ROUTER_ADMIN_API_KEY"),
    (RouterSettings, "INKWELL_ROUTER_TESTER_API_KEY"),
    (TrainerSettings, "INKWELL_TRAINER_ADMIN_API_KEY"),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for _, variable in KEY_SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))


@pytest.mark.parametrize(("settings_cls", "variable"), KEY_SETTINGS)
@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("change-me", "placeholder"),
        ("change-me-admin-key", "placeholder"),  # what .env.example ships
        ("CHANGEME-0123456789abcdef", "placeholder"),
        ("replace_me_with_a_real_key", "placeholder"),
        ("short-key", "at least 16"),
    ],
)
def test_weak_keys_are_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, settings_cls: type, variable: str, key: str, words: str
) -> None:
    monkeypatch.setenv(variable, key)
    with pytest.raises(ValidationError, match=words) as refused:
        settings_cls()
    assert "secrets.token_urlsafe" in str(refused.value)  # says how to make a good one
    if words != "placeholder":
        assert key not in str(refused.value)  # a real (weak) key is never printed


@pytest.mark.parametrize(("settings_cls", "variable"), KEY_SETTINGS)
def test_a_random_key_of_16_characters_is_accepted(
    monkeypatch: pytest.MonkeyPatch, settings_cls: type, variable: str
) -> None:
    monkeypatch.setenv(variable, GOOD)
    settings_cls()


def test_one_weak_key_among_the_service_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKWELL_SERVICE_API_KEYS", f"{GOOD},change-me-upload-key")
    with pytest.raises(ValidationError, match="placeholder"):
        ServiceSettings()


def test_a_weak_router_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ADMIN_KEY_FILE).write_text("hunter2\n")
    settings = RouterSettings(home=tmp_path)
    with pytest.raises(ValueError, match=f"{ADMIN_KEY_FILE}.*at least 16"):
        settings.resolved_admin_key()


def test_a_generated_router_key_file_is_strong(tmp_path: Path) -> None:
    settings = RouterSettings(home=tmp_path)
    key = settings.resolved_admin_key()
    assert key is not None and len(key) >= 16
    assert settings.resolved_admin_key() == key
