"""Registry round trip with real MLflow on a temporary sqlite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inkwell.errors import ModelNotFoundError, RegistryUnavailableError
from inkwell.model import DigitNet, ModelConfig
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE, CoreSettings
from tests.outage import Mode, failing_server


def _register(registry: Registry, seed: int, aliases: tuple[str, ...]) -> str:
    torch.manual_seed(seed)
    model = DigitNet(ModelConfig(width=4))
    with registry.start_run("test") as run:
        info = registry.register_digit_model(model, run.info.run_id, aliases=aliases)
    return info.version


@pytest.mark.integration
def test_register_alias_and_load_in_fresh_process_gives_same_outputs(
    inkwell_home: Path, tmp_path: Path
) -> None:
    registry = Registry()
    version = _register(registry, seed=3, aliases=(STABLE,))
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    local = registry.load_digit_model(STABLE).model(x)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save(x, elsewhere / "x.pt")
    script = (
        "import json, torch\n"
        "from inkwell.registry import Registry\n"
        "loaded = Registry().load_digit_model('stable')\n"
        "out = loaded.model(torch.load('x.pt', weights_only=True))\n"
        "print(json.dumps({'version': loaded.info.version, 'out': out.tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["version"] == version
    assert torch.allclose(torch.tensor(payload["out"]), local, atol=1e-6)


def test_aliases_move_between_versions(inkwell_home: Path) -> None:
    registry = Registry()
    first = _register(registry, seed=1, aliases=(STABLE,))
    second = _register(registry, seed=2, aliases=(CANARY,))
    assert registry.get_version("inkwell-digits", STABLE).version == first
    assert registry.get_version("inkwell-digits", CANARY).version == second
    registry.set_alias("inkwell-digits", STABLE, second)
    registry.delete_alias("inkwell-digits", CANARY)
    assert registry.get_version("inkwell-digits", STABLE).version == second
    assert registry.find_version("inkwell-digits", CANARY) is None
    listed = {v.version: v.aliases for v in registry.list_versions("inkwell-digits")}
    assert listed[second] == (STABLE,) and listed[first] == ()


def test_loading_a_missing_alias_says_how_to_fix(inkwell_home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="inkwell train"):
        Registry().load_digit_model(STABLE)


def test_registered_version_stores_state_dict_and_preprocessing(inkwell_home: Path) -> None:
    registry = Registry()
    _register(registry, seed=0, aliases=(STABLE,))
    loaded = registry.load_digit_model(STABLE)
    assert loaded.meta["preprocessing"] == "mnist-v1"
    assert loaded.meta["config"]["width"] == 4
    assert not loaded.model.training


@pytest.mark.parametrize("mode", ["error", "hang"])
def test_a_registry_that_fails_or_hangs_raises_instead_of_reading_as_no_versions(
    inkwell_home: Path, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with failing_server(mode) as server:
        registry = Registry(CoreSettings(tracking_uri=server.url))
        started = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match=r"versions|unreachable"):
            registry.list_versions("inkwell-digits")
        with pytest.raises(RegistryUnavailableError):
            registry.run_status("0123456789abcdef")
        with pytest.raises(RegistryUnavailableError):  # not "no such alias"
            registry.find_version("inkwell-digits", STABLE)
        assert time.monotonic() - started < 20  # a hanging server fails in seconds
        assert server.requests


def test_an_unknown_run_reads_as_absent(inkwell_home: Path) -> None:
    assert Registry().run_status("0123456789abcdef0123456789abcdef") is None
    assert Registry().list_versions("never-registered") == []
