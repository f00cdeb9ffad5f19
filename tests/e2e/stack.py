"""The whole system as the tests run it: `inkwell up` as a real subprocess on free ports, with a
temporary INKWELL_HOME holding the shipped digit model and the shipped cheque reader that
`inkwell up` seeds, and clients that talk to it over HTTP only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch

from tests.harness import Process, child_env, free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
API_KEY = "e2e-client-key-0123456789"
ADMIN_KEY = "e2e-admin-key-0123456789"


# ---- models ---------------------------------------------------------------------------------


def shipped_digit_weights() -> dict[str, torch.Tensor]:
    """The base digit model shipped in the package (the production recipe): no training."""
    from inkwell.registry import WEIGHTS_FILE
    from inkwell.shipped import SHIPPED_DIR

    path = SHIPPED_DIR / "digits" / WEIGHTS_FILE
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def register_digits(
    home: Path, state: dict[str, torch.Tensor], aliases: tuple[str, ...], note: str = "tiny"
) -> str:
    """Register a DigitNet with these weights in `home`'s registry; returns the version."""
    from inkwell.model import DigitNet, ModelConfig
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings

    width = int(state["features.0.weight"].shape[0])
    model = DigitNet(ModelConfig(width=width))  # one stem convolution: tiny and shipped alike
    model.load_state_dict(state)
    model.eval()
    registry = Registry(CoreSettings(home=home))
    with registry.start_run(f"test-{note}", tags={"inkwell.kind": "base"}) as run:
        info = registry.register_digit_model(
            model,
            run.info.run_id,
            meta={"note": note},
            tags={"validation_status": "base"},
            aliases=aliases,
        )
    return info.version


def register_cheques(home: Path, folder: Path, aliases: tuple[str, ...] = ("stable",)) -> str:
    """Register the cheque model saved in `folder` in `home`'s registry; returns the version."""
    from inkwell.cheques.reader import ChequeReader
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings

    settings = CoreSettings(home=home)
    reader = ChequeReader.from_dir(folder)
    registry = Registry(settings)
    with tempfile.TemporaryDirectory() as tmp, registry.start_run("test-cheques") as run:
        files = reader.save(Path(tmp))
        info = registry.register_files(
            settings.cheque_model_name, run.info.run_id, files, reader.meta, aliases=aliases
        )
    return info.version


def registry_aliases(home: Path, name: str = "inkwell-digits") -> dict[str, str]:
    """alias → version, read straight from the registry."""
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings

    registry = Registry(CoreSettings(home=home))
    aliases: dict[str, str] = {}
    for info in registry.list_versions(name):
        for alias in info.aliases:
            aliases[alias] = info.version
    return aliases


# ---- images ---------------------------------------------------------------------------------


# ---- processes --------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


FAST_SETTINGS: dict[str, str] = {
    # services notice alias moves quickly
    "INKWELL_SERVICE_POLL_INTERVAL_S": "0.5",
    "INKWELL_SERVICE_TORCH_THREADS": "1",
    # the rollout controller decides within seconds, not minutes
    "INKWELL_ROUTER_ANALYSIS_INTERVAL_S": "1.5",
    "INKWELL_ROUTER_REGISTRY_POLL_S": "0.5",
    "INKWELL_ROUTER_PROBE_INTERVAL_S": "0.3",
    "INKWELL_ROUTER_STATE_REFRESH_S": "0.3",
    "INKWELL_ROUTER_ROLLOUT_STEPS": "50,100",
    "INKWELL_ROUTER_MIN_REQUESTS": "8",
    "INKWELL_ROUTER_MIN_LABELS": "8",
    "INKWELL_ROUTER_RELOAD_TIMEOUT_S": "60",
    # the trainer polls every second and keeps its search small
    "INKWELL_TRAINER_POLL_SECONDS": "1",
    "INKWELL_TRAINER_DEBOUNCE_SECONDS": "1",
    "INKWELL_TRAINER_HPO_TRIALS": "2",
    "INKWELL_TRAINER_HPO_SECONDS": "20",
    "INKWELL_TRAINER_THREADS": "1",
    # models are registered by the tests themselves: no background training
    "INKWELL_UP_TRAIN_MISSING": "false",
    # the supervisor restarts quickly in tests
    "INKWELL_UP_RESTART_INITIAL_S": "0.5",
    "INKWELL_UP_HEALTH_INTERVAL_S": "1",
}


