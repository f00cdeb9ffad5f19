"""Real failing dependencies for outage tests: an HTTP server that answers 500 or hangs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

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
