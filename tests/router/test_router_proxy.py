"""The reverse proxy against fake services: split, stickiness, override, fallback, breaker,
shadow, delayed labels, limits and errors."""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.app import create_app
from router.routing import user_position
from router.settings import RouterSettings
from router.state import Phase, RolloutState
from tests.harness import free_port, wait_until
from tests.router.router_fakes import FakeService, digit_of, serve_in_thread

PNG = b"\x89PNG\r\n\x1a\n" + b"not really a png but the fake service does not care"
ADMIN_KEY = "proxy-test-admin-key-0123456789"
OVERRIDE = {"X-Inkwell-Override-Key": ADMIN_KEY}


def users_on(variant: str, weight: float, count: int, canary_version: str = "2") -> list[str]:
    """User ids the sticky split puts on `variant` at `weight` (the fake canary serves "2")."""
    found = []
    for i in range(10_000):
        user = f"user-{i}"
        on_canary = user_position(user, canary_version) < weight
        if on_canary == (variant == "canary"):
            found.append(user)
            if len(found) == count:
                return found
    raise AssertionError("no such users")


def image(i: int) -> bytes:
    return PNG + str(i).encode()


@pytest.fixture(params=["fast", "httpx"])
def both_clients(request, monkeypatch):
    """Run the test with each upstream client (the default is the fast one)."""
    monkeypatch.setenv("INKWELL_ROUTER_UPSTREAM_CLIENT", request.param)
    return request.param


@contextmanager
def router(
    tmp_path,
    stable_url: str,
    canary_url: str,
    wait: bool = True,
    wait_canary: bool = True,
    **overrides,
):
    overrides.setdefault("admin_api_key", ADMIN_KEY)
    settings = RouterSettings(
        home=tmp_path,
        stable_url=stable_url,
        canary_url=canary_url,
        controller=False,
        probe_interval_s=0.1,
        canary_timeout_s=0.3,
        breaker_cooldown_s=60,
        **overrides,
    )
    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        deadline = time.monotonic() + 30  # a loaded CI machine: the first probe can be slow
        while wait:
            ready = client.get("/readyz")
            versions = ready.json().get("served_versions", {}) if ready.status_code == 200 else {}
            if ready.status_code == 200 and (versions.get("canary") or not wait_canary):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"router not ready: {ready.text}")
            time.sleep(0.05)
        yield client


def predict(client: httpx.Client, body: bytes, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/digits/predict", content=body, headers={"content-type": "image/png", **headers}
    )


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_weighted_split_is_sticky_per_user(tmp_path, stable_service, canary_service):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=50) as client:
        seen: dict[str, set[str]] = {}
        for round_ in range(3):
            for u in range(60):
                response = predict(client, image(round_), **{"X-User-Id": f"user-{u}"})
                assert response.status_code == 200
                seen.setdefault(f"user-{u}", set()).add(response.json()["variant"])
        assert all(len(variants) == 1 for variants in seen.values())
        on_canary = sum("canary" in v for v in seen.values())
        assert 15 <= on_canary <= 45


def test_response_says_which_variant_answered(tmp_path, stable_service, canary_service):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=100) as client:
        response = predict(client, image(1), **{"X-User-Id": "u"})
        assert response.headers["x-inkwell-variant"] == "canary"
        assert response.json()["model_version"] == "2"


def test_override_header_picks_the_variant(tmp_path, stable_service, canary_service):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=0) as client:
        assert (
            predict(client, image(1), **{"X-Inkwell-Variant": "canary", **OVERRIDE}).json()[
                "variant"
            ]
            == "canary"
        )
        assert (
            predict(client, image(1), **{"X-Inkwell-Variant": "stable", **OVERRIDE}).json()[
                "variant"
            ]
            == "stable"
        )
        bad = predict(client, image(1), **{"X-Inkwell-Variant": "green", **OVERRIDE})
        assert bad.status_code == 422
        assert bad.json()["code"] == "invalid_variant"
        assert "stable" in bad.json()["message"]


def test_anonymous_user_gets_a_cookie_and_stays_on_one_variant(
    tmp_path, stable_service, canary_service
):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=50) as client:
        first = predict(client, image(0))
        assert "inkwell_user" in first.cookies
        variants = {predict(client, image(i)).json()["variant"] for i in range(20)}
        assert variants == {first.json()["variant"]}


def test_user_id_form_field_makes_uploads_sticky(tmp_path, stable_service, canary_service):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=50) as client:
        for u in range(20):
            variants = {
                client.post(
                    "/v1/digits/predict",
                    files={"image": ("d.png", image(i), "image/png")},
                    data={"user_id": f"form-user-{u}"},
                ).json()["variant"]
                for i in range(4)
            }
            assert len(variants) == 1


