"""Helpers for router tests: free ports, servers in threads, a programmable fake service.

The fake service stands in for issue 3's inference service in unit tests of the proxy only
(fallback, shadow, stickiness); the end-to-end tests run the real service processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from inkwell.contract import answer_headers


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that starts stopping within 10 ms of `should_exit`.

    uvicorn's main loop looks at `should_exit` every 0.1 s; the router tests start and stop
    three servers per test, hundreds of times. `on_tick` keeps its 0.1 s period (it refreshes
    the Date header once a second and asks whether to exit)."""

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            for _ in range(10):
                await asyncio.sleep(0.01)
                if self.should_exit:
                    return
            counter = (counter + 1) % 864000
            should_exit = await self.on_tick(counter)


@contextmanager
def serve_in_thread(app, port: int | None = None, **options: object) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread; yields its base URL.

    The listening socket is bound here and handed to uvicorn, so no other process can take the
    port between choosing it and serving on it.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port or 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


class SharedServer:
    """One server in a thread for a module's tests, serving each test's own app in turn.

    Starting and stopping a uvicorn server costs a test 0.1-0.3 s (its shutdown alone waits
    0.1 s); the tests that only need a fresh fake upstream get one on this server instead.
    Between tests (no app) it answers 503.
    """

    def __init__(self) -> None:
        self.app: Any = None
        self.url = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the fakes have no start-up work of their own
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        app = self.app
        if app is None:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"no test is using this server"})
            return
        await app(scope, receive, send)

    @contextmanager
    def serving(self, app: Any) -> Iterator[str]:
        """Serve `app` for the block; yields the server's URL."""
        self.app = app
        try:
            yield self.url
        finally:
            self.app = None


@contextmanager
def shared_server() -> Iterator[SharedServer]:
    """A `SharedServer` running until the block ends."""
    server = SharedServer()
    with serve_in_thread(server) as url:
        server.url = url
        yield server


def digit_of(body: bytes) -> int:
    return hashlib.sha256(body).digest()[0] % 10


@dataclass
class FakeService:
    """A stand-in inference service: answers a digit derived from the image bytes."""

    variant: str
    version: str
    mode: str = "ok"  # ok | error | slow | wrong | nan
    delay_s: float = 0.5
    predictions: int = 0
    uploads: list[bytes] = field(default_factory=list)
    cheque_version: str | None = None
    cheque_mode: str = "ok"  # ok | error (cheque reads only)
    # body: an older service, the answer only in the JSON body | headers: the answer headers
    # too, like today's service | headers-only: a body without the answer, so only a router
    # reading the headers can learn it
    answer: str = "body"

    def answered(
        self, body: dict[str, object], prediction: str, image: bytes, version: str | None = None
    ) -> JSONResponse:
        """`body` as JSON, with the answer headers unless this fake is an older service."""
        if self.answer == "headers-only":
            body = {"note": "the answer is in the headers"}
        response = JSONResponse(body)
        if self.answer != "body":
            key = hashlib.sha256(image).hexdigest()
            answer = answer_headers(version or self.version, prediction, key)
            response.raw_headers.extend(answer)
        return response

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/digits/predict")
        async def predict(request: Request) -> JSONResponse:
            body = await request.body()
            self.predictions += 1
            if self.mode == "error":
                return JSONResponse({"code": "boom", "message": "canary broke"}, status_code=500)
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            digit = digit_of(body)
            if self.mode == "nan":
                return JSONResponse(
                    {
                        "digit": 0,
                        "confidence": None,
                        "model_version": self.version,
                        "variant": self.variant,
                    }
                )
            if self.mode == "wrong":
                digit = (digit + 1) % 10
            return self.answered(
                {
                    "digit": digit,
                    "confidence": 0.9,
                    "model_name": "inkwell-digits",
                    "model_version": self.version,
                    "variant": self.variant,
                },
                str(digit),
                body,
            )

        @app.post("/v1/cheques/read")
        async def read_cheque(request: Request) -> JSONResponse:
            image = await request.body()
            if self.cheque_mode == "error":
                return JSONResponse({"code": "boom", "message": "reader broke"}, status_code=500)
            version = self.cheque_version or self.version
            return self.answered(
                {
                    "amount": "5",
                    "confidence": 0.9,
                    "needs_review": False,
                    "model_name": "inkwell-cheques",
                    "model_version": version,
                    "variant": self.variant,
                },
                "5",
                image,
                version,
            )

        @app.post("/v1/samples")
        async def upload(request: Request) -> JSONResponse:
            self.uploads.append(await request.body())
            return JSONResponse({"sample_id": len(self.uploads)}, status_code=201)

        @app.get("/v1/samples/stats")
        async def stats() -> dict[str, object]:
            return {"total": len(self.uploads), "served_by": self.variant}

        @app.post("/v1/cheques/samples")
        async def cheque_upload(request: Request) -> JSONResponse:
            self.uploads.append(await request.body())
            return JSONResponse({"sample_id": len(self.uploads)}, status_code=201)

        @app.get("/v1/cheques/samples/stats")
        @app.get("/v1/cheques/reviews")
        async def cheque_queue() -> dict[str, object]:
            return {"total": len(self.uploads), "served_by": self.variant}

        @app.get("/readyz")
        async def ready() -> dict[str, str | None]:
            return {
                "status": "ready",
                "model_version": self.version,
                "cheque_model_version": self.cheque_version,
            }

        return app
