"""`inkwell bench router`: its reference hops (a Python byte pipe, nginx) really proxy, and its
load generator counts a connection closed without an answer as a failed request."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from bench.common import process
from bench.router import Run, closed_loop, http_post
from router.reference import nginx_binary, nginx_config, reference_command
from tests.cli import invoke, run
from tests.harness import free_port
from tests.router.router_fakes import FakeService, digit_of


@contextmanager
def reference(name: str, service_url: str, workdir: Path) -> Iterator[str]:
    """Start reference `name` in front of the service as the bench does; yield its URL once it
    proxies the service's /readyz."""
    port = free_port()
    upstream_port = int(urlsplit(service_url).port or 80)
    command = reference_command(name, upstream_port, port, workdir)
    url = f"http://127.0.0.1:{port}"
    with process(name, command, dict(os.environ), workdir, f"{url}/readyz"):
        yield url


def assert_proxies(url: str, service: FakeService) -> None:
    """Several requests on one keep-alive connection get the service's own answers."""
    before = service.predictions
    with httpx.Client(base_url=url, timeout=10) as client:
        for image in (b"first image", b"second image", b"third image"):
            answer = client.post(
                "/v1/digits/predict", content=image, headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200
            assert answer.json()["digit"] == digit_of(image)
            assert answer.json()["model_version"] == service.version
        stats = client.get("/v1/samples/stats")
        assert stats.json()["served_by"] == service.variant
    assert service.predictions == before + 3


def nginx_missing() -> bool:
    try:
        nginx_binary()
    except FileNotFoundError:
        return True
    return False


@pytest.mark.integration
@pytest.mark.parametrize(
    "name",
    [
        "pipe",
        pytest.param(
            "nginx",
            marks=pytest.mark.skipif(
                nginx_missing(),
                reason="nginx is not installed (apt-get install nginx-light; CI installs it)",
            ),
        ),
    ],
)
def test_reference_hop_answers_like_the_service_on_one_keep_alive_connection(
    name: str, stable_service: tuple[FakeService, str], tmp_path: Path
) -> None:
    service, service_url = stable_service
    with reference(name, service_url, tmp_path) as url:
        assert_proxies(url, service)


def test_nginx_config_points_at_the_service_and_keeps_upstream_connections(
    tmp_path: Path,
) -> None:
    conf = nginx_config(tmp_path, 8101, 9202)
    assert "server 127.0.0.1:8101;" in conf
    assert "listen 127.0.0.1:9202;" in conf
    assert "keepalive 64;" in conf and 'proxy_set_header Connection "";' in conf
    assert conf.count("keepalive_requests 1000000;") == 2  # nginx's 1,000 would drop requests
    assert "daemon off;" in conf and str(tmp_path) in conf  # a foreground child, own files


@pytest.mark.integration
def test_bench_router_rejects_an_unknown_reference_before_starting_anything(
    tmp_path: Path,
) -> None:
    # through the real entry point: the `inkwell bench` group's one test as a process
    result = run("bench", "router", "--reference", "pipe", "--reference", "envoy", cwd=tmp_path)
    assert result.returncode == 2
    assert "'envoy' is not a reference; choose from nginx, pipe" in " ".join(
        result.stderr.replace("│", " ").split()
    )


def test_bench_router_rejects_an_unknown_body_before_starting_anything() -> None:
    result = invoke("bench", "router", "--body", "json")
    assert result.exit_code == 2
    assert "choose png or multipart" in " ".join(result.stderr.replace("│", " ").split())


def test_load_generator_counts_a_closed_connection_as_a_dropped_request_and_goes_on() -> None:
    """A target that answers once per connection and then hangs up (as nginx does after its
    keep-alive request limit): the closed loop reconnects and reports the drops."""

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)  # the client's next request: hang up without answering it
        writer.close()

    async def scenario() -> Run:
        server = await asyncio.start_server(once_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            request = http_post("/v1/digits/predict", b"png", "image/png", "user-1")
            return await closed_loop(
                port, [request], target="t", concurrency=2, seconds=0.5, warmup=0.0, pids={}
            )

    run = asyncio.run(scenario())
    assert run.requests > 5  # it kept going after the first hang-up
    assert run.dropped > 5 and run.errors == run.dropped