def test_failing_canary_is_answered_by_stable_and_the_breaker_opens(
    tmp_path, stable_service, canary_service, both_clients
):
    canary, _ = canary_service
    canary.mode = "error"
    with router(
        tmp_path,
        stable_service[1],
        canary_service[1],
        canary_weight=100,
        breaker_consecutive_failures=3,
    ) as client:
        for i in range(20):
            response = predict(client, image(i), **{"X-User-Id": f"u{i}"})
            assert response.status_code == 200
            assert response.json()["variant"] == "stable"
        assert canary.predictions == 3  # then the breaker stopped sending it traffic
        assert metric(client, "inkwell_router_circuit_open", variant="canary") == 1
        assert metric(client, "inkwell_router_fallbacks_total", reason="error") == 3
        assert (
            metric(
                client, "inkwell_router_upstream_requests_total", variant="canary", outcome="error"
            )
            == 3
        )


def test_canary_answering_nan_is_replaced_by_stable(
    tmp_path, stable_service, canary_service, both_clients
):
    canary, _ = canary_service
    canary.mode = "nan"
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=100) as client:
        response = predict(client, image(3), **{"X-User-Id": "u"})
        assert response.status_code == 200
        assert response.json()["variant"] == "stable"
        assert response.json()["confidence"] == 0.9
        assert response.headers["x-inkwell-fallback"] == "invalid"
        assert (
            metric(
                client,
                "inkwell_router_upstream_requests_total",
                variant="canary",
                outcome="invalid",
            )
            == 1
        )


def test_slow_canary_times_out_into_stable(tmp_path, stable_service, canary_service, both_clients):
    canary, _ = canary_service
    canary.mode, canary.delay_s = "slow", 2.0
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=100) as client:
        started = time.monotonic()
        response = predict(client, image(1), **{"X-User-Id": "u"})
        assert response.status_code == 200 and response.json()["variant"] == "stable"
        assert response.headers["x-inkwell-fallback"] == "timeout"
        assert time.monotonic() - started < 1.5


def test_killed_canary_causes_no_client_error(tmp_path, stable_service, both_clients):
    canary = FakeService("canary", "2")
    server = serve_in_thread(canary.app())
    canary_url = server.__enter__()
    with router(tmp_path, stable_service[1], canary_url, canary_weight=100) as client:
        assert predict(client, image(0), **{"X-User-Id": "u"}).json()["variant"] == "canary"
        server.__exit__(None, None, None)  # the canary process goes away
        for i in range(10):
            response = predict(client, image(i), **{"X-User-Id": f"u{i}"})
            assert response.status_code == 200
            assert response.json()["variant"] == "stable"
        assert metric(client, "inkwell_router_fallbacks_total", reason="unavailable") >= 1


def test_stable_down_is_a_clear_502(tmp_path, canary_service):
    dead = f"http://127.0.0.1:{free_port()}"
    with router(tmp_path, dead, canary_service[1], wait=False) as client:
        response = client.get("/v1/samples/stats")
        assert response.status_code == 502
        assert response.json()["code"] == "upstream_unavailable"
        assert dead in response.json()["message"]
        assert client.get("/readyz").status_code == 503


def test_shadow_mode_never_changes_responses(
    tmp_path, stable_service, canary_service, both_clients
):
    _stable, stable_url = stable_service
    canary, _ = canary_service
    canary.mode = "wrong"
    with (
        httpx.Client(base_url=stable_url) as direct,
        router(tmp_path, stable_url, canary_service[1], canary_weight=0, shadow=True) as client,
    ):
        for i in range(30):
            via_router = predict(client, image(i), **{"X-User-Id": f"u{i}"})
            straight = predict(direct, image(i))
            assert via_router.status_code == straight.status_code == 200
            assert via_router.content == straight.content
        deadline = time.monotonic() + 5
        while canary.predictions < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert canary.predictions == 30
        comparisons = "inkwell_router_shadow_comparisons_total"
        wait_until(lambda: metric(client, comparisons) >= 30, 5, "30 shadow comparisons")
        disagree = metric(client, "inkwell_router_shadow_comparisons_total", agree="false")
        agree = metric(client, "inkwell_router_shadow_comparisons_total", agree="true")
        assert (agree, disagree) == (0, 30)


# (stable, canary): both older services (the router reads the bodies), both today's (it reads
# only the answer headers), and a rollout from an older stable to today's canary (both ways)
ANSWER_PAIRS = [
    ("body", "body"),
    ("headers-only", "headers-only"),
    ("body", "headers-only"),
    ("headers-only", "body"),
]


