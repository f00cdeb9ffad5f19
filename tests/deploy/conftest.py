"""Fixtures for the deployment tests that start real processes."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from tests.harness import Process, wait_http


class Processes:
    """The module's processes, each in its own process group, always stopped (TERM, then KILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, Process] = {}

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        """Start `argv` as `name`, its output in the module's log folder."""
        process = Process(name, argv, env, self.logs / f"{name}.log", cwd=cwd)
        self.started[name] = process
        return process.popen

    def log(self, name: str) -> str:
        """The end of `name`'s output."""
        process = self.started.get(name)
        return process.output()[-4000:] if process is not None else ""

    def wait_http(
        self,
        name: str,
        url: str,
        timeout: float = 120.0,
        ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    ) -> None:
        """Wait until `url` answers as `ok` says; fail with the process's log if it never does."""
        try:
            wait_http(self.started[name], url, timeout, ok)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{name}: {error}")

    def stop_all(self) -> None:
        """Stop every process started, the last first."""
        for process in reversed(self.started.values()):
            process.send(signal.SIGTERM)
        for process in reversed(self.started.values()):
            process.stop()


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    owner = Processes(tmp_path_factory.mktemp("logs"))
    try:
        yield owner
    finally:
        owner.stop_all()
