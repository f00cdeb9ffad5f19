"""Holes an attacker could use through the router (issue 18): request splitting, spoofed
client addresses, anonymous overrides, malformed JSON bodies. Real router, real upstreams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from router import metrics as m
from router import proxy
from router.analysis import Sample, build_observation
from router.app import create_app
from router.cli import forwarding_options
from router.settings import RouterSettings
from router.sources import parse_exposition
from tests.router.router_fakes import SharedServer, serve_in_thread

ADMIN_KEY = "router-admin-key-for-tests-0123456789"
TESTER_KEY = "router-tester-key-for-tests-9876543210"


@dataclass
class Recorder:
    """A real upstream (ASGI under uvicorn) that records every request it is sent."""

    variant: str
    version: str
    status: int = 200  # of predictions
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
                "status": 200 if scope["path"] == "/readyz" else self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def upstreams(
    stable_server: SharedServer, canary_server: SharedServer
) -> Iterator[tuple[Recorder, str, Recorder, str]]:
    stable, canary = Recorder("stable", "1"), Recorder("canary", "2")
    with stable_server.serving(stable) as stable_url, canary_server.serving(canary) as canary_url:
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
        tester_api_key=TESTER_KEY,
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


# ---- the variant override -----------------------------------------------------------------------


def predict(client: httpx.Client, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/digits/predict", content=b"png", headers={"content-type": "image/png", **headers}
    )


@pytest.mark.parametrize(
    ("key", "code"),
    [(None, "missing_override_key"), ("not-the-key", "invalid_override_key")],
)
@pytest.mark.parametrize("variant", ["canary", "stable"])
def test_an_override_without_the_key_is_refused(tmp_path, upstreams, key, code, variant):
    stable, stable_url, canary, canary_url = upstreams
    headers = {"X-Inkwell-Variant": variant}
    if key is not None:
        headers["X-Inkwell-Override-Key"] = key
    with router(tmp_path, stable_url, canary_url) as client:
        response = predict(client, **headers)
        assert response.status_code == 401
        assert response.json()["code"] == code
        assert "X-Inkwell-Override-Key" in response.json()["message"]
        assert not stable.proxied() and not canary.proxied()


@pytest.mark.parametrize("key", [ADMIN_KEY, TESTER_KEY])
def test_the_admin_or_tester_key_may_override_and_is_not_sent_on(tmp_path, upstreams, key):
    _, stable_url, canary, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url) as client:
        response = predict(client, **{"X-Inkwell-Variant": "canary", "X-Inkwell-Override-Key": key})
        assert response.status_code == 200
        assert response.headers["x-inkwell-variant"] == "canary"
        [(_, _, _, headers)] = canary.proxied()
        assert b"x-inkwell-override-key" not in headers


def test_the_tester_key_cannot_call_the_admin_api(tmp_path, upstreams):
    _, stable_url, _, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url) as client:
        assert client.get("/admin/rollout", headers={"X-API-Key": TESTER_KEY}).status_code == 401


def test_override_traffic_stays_out_of_the_analysis_and_the_breaker(tmp_path, upstreams):
    _, stable_url, canary, canary_url = upstreams
    canary.status = 500  # every override request to the canary fails
    override = {"X-Inkwell-Variant": "canary", "X-Inkwell-Override-Key": TESTER_KEY}
    with router(tmp_path, stable_url, canary_url, breaker_consecutive_failures=3) as client:
        for _ in range(10):
            assert predict(client, **override).status_code == 200  # stable's answer
        assert len(canary.proxied()) == 10  # the breaker never opened on testers' failures
        exposition = client.get("/metrics").text
    series = parse_exposition(exposition)
    samples = [Sample(name, dict(labels), value) for (name, labels), value in series.items()]
    assert (
        sum(
            s.value
            for s in samples
            if s.name == f"{m.UPSTREAM_REQUESTS}_total" and s.labels["mode"] == "override"
        )
        == 20
    )  # 10 to the canary, 10 answered by stable: counted, under their own mode
    observation = build_observation(samples)
    assert observation.of("canary", "2").requests == 0
    assert observation.of("canary", "2").latency_count == 0
    assert observation.of("stable", "1").requests == 0
    assert observation.breaker_open.get("canary") is False


# ---- JSON bodies the router reads ---------------------------------------------------------------


def post_json(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post(
        "/v1/digits/predict", content=body, headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 422, "nested more than 32"),
        (b'{"pixels":' + b"[" * 40 + b"0" + b"]" * 40 + b"}", 422, "nested more than 32"),
        (b'{"pixels": [' + b"9" * 300 + b"]}", 422, "integer of 300 digits"),
        (b'{"user_id": -' + b"7" * 25 + b', "pixels": [0]}', 422, "at most 64 bits"),
        (b'{"pixels": [' + b"1" * 5000 + b"]}", 400, "not valid JSON"),
        (b'{"pixels": [0, 1,', 400, "not valid JSON"),
        (b"\xff\xfe{}", 400, "not valid JSON"),
    ],
)
def test_malformed_json_is_a_4xx_with_a_message_and_never_forwarded(
    tmp_path, upstreams, body, status, words
):
    stable, stable_url, canary, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url) as client:
        response = post_json(client, body)
        assert response.status_code == status, response.text
        assert response.json()["code"] == "invalid_json"
        assert words in response.json()["message"]
        assert client.get("/healthz").status_code == 200
        assert not stable.proxied() and not canary.proxied()


def test_well_formed_json_is_forwarded_unchanged(tmp_path, upstreams):
    stable, stable_url, _, canary_url = upstreams
    body = b'{"user_id": 12345, "pixels": [[0, 255], [18446744073709551615, 1.5e3]]}'
    with router(tmp_path, stable_url, canary_url) as client:
        assert post_json(client, body).status_code == 200
        assert len(stable.proxied()) == 1


def test_large_bodies_are_read_off_the_event_loop(tmp_path, upstreams, monkeypatch):
    on_loop: list[tuple[int, bool]] = []
    real_peek = proxy.peek

    def recording_peek(content_type, body, query="", *, strict=False):
        try:
            asyncio.get_running_loop()
            on_loop.append((len(body), True))
        except RuntimeError:
            on_loop.append((len(body), False))
        return real_peek(content_type, body, query, strict=strict)

    monkeypatch.setattr(proxy, "peek", recording_peek)
    _, stable_url, _, canary_url = upstreams
    small = b'{"pixels": [' + b"0," * 100 + b"0]}"
    large = b'{"pixels": [' + b"0," * 400_000 + b"0]}"
    with router(tmp_path, stable_url, canary_url) as client:
        assert post_json(client, small).status_code == 200
        assert post_json(client, large).status_code == 200
    assert on_loop == [(len(small), True), (len(large), False)]


def test_a_stable_error_answer_is_passed_on_not_called_unavailable(tmp_path, upstreams):
    stable, stable_url, _, canary_url = upstreams
    stable.status = 500
    with router(tmp_path, stable_url, canary_url) as client:
        response = post_json(client, b'{"pixels": [0]}')
        assert response.status_code == 500
        assert response.json()["model_version"] == "1"  # the service's own body
        assert response.headers["x-inkwell-variant"] == "stable"


# ---- security headers -------------------------------------------------------------------------


def test_every_router_answer_carries_the_security_headers(tmp_path, upstreams):
    _, stable_url, _, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url) as client:
        answers = {
            "page": client.get("/"),
            "asset": client.get("/ui/app.js"),
            "proxied": predict(client),
            "error": client.get("/admin/rollout"),
            "docs": client.get("/router/docs"),
        }
    for name, response in answers.items():
        headers = response.headers
        assert headers.get_list("x-frame-options") == ["DENY"], name
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["referrer-policy"] == "no-referrer", name
    for name in ("page", "asset", "proxied", "error"):
        policy = answers[name].headers.get_list("content-security-policy")
        assert len(policy) == 1 and "frame-ancestors 'none'" in policy[0], name
        assert "script-src 'self';" in policy[0] and "unsafe-inline" not in policy[0], name
    assert "content-security-policy" not in answers["docs"].headers  # Swagger UI's CDN script


def test_the_user_cookie_is_secure_when_a_trusted_proxy_says_the_client_used_tls(
    tmp_path, upstreams
):
    _, stable_url, _, canary_url = upstreams
    with router(tmp_path, stable_url, canary_url, forwarded_allow_ips="127.0.0.1") as client:
        over_tls = predict(client, **{"X-Forwarded-Proto": "https"})
        in_clear = predict(client)
    assert "; Secure" in over_tls.headers["set-cookie"]
    assert "HttpOnly" in in_clear.headers["set-cookie"]
    assert "Secure" not in in_clear.headers["set-cookie"]