@pytest.mark.parametrize(("stable_answer", "canary_answer"), ANSWER_PAIRS)
def test_shadow_agreement_is_measured(
    tmp_path, stable_service, canary_service, stable_answer, canary_answer
):
    stable_service[0].answer, canary_service[0].answer = stable_answer, canary_answer
    with router(
        tmp_path, stable_service[1], canary_service[1], canary_weight=0, shadow=True
    ) as client:
        for i in range(10):
            predict(client, image(i))
        comparisons = "inkwell_router_shadow_comparisons_total"
        wait_until(lambda: metric(client, comparisons) >= 10, 5, "10 shadow comparisons")
        assert (
            metric(
                client,
                "inkwell_router_shadow_comparisons_total",
                stable_version="1",
                canary_version="2",
                agree="true",
            )
            == 10
        )


@pytest.mark.parametrize("answer", ["body", "headers", "headers-only"])
def test_delayed_labels_score_the_variant_that_answered(
    tmp_path, stable_service, canary_service, both_clients, answer
):
    """Today's services name version, prediction and image key in answer headers (the router
    never parses their bodies: `headers-only`); an older one's JSON body is read instead."""
    canary, _ = canary_service
    canary.mode = "wrong"
    stable_service[0].answer = canary.answer = answer
    users = {v: users_on(v, 50, 4) for v in ("stable", "canary")}
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=50) as client:
        for i in range(8):
            variant = "canary" if i % 2 else "stable"
            response = predict(client, image(i), **{"X-User-Id": users[variant][i // 2]})
            assert response.headers["x-inkwell-variant"] == variant
        for i in range(8):
            upload = client.post(
                "/v1/samples",
                files={"image": ("d.png", image(i), "image/png")},
                data={"label": str(digit_of(image(i))), "user_id": "labeller"},
            )
            assert upload.status_code == 201
        # a second upload of the same image is not scored twice
        client.post(
            "/v1/samples",
            files={"image": ("d.png", image(0), "image/png")},
            data={"label": str(digit_of(image(0))), "user_id": "labeller"},
        )
        online = "inkwell_router_online_predictions_total"
        assert metric(client, online, variant="stable", model_version="1", correct="true") == 4
        assert metric(client, online, variant="canary", model_version="2", correct="false") == 4
        assert metric(client, online, variant="canary", correct="true") == 0


def test_sample_routes_go_to_stable_only(tmp_path, stable_service, canary_service):
    stable, _ = stable_service
    canary, _ = canary_service
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=100) as client:
        assert (
            client.get("/v1/samples/stats", headers={"X-User-Id": "u"}).json()["served_by"]
            == "stable"
        )
        client.post("/v1/samples", content=b"x", headers={"content-type": "image/png"})
        assert len(stable.uploads) == 1 and not canary.uploads


def test_reviewed_cheques_and_the_review_queue_go_to_stable_only(
    tmp_path, stable_service, canary_service
):
    stable, _ = stable_service
    canary, _ = canary_service
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=100) as client:
        for path in ("/v1/cheques/samples/stats", "/v1/cheques/reviews"):
            answer = client.get(path, headers={"X-User-Id": "u"})
            assert answer.json()["served_by"] == "stable", path
        upload = client.post(
            "/v1/cheques/samples?amount=1500&user_id=u",
            content=b"x",
            headers={"content-type": "image/png", "X-User-Id": "u"},
        )
        assert upload.status_code == 201
        assert len(stable.uploads) == 1 and not canary.uploads


def test_oversize_body_is_refused_with_a_fix(tmp_path, stable_service, canary_service):
    with router(tmp_path, stable_service[1], canary_service[1], max_body_bytes=1000) as client:
        response = predict(client, b"x" * 2000)
        assert response.status_code == 413
        assert "INKWELL_ROUTER_MAX_BODY_BYTES" in response.json()["message"]


def test_metrics_are_labelled_by_variant_and_version(tmp_path, stable_service, canary_service):
    [on_stable], [on_canary] = users_on("stable", 50, 1), users_on("canary", 50, 1)
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=50) as client:
        predict(client, image(1), **{"X-User-Id": on_stable})
        predict(client, image(1), **{"X-User-Id": on_canary})
        requests = "inkwell_router_requests_total"
        assert metric(client, requests, variant="stable", model_version="1", status="200") == 1
        assert metric(client, requests, variant="canary", model_version="2", status="200") == 1
        assert (
            metric(client, "inkwell_router_upstream_latency_seconds_count", variant="canary") == 1
        )


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "api_key_required"), ({"X-API-Key": "wrong"}, "invalid_api_key")],
)
def test_admin_calls_without_the_key_get_401(
    tmp_path, stable_service, canary_service, headers, code
):
    with router(
        tmp_path,
        stable_service[1],
        canary_service[1],
        admin_api_key="proxy-test-other-admin-key-42",
    ) as client:
        for method, path in [
            ("GET", "/admin/rollout"),
            ("POST", "/admin/rollout/promote"),
            ("POST", "/admin/rollout/rollback"),
            ("POST", "/admin/rollout/pause"),
            ("POST", "/admin/rollout/resume"),
            ("GET", "/admin/rollout/events"),
        ]:
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, path
            assert response.json()["code"] == code
        ok = client.get("/admin/rollout", headers={"X-API-Key": "proxy-test-other-admin-key-42"})
        assert ok.status_code == 409  # right key; this router runs without a controller
        assert ok.json()["code"] == "controller_disabled"


