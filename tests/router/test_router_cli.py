"""`inkwell rollout ...` against a running router: status, actions, and clear errors.

The commands run in this process (`tests.cli.invoke`) but for one, through the real entry point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from router.app import create_app
from router.settings import RouterSettings
from tests.cli import invoke, run
from tests.harness import free_port
from tests.router.router_fakes import FakeService, serve_in_thread


class InMemoryAliases:
    def __init__(self) -> None:
        self.aliases = {"stable": "1"}
        self.tags: dict[str, dict[str, str]] = {}

    def alias_version(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def set_alias(self, alias: str, version: str) -> None:
        self.aliases[alias] = version

    def delete_alias(self, alias: str) -> None:
        self.aliases.pop(alias, None)

    def tag(self, version: str, tags: dict[str, str]) -> None:
        self.tags.setdefault(version, {}).update(tags)


def cli_env(home: Path) -> dict[str, str]:
    """This process's environment with no INKWELL_ setting but INKWELL_HOME (the admin key's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INKWELL_")}
    return {**env, "INKWELL_HOME": str(home)}


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`cli_env(tmp_path)` for the commands this test runs in process."""
    for name in os.environ:
        if name.startswith("INKWELL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))
    return tmp_path


def wait_for_phase(url: str, key: str, phase: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/admin/rollout", headers={"X-API-Key": key}).json()
        if state["phase"] == phase:
            return
        time.sleep(0.1)
    raise TimeoutError(f"rollout never reached {phase}")


def test_rollout_commands_steer_a_running_router(cli_home: Path) -> None:
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    aliases = InMemoryAliases()
    with serve_in_thread(stable.app()) as stable_url, serve_in_thread(canary.app()) as canary_url:
        settings = RouterSettings(
            home=cli_home, stable_url=stable_url, canary_url=canary_url,
            analysis_interval_s=600, registry_poll_s=0.1, probe_interval_s=0.1,
        )  # fmt: skip
        with serve_in_thread(create_app(settings, aliases=aliases), port=free_port()) as url:
            aliases.set_alias("canary", "2")
            # the router wrote its admin key into INKWELL_HOME; the CLI finds it there
            key = (cli_home / "router-admin.key").read_text()
            wait_for_phase(url, key, "canary")
            output = ""
            for args in (
                ("pause",),
                ("status",),
                ("rollback", "--reason", "cli test"),
                ("events",),
            ):
                done = invoke("rollout", *args, "--url", url)
                output += done.output
                assert done.exit_code == 0, output
    assert "paused" in output and "rolled_back" in output
    assert aliases.tags["2"]["rolled_back"].startswith("cli test")
    assert "canary" not in aliases.aliases


@pytest.mark.integration
def test_rollout_without_a_key_says_how_to_set_one(tmp_path: Path) -> None:
    # through the real entry point: the `inkwell rollout` group's one test as a process
    no_key = run(
        "rollout", "status", "--url", f"http://127.0.0.1:{free_port()}",
        cwd=tmp_path, env=cli_env(tmp_path),
    )  # fmt: skip
    assert no_key.returncode == 2
    assert "api_key_required" in no_key.stdout and "INKWELL_ROUTER_ADMIN_API_KEY" in no_key.stdout


def test_rollout_without_a_router_says_how_to_start_one(cli_home: Path) -> None:
    no_router = invoke(
        "rollout", "status", "--url", f"http://127.0.0.1:{free_port()}", "--key", "k"
    )
    assert no_router.exit_code == 2
    assert "upstream_unavailable" in no_router.stdout and "inkwell router" in no_router.stdout
