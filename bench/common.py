"""What the load benchmarks share: free ports, a child server process, reading an HTTP answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
CLI = "from inkwell_app.cli import main; main()"


def free_port() -> int:
    """A TCP port on HOST that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with a Content-Length body: (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


@contextmanager
def process(
    name: str,
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    ready_url: str,
    *,
    timeout_s: float = 180,
) -> Iterator[int]:
    """A child process logging to `log_dir/<name>.log`; yields its pid once `ready_url` is 200."""
    import httpx

    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        child = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited ({child.returncode}):\n{log.read_text()}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready:\n{log.read_text()}")
            time.sleep(0.3)
        yield child.pid
    finally:
        stop_tree(child)


def stop_tree(child: subprocess.Popen[bytes]) -> None:
    """Stop a child and every process it started.

    Some servers (LitServe's uvicorn and inference processes) outlive their parent's SIGTERM and
    would keep the port and the CPU, so the ones still running afterwards are stopped too.
    """
    import psutil

    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    child.terminate()
    try:
        child.wait(timeout=15)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    alive = [p for p in descendants if p.is_running()]
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.terminate()
    _, still = psutil.wait_procs(alive, timeout=10)
    for leftover in still:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