@dataclass
class Stack:
    """`inkwell up` in a subprocess, on free ports, with its own home."""

    home: Path
    mnist: Path
    log_path: Path
    components: tuple[str, ...] = ("service-stable", "service-canary", "trainer", "router")
    prometheus: str = "off"
    settings: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        names = ("router", "stable", "canary", "trainer", "prometheus")
        self.ports = {name: free_port() for name in names}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['router']}"

    def service_url(self, variant: str) -> str:
        return f"http://127.0.0.1:{self.ports[variant]}"

    @property
    def trainer_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['trainer']}"

    def env(self) -> dict[str, str]:
        env = child_env(self.home, self.mnist)
        env.update(
            COLUMNS="200",
            INKWELL_SERVICE_API_KEYS=API_KEY,
            INKWELL_ROUTER_ADMIN_API_KEY=ADMIN_KEY,
            INKWELL_TRAINER_ADMIN_API_KEY=ADMIN_KEY,
            INKWELL_UP_PROMETHEUS=self.prometheus,
            INKWELL_UP_COMPONENTS=",".join(self.components),
            INKWELL_UP_ROUTER_PORT=str(self.ports["router"]),
            INKWELL_UP_STABLE_PORT=str(self.ports["stable"]),
            INKWELL_UP_CANARY_PORT=str(self.ports["canary"]),
            INKWELL_UP_TRAINER_PORT=str(self.ports["trainer"]),
            INKWELL_UP_PROMETHEUS_PORT=str(self.ports["prometheus"]),
        )
        env.update(FAST_SETTINGS)
        env.update(self.settings)
        return env

    def start(self, timeout: float = 300.0, *args: str) -> Stack:
        """Start `inkwell up` and return once it printed that everything is up."""
        argv = [sys.executable, "-m", "inkwell", "up", *args]
        up = Process("inkwell-up", argv, self.env(), self.log_path, new_session=False)
        self.process = up.popen
        deadline = time.monotonic() + timeout
        while "Inkwell is up." not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"inkwell up exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"inkwell up not up after {timeout:g} s:\n{self.tail()}")
            time.sleep(0.3)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 60) -> str:
        text = "\n".join(self.output().splitlines()[-lines:])
        logs = self.home / "logs"
        for name in sorted(logs.glob("*.log")) if logs.exists() else []:
            last = "\n".join(name.read_text(errors="replace").splitlines()[-25:])
            text += f"\n---- {name.name}\n{last}"
        return text

    def children(self) -> list[int]:
        """Every process `inkwell up` started, at any depth."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        """Send `sig` (Ctrl-C by default) and wait; returns the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode)

    def kill(self) -> None:
        """Last resort for a test's finalizer: kill up and everything it started."""
        if self.process is None:
            return
        pids = self.children()
        self.process.kill()
        self.process.wait(timeout=30)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def save_logs(self) -> None:
        """Keep the components' logs beside `inkwell up`'s own (the home is temporary)."""
        logs = self.home / "logs"
        if logs.exists():
            shutil.copytree(logs, self.log_path.with_suffix(".components"), dirs_exist_ok=True)

    # ---- HTTP helpers -------------------------------------------------------------------------
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(
            method, f"{self.url}{path}", headers={"X-API-Key": ADMIN_KEY}, timeout=60, **kwargs
        )
        response.raise_for_status()
        return response.json()

    def rollout(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/admin/rollout"))

    def trainer_status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.trainer_url}/v1/status", timeout=30)
        response.raise_for_status()
        return dict(response.json())
