"""`inkwell rollout ...` against a running router: status, actions, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from router.app import create_app
from router.settings import RouterSettings
from tests.harness import free_port
from tests.router.router_fakes import FakeService, serve_in_thread

REPO = Path(__file__).resolve().parents[2]


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("INKWELL_")}
    env.update(PYTHONPATH=str(REPO), INKWELL_HOME=str(home), COLUMNS="200")
    return env


def inkwell(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from inkwell_app.cli import main; main()", *args],
        env=cli_env(home), capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip


def wait_for_phase(url: str, key: str, phase: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/admin/rollout", headers={"X-API-Key": key}).json()
        if state["phase"] == phase:
            return
        time.sleep(0.1)
    raise TimeoutError(f"rollout never reached {phase}")


@pytest.mark.integration
def test_rollout_commands_steer_a_running_router(tmp_path):
    stable, canary = FakeService("stable", "1"), FakeService("canary", "2")
    aliases = InMemoryAliases()
    with serve_in_thread(stable.app()) as stable_url, serve_in_thread(canary.app()) as canary_url:
        settings = RouterSettings(
            home=tmp_path, stable_url=stable_url, canary_url=canary_url,
            analysis_interval_s=600, registry_poll_s=0.1, probe_interval_s=0.1,
        )  # fmt: skip
        with serve_in_thread(create_app(settings, aliases=aliases), port=free_port()) as url:
            aliases.set_alias("canary", "2")
            # the router wrote its admin key into INKWELL_HOME; the CLI finds it there
            key = (tmp_path / "router-admin.key").read_text()
            wait_for_phase(url, key, "canary")
            script = (
                "from inkwell_app.cli import main; import sys\n"
                "url = sys.argv[1]\n"
                "for args in (['rollout', 'pause'], ['rollout', 'status'], "
                "['rollout', 'rollback', '--reason', 'cli test'], ['rollout', 'events']):\n"
                "    sys.argv = ['inkwell', *args, '--url', url]\n"
                "    try:\n"
                "        main()\n"
                "    except SystemExit as exit:\n"
                "        if exit.code: raise\n"
            )
            done = subprocess.run(
                [sys.executable, "-c", script, url], env=cli_env(tmp_path), capture_output=True,
                text=True, timeout=300, cwd=REPO,
            )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "paused" in done.stdout and "rolled_back" in done.stdout
    assert aliases.tags["2"]["rolled_back"].startswith("cli test")
    assert "canary" not in aliases.aliases


@pytest.mark.integration
def test_rollout_without_a_key_or_router_says_how_to_fix_it(tmp_path):
    no_key = inkwell(tmp_path, "rollout", "status", "--url", f"http://127.0.0.1:{free_port()}")
    assert no_key.returncode == 2
    assert "api_key_required" in no_key.stdout and "INKWELL_ROUTER_ADMIN_API_KEY" in no_key.stdout
    no_router = inkwell(
        tmp_path, "rollout", "status", "--url", f"http://127.0.0.1:{free_port()}", "--key", "k"
    )
    assert no_router.returncode == 2
    assert "upstream_unavailable" in no_router.stdout and "inkwell router" in no_router.stdout