def test_started_router_freezes_its_startup_heap_so_full_collections_skip_it(
    tmp_path, stable_service, canary_service, unfrozen_heap
):
    with router(tmp_path, stable_service[1], canary_service[1]) as client:
        assert predict(client, image(0)).status_code == 200
        frozen = gc.get_freeze_count()
        assert frozen > 50_000 and len(gc.get_objects()) < frozen / 5
    assert gc.get_freeze_count() == 0  # stopping gives the heap back


def test_readiness_shows_the_cheque_version_each_service_reads_with(
    tmp_path, stable_service, canary_service
):
    stable_service[0].cheque_version = "1"
    canary_service[0].cheque_version = "3"
    with router(tmp_path, stable_service[1], canary_service[1]) as client:
        versions = client.get("/readyz").json()["served_cheque_versions"]
    assert versions == {"stable": "1", "canary": "3"}


def read_cheque(client: httpx.Client, user: str) -> httpx.Response:
    headers = {"content-type": "image/png", "X-User-Id": user}
    return client.post("/v1/cheques/read", content=PNG, headers=headers)


def test_cheque_reads_follow_the_cheque_rollout_not_the_digit_one(
    tmp_path, stable_service, canary_service
):
    stable_service[0].cheque_version = "1"
    canary_service[0].cheque_version = "3"
    settings = RouterSettings(
        home=tmp_path,
        stable_url=stable_service[1],
        canary_url=canary_service[1],
        controller=False,
        canary_weight=0,
        probe_interval_s=0.1,
    )
    app = create_app(settings)
    app.runtime.apply_cheque_state(
        RolloutState(
            "inkwell-cheques",
            phase=Phase.CANARY,
            weight=100,
            canary_version="3",
            stable_version="1",
        )
    )
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").json().get("served_cheque_versions", {}).get("canary") != "3":
            assert time.monotonic() < deadline, "the router never probed the canary"
            time.sleep(0.05)
        for user in ("user-1", "user-2", "user-3"):
            cheque = read_cheque(client, user)
            assert cheque.status_code == 200, cheque.text
            assert (cheque.json()["variant"], cheque.json()["model_version"]) == ("canary", "3")
            assert predict(client, image(1), **{"X-User-Id": user}).json()["variant"] == "stable"


def test_cheque_requests_are_counted_by_cheque_version_apart_from_digit_requests(
    tmp_path, stable_service, canary_service
):
    stable_service[0].cheque_version = "1"
    canary_service[0].cheque_version = "2"  # the digit canary's version number too
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=100) as client:
        for user in ("user-1", "user-2"):
            assert read_cheque(client, user).json()["variant"] == "canary"
        cheques = "inkwell_router_cheque_upstream_requests_total"
        assert metric(client, cheques, variant="canary", model_version="2", outcome="ok") == 2
        latency = "inkwell_router_cheque_upstream_latency_seconds_count"
        assert metric(client, latency, variant="canary", model_version="2") == 2
        digits = "inkwell_router_upstream_requests_total"
        assert metric(client, digits, variant="canary") == 0  # no digit request was made


@pytest.mark.parametrize("answer", ["body", "headers-only"])
def test_cheque_reads_are_shadow_compared_by_amount(
    tmp_path, stable_service, canary_service, answer
):
    stable_service[0].cheque_version, canary_service[0].cheque_version = "1", "2"
    stable_service[0].answer = canary_service[0].answer = answer
    with router(
        tmp_path, stable_service[1], canary_service[1], canary_weight=0, shadow=True
    ) as client:
        for user in ("user-1", "user-2", "user-3"):
            assert read_cheque(client, user).headers["x-inkwell-variant"] == "stable"
        deadline = time.monotonic() + 5
        comparisons = "inkwell_router_shadow_comparisons_total"
        while metric(client, comparisons) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(client, comparisons, stable_version="1", canary_version="2") == 3
        assert metric(client, comparisons, agree="true") == 3


def test_without_a_cheque_rollout_cheque_reads_follow_the_digit_split(
    tmp_path, stable_service, canary_service
):
    with router(tmp_path, stable_service[1], canary_service[1], canary_weight=100) as client:
        assert read_cheque(client, "user-1").json()["variant"] == "canary"
