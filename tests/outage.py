"""Real failing dependencies for outage tests: an HTTP server that answers 500 or hangs, and a
proxy in front of a real MLflow that breaks one chosen request."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import httpx
import pytest

Mode = Literal["error", "hang"]


@dataclass
class FailingServer:
    """A local HTTP server standing in for a broken MLflow: every request fails or hangs."""

    url: str
    requests: list[str]


@contextmanager
def failing_server(mode: Mode = "error", hang_seconds: float = 30.0) -> Iterator[FailingServer]:
    """Serve on a free port: `error` answers 500 to everything, `hang` never answers in time."""
    seen: list[str] = []
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            seen.append(f"{self.command} {self.path}")
            if mode == "hang":
                stop.wait(hang_seconds)
                return
            body = b'{"error_code": "INTERNAL_ERROR", "message": "the server is broken"}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _fail

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FailingServer(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


ProxyMode = Literal["error", "hang"]
_HOP_BY_HOP = {"connection", "content-length", "content-encoding", "host", "transfer-encoding"}


@dataclass
class FaultyProxy:
    """A proxy in front of a real MLflow that breaks exactly one request of each round.

    Request number `fail_at` (counted from the last `reset`) fails: in `error` mode MLflow
    never sees it and the client gets a 503; in `hang` mode MLflow does the work but the
    answer never comes (the client times out), the worst case for a retry.
    """

    url: str
    mode: ProxyMode = "error"
    fail_at: int | None = None
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def reset(self, fail_at: int | None) -> None:
        """Start a new round whose `fail_at`-th request (0-based) fails; None: none fails."""
        self.fail_at = fail_at
        self.requests.clear()


@contextmanager
def faulty_proxy(
    upstream: str, mode: ProxyMode = "error", hang_seconds: float = 5.0
) -> Iterator[FaultyProxy]:
    """Serve a `FaultyProxy` to `upstream` on a free port until the block ends."""
    stop = threading.Event()
    lock = threading.Lock()
    forward = httpx.Client(base_url=upstream, timeout=60)
    proxy = FaultyProxy(url="", mode=mode)

    class Handler(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            what = f"{self.command} {self.path}"
            with lock:
                number = len(proxy.requests)
                proxy.requests.append(what)
                fail = number == proxy.fail_at
                if fail:
                    proxy.failed.append(what)
            if fail and proxy.mode == "error":
                self._answer(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', {})
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            answer = forward.request(self.command, self.path, content=body, headers=headers)
            if fail:  # done upstream, but the client never hears of it
                stop.wait(hang_seconds)
                return
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            self._answer(answer.status_code, answer.content, kept)

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _relay

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        forward.close()
        thread.join(timeout=5)


@contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A real filesystem of `size` (tmpfs) mounted at `path`: writes past it fail with ENOSPC.

    Mounting needs root (CI's container runs as root); elsewhere the test is skipped.
    """
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs mount, which needs root; run the suite as root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill `disk` with one file until about `leave_bytes` are free; delete it to free them."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave_bytes))
    return filler


@dataclass
class Slowloris:
    """Slow clients holding connections open by sending their headers a byte at a time."""

    connected: int = 0
    closed_by_server: int = 0


@contextmanager
def slowloris(url: str, connections: int, byte_every_s: float = 0.5) -> Iterator[Slowloris]:
    """Open `connections` to `url`, each trickling an endless header, until the block ends."""
    host, port = url.removeprefix("http://").split(":")
    seen = Slowloris()
    stop = threading.Event()
    sockets: list[socket.socket] = []
    for _ in range(connections):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"POST /v1/digits/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sockets.append(sock)
    seen.connected = len(sockets)

    def trickle() -> None:
        while not stop.wait(byte_every_s):
            for sock in list(sockets):
                try:
                    sock.send(b"a")
                except OSError:
                    sockets.remove(sock)
                    seen.closed_by_server += 1

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=10)
        for sock in sockets:
            sock.close()
