"""The one process harness of the suite: free ports, PNG images, child processes and waiting.

Every test that starts a real process (a component, `inkwell up`, MLflow, Prometheus) starts it
through `Process` on a `free_port()` with its own log file, and is marked `integration`.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """An ephemeral TCP port free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png(image: np.ndarray, *, dark_ink: bool = False, size: tuple[int, int] | None = None) -> bytes:
    """A uint8 image as PNG; `dark_ink` turns MNIST's ink-high pixels into a scan's dark ink."""
    pixels = (255 - image) if dark_ink else image
    picture = Image.fromarray(np.asarray(pixels).astype(np.uint8))
    if size is not None:
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def child_env(home: Path, mnist: Path) -> dict[str, str]:
    """This process's environment without INKWELL_/MLFLOW_ settings, pointed at `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INKWELL_", "MLFLOW_"))}
    env.update(
        INKWELL_HOME=str(home),
        INKWELL_DATA_DIR=str(mnist),
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PYTHONUNBUFFERED="1",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )
    return env


class Process:
    """A child process with its output in a log file, always stopped by its owner.

    In its own session by default, so stopping it stops everything it started; `inkwell up`
    runs in the test's session instead, since the tests send it Ctrl-C as a terminal would.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path = REPO,
        new_session: bool = True,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.new_session = new_session
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=new_session,
            )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the child has not exited yet."""
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        """Send `sig` to the child's process group (own session) or to the child alone."""
        if not self.alive():
            return
        if self.new_session:
            os.killpg(self.popen.pid, sig)
        else:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """kill -9: the process gets no chance to clean up."""
        self.send(signal.SIGKILL)
        if self.popen.returncode is None:
            self.popen.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` and wait; kill it if it outlives `timeout`; returns the exit status."""
        self.send(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return int(self.popen.returncode)

    def output(self) -> str:
        """Everything the child wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of its output."""
        return "\n".join(self.output().splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: Process | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `check` until true; fail early (with its log) if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    detail = f"\n{proc.name} log:\n{proc.tail()}" if proc is not None else ""
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{detail}")


def wait_http(
    proc: Process,
    url: str,
    timeout: float = 120.0,
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> None:
    """Wait until `url` answers as `ok` says, failing with `proc`'s log if it never does."""
    wait_until(lambda: ok(httpx.get(url, timeout=2.0)), timeout, url, proc, interval=0.3)


# `ctypes.util.find_library` runs these the first time some library is imported lazily,
# MLflow (through GitPython) runs `git version` at the first run or registration in a process,
# and `platform.processor()` runs `uname -p` the first time a library asks: not processes the
# test starts, and whichever test comes first would otherwise be blamed.
LIBRARY_LOOKUPS = frozenset({"ldconfig", "gcc", "cc", "ld", "objdump", "git", "uname"})


@contextmanager
def watch_spawns() -> Iterator[list[str]]:
    """Record the command of every child process started meanwhile, by any thread.

    `subprocess.Popen` underlies `subprocess.run`, `Process` and the CLIs the tests start, so
    wrapping its one spawning method sees them all.
    """
    started: list[str] = []
    original = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def execute(popen: subprocess.Popen[bytes], args: Any, *rest: Any, **kwargs: Any) -> Any:
        command = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
        if Path(command.split(" ", 1)[0]).name not in LIBRARY_LOOKUPS:
            started.append(command)
        return original(popen, args, *rest, **kwargs)

    subprocess.Popen._execute_child = execute  # type: ignore[attr-defined]
    try:
        yield started
    finally:
        subprocess.Popen._execute_child = original  # type: ignore[attr-defined]


def require_integration_mark(item: pytest.Item, started: list[str]) -> None:
    """Fail a test that started processes without the `integration` mark `-m` selects on."""
    if started and item.get_closest_marker("integration") is None:
        commands = "\n  ".join(command[:160] for command in started[:5])
        pytest.fail(
            f"{item.nodeid} started {len(started)} process(es) but is not marked integration;"
            f" add `pytest.mark.integration` (pytestmark or a decorator) so that"
            f' `-m "not integration"` leaves it out:\n  {commands}',
            pytrace=False,
        )
