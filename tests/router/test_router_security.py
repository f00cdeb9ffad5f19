"""Holes an attacker could use through the router (issue 18): request splitting, spoofed
client addresses, anonymous overrides, malformed JSON bodies. Real router, real upstreams."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from router.app import create_app
from router.cli import forwarding_options
from router.settings import RouterSettings
from tests.router.router_fakes import serve_in_thread

ADMIN_KEY = "router-admin-key-for-tests-0123456789"


@dataclass
class Recorder:
    """A real upstream (ASGI under uvicorn) that records every request it is sent."""

    variant: str
    version: str
    requests: list[tuple[str, bytes, bytes, dict[bytes, list[bytes]]]] = field(default_factory=list)

    def proxied(self) -> list[tuple[str, bytes, bytes, dict[bytes, list[bytes]]]]:
        """Every request except the router's readiness probes."""
        return [r for r in self.requests if r[1] != b"/readyz"]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, []).append(value)
        self.requests.append((scope["method"], scope["raw_path"], scope["query_string"], headers))
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        body = (
            b'{"status":"ready","model_version":"%s"}' % self.version.encode()
            if scope["path"] == "/readyz"
            else b'{"digit":3,"confidence":0.9,"model_version":"%s","variant":"%s"}'
            % (self.version.encode(), self.variant.encode())
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def upstreams() -> Iterator[tuple[Recorder, str, Recorder, str]]:
    stable, canary = Recorder("stable", "1"), Recorder("canary", "2")
    with serve_in_thread(stable) as stable_url, serve_in_thread(canary) as canary_url:
        yield stable, stable_url, canary, canary_url


@contextmanager
def router(tmp_path, stable_url: str, canary_url: str, **overrides) -> Iterator[httpx.Client]:
    settings = RouterSettings(
        home=tmp_path,
        stable_url=stable_url,
        canary_url=canary_url,
        controller=False,
        probe_interval_s=0.1,
        admin_api_key=ADMIN_KEY,
        **overrides,
    )
    app = create_app(settings)
    with (
        serve_in_thread(app, **forwarding_options(settings)) as url,
        httpx.Client(base_url=url) as client,
    ):
        deadline = time.monotonic() + 30
        while True:
            ready = client.get("/readyz")
            if ready.status_code == 200 and ready.json()["served_versions"]["canary"]:
                break
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        yield client


# ---- request splitting ------------------------------------------------------------------------

SMUGGLED = "/v1/samples/stats%20HTTP/1.1%0d%0ahost:%20x%0d%0a%0d%0aGET%20/v1/samples/stats"


@pytest.mark.parametrize("client_kind", ["fast", "httpx"])
@pytest.mark.parametrize(
    "path",
    [
        SMUGGLED,
        "/v1/digits/predict%0d%0aX-Evil:%201",
        "/v1/digits/predict%0aGET%20/",
        "/v1/digits/pre%00dict",
    ],
)
def test_encoded_line_breaks_never_split_the_upstream_request(
    tmp_path, upstreams, monkeypatch, client_kind, path
):
    monkeypatch.setenv("INKWELL_ROUTER_UPSTREAM_CLIENT", client_kind)
    stable, stable_url, canary, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url) as client:
        for _ in range(3):  # on a kept-alive connection a split shows on the next request
            response = client.get(path)
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "invalid_request_target"
            assert "control characters" in response.json()["message"]
            assert client.get("/v1/samples/stats").status_code == 200
        sent = stable.proxied() + canary.proxied()
        assert [(method, raw) for method, raw, _, _ in sent] == [("GET", b"/v1/samples/stats")] * 3


def test_the_raw_path_and_query_are_forwarded_unchanged(tmp_path, upstreams):
    stable, stable_url, _, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url) as client:
        response = client.get("/v1/samples/st%61ts?user=a%26b&x=%2F")
        assert response.status_code == 200
        [(_, raw_path, query, _)] = stable.proxied()
        assert raw_path == b"/v1/samples/st%61ts"
        assert query == b"user=a%26b&x=%2F"


# ---- client addresses ---------------------------------------------------------------------------


def test_a_client_cannot_choose_its_forwarded_address(tmp_path, upstreams):
    stable, stable_url, _, canary_url = upstreams
    spoofed = {
        "X-Forwarded-For": "203.0.113.7",
        "Forwarded": "for=203.0.113.7",
        "X-Real-IP": "198.51.100.1",
    }
    with router(tmp_path, stable_url, canary_url) as client:
        assert client.get("/v1/samples/stats", headers=spoofed).status_code == 200
        client.post("/v1/digits/predict", content=b"png", headers=spoofed)
        for _, _, _, headers in stable.proxied():
            assert headers[b"x-forwarded-for"] == [b"127.0.0.1"]
            assert b"forwarded" not in headers and b"x-real-ip" not in headers


def test_a_trusted_proxy_names_the_client(tmp_path, upstreams):
    stable, stable_url, _, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url, forwarded_allow_ips="127.0.0.1") as client:
        client.get("/v1/samples/stats", headers={"X-Forwarded-For": "203.0.113.7"})
        [(_, _, _, headers)] = stable.proxied()
        assert headers[b"x-forwarded-for"] == [b"203.0.113.7"]
