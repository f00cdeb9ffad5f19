"""The router's upstream HTTP clients (fast and httpx) against a real uvicorn server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.forward import (
    TIMEOUT,
    UNAVAILABLE,
    FastUpstream,
    HttpxUpstream,
    UpstreamFailure,
)
from tests.harness import free_port
from tests.router.router_fakes import serve_in_thread

CLIENTS = {"fast": FastUpstream, "httpx": HttpxUpstream}


def echo_app() -> tuple[FastAPI, dict[str, int]]:
    app = FastAPI()
    seen = {"connections": 0}

    @app.middleware("http")
    async def count_connections(request: Request, call_next):
        peer = request.scope.get("client")
        key = f"{peer}"
        if key not in seen:
            seen[key] = 1
            seen["connections"] += 1
        return await call_next(request)

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"x-query": request.url.query, "x-got": request.headers.get("x-custom", "")},
        )

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks():
            for i in range(5):
                yield f"chunk-{i};".encode()
                await asyncio.sleep(0.01)

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/cookies")
    async def cookies() -> Response:
        response = Response(b"ok")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    @app.get("/empty")
    async def empty() -> Response:
        return Response(status_code=204)

    @app.get("/slow")
    async def slow() -> JSONResponse:
        await asyncio.sleep(1.0)
        return JSONResponse({"slow": True})

    @app.get("/fail")
    async def fail() -> JSONResponse:
        return JSONResponse({"code": "boom"}, status_code=503)

    return app, seen


@pytest.fixture(scope="module")
def server():
    app, seen = echo_app()
    with serve_in_thread(app) as url:
        yield url, seen


@pytest.fixture(params=list(CLIENTS))
def client_cls(request):
    return CLIENTS[request.param]


def run(coroutine):
    return asyncio.run(coroutine)


def test_post_body_query_and_headers_round_trip(server, client_cls):
    url, _ = server

    async def go():
        upstream = client_cls(url)
        body = bytes(range(256)) * 4000  # 1 MB, every byte value
        answer = await upstream.send(
            "POST", "/echo?x=1&y=%20", [(b"x-custom", b"yes")], body, timeout=10
        )
        await upstream.aclose()
        return answer, body

    answer, body = run(go())
    assert answer.status == 200 and answer.body == body
    headers = dict(answer.headers)
    assert headers[b"x-query"] == b"x=1&y=%20" and headers[b"x-got"] == b"yes"


def test_connections_are_kept_alive_and_reused(server):
    url, seen = server

    async def go():
        upstream = FastUpstream(url)
        before = seen["connections"]
        for i in range(20):
            answer = await upstream.send("POST", "/echo", [], str(i).encode(), timeout=5)
            assert answer.body == str(i).encode()
        await upstream.aclose()
        return seen["connections"] - before

    assert run(go()) == 1


def test_chunked_answers_are_read_whole(server, client_cls):
    url, _ = server
    answer = run(client_cls(url).send("GET", "/stream", [], b"", timeout=5))
    assert answer.body == b"".join(f"chunk-{i};".encode() for i in range(5))


def test_repeated_headers_survive(server, client_cls):
    url, _ = server
    answer = run(client_cls(url).send("GET", "/cookies", [], b"", timeout=5))
    cookies = [v for k, v in answer.headers if k.lower() == b"set-cookie"]
    assert len(cookies) == 2


def test_bodiless_answers(server, client_cls):
    url, _ = server

    async def go():
        upstream = client_cls(url)
        empty = await upstream.send("GET", "/empty", [], b"", timeout=5)
        head = await upstream.send("HEAD", "/cookies", [], b"", timeout=5)
        after = await upstream.send("POST", "/echo", [], b"still fine", timeout=5)
        await upstream.aclose()
        return empty, head, after

    empty, head, after = run(go())
    assert (empty.status, empty.body) == (204, b"")
    assert head.body == b"" and after.body == b"still fine"


def test_error_status_is_an_answer_not_a_failure(server, client_cls):
    url, _ = server
    answer = run(client_cls(url).send("GET", "/fail", [], b"", timeout=5))
    assert answer.status == 503


def test_timeout_is_reported_as_timeout(server, client_cls):
    url, _ = server

    async def go():
        upstream = client_cls(url)
        started = time.monotonic()
        with pytest.raises(UpstreamFailure) as info:
            await upstream.send("GET", "/slow", [], b"", timeout=0.2)
        took = time.monotonic() - started
        # the connection that timed out is not reused for the next request
        answer = await upstream.send("POST", "/echo", [], b"next", timeout=5)
        await upstream.aclose()
        return info.value, took, answer

    failure, took, answer = run(go())
    assert failure.kind == TIMEOUT and took < 0.8
    assert answer.body == b"next"


def test_refused_connection_is_unavailable(client_cls):
    with pytest.raises(UpstreamFailure) as info:
        run(client_cls(f"http://127.0.0.1:{free_port()}").send("GET", "/", [], b"", timeout=2))
    assert info.value.kind == UNAVAILABLE


def test_server_closing_an_idle_connection_is_retried_transparently():
    app, _ = echo_app()
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:

        async def go():
            upstream = FastUpstream(f"http://127.0.0.1:{port}", keepalive_s=60)
            first = await upstream.send("POST", "/echo", [], b"1", timeout=5)
            await asyncio.sleep(1.6)  # the server has closed the kept-alive connection
            second = await upstream.send("POST", "/echo", [], b"2", timeout=5)
            await upstream.aclose()
            return first, second

        first, second = run(go())
        assert (first.body, second.body) == (b"1", b"2")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_server_that_dies_mid_answer_is_unavailable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def half_answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        conn.close()

    thread = threading.Thread(target=half_answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(UpstreamFailure) as info:
            run(FastUpstream(f"http://127.0.0.1:{port}").send("GET", "/", [], b"", timeout=5))
        assert info.value.kind == UNAVAILABLE
    finally:
        listener.close()


def test_many_concurrent_requests(server, client_cls):
    url, _ = server

    async def go():
        upstream = client_cls(url, max_connections=8)
        answers = await asyncio.gather(
            *(upstream.send("POST", "/echo", [], str(i).encode(), timeout=10) for i in range(100))
        )
        await upstream.aclose()
        return answers

    answers = run(go())
    assert [a.body for a in answers] == [str(i).encode() for i in range(100)]
