"""Labelled sample uploads: stored before the 201, duplicates recognised, statistics."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from inkwell.store import SampleStore
from service.main import create_app
from tests.service.conftest import API_KEY, TrainedRegistry, as_photo, assert_error, encode

KEY = {"X-API-Key": API_KEY}


def upload(client: TestClient, image: bytes, label: str, user: str, **extra: str):  # type: ignore[no-untyped-def]
    headers = {**KEY, **extra.pop("headers", {})} if "headers" in extra else KEY
    return client.post(
        "/v1/samples",
        files={"image": ("digit.png", image, "image/png")},
        data={"label": label, "user_id": user, **extra},
        headers=headers,
    )


def store_of(registry: TrainedRegistry) -> SampleStore:
    return SampleStore(registry.settings().resolved_database_url)


def test_upload_is_stored_with_mnist_pixels_before_201(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    image = encode(as_photo(trained_registry.test_images[7]))
    response = upload(client, image, "9", user)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] is True and body["label"] == 9 and body["state"] == "accepted"
    stored = store_of(trained_registry).get(body["sample_id"])
    assert stored is not None
    assert stored.user_id == user and stored.label == 9 and stored.image == image
    pixels = np.frombuffer(stored.pixels, dtype=np.uint8).reshape(28, 28)
    assert pixels.max() > 200 and pixels[0].max() == 0  # ink is high, border is empty


def test_same_content_from_same_user_is_recognised_as_duplicate(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    image = encode(trained_registry.test_images[8])
    first = upload(client, image, "5", user)
    again = upload(client, image, "5", user)
    other_user = upload(client, image, "5", f"{user}-b")
    assert first.status_code == 201
    assert again.status_code == 200, again.text
    assert again.json()["sample_id"] == first.json()["sample_id"]
    assert again.json()["duplicate_of"] == first.json()["sample_id"]
    assert again.json()["created"] is False
    assert other_user.status_code == 201
    assert other_user.json()["sample_id"] != first.json()["sample_id"]


def test_idempotency_key_replay_returns_the_same_sample(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    image = encode(trained_registry.test_images[9])
    first = upload(client, image, "7", user, idempotency_key="k1")
    replay = upload(client, image, "7", user, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201 and replay.status_code == 200
    assert replay.json()["sample_id"] == first.json()["sample_id"]


def test_idempotency_key_reused_with_another_image_or_label_is_a_422(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    image = encode(trained_registry.test_images[9])
    first = upload(client, image, "7", user, idempotency_key="k2")
    assert first.status_code == 201, first.text
    sample_id = first.json()["sample_id"]
    other_image = upload(
        client, encode(trained_registry.test_images[10]), "7", user, idempotency_key="k2"
    )
    body = assert_error(other_image, 422, "idempotency_key_reused")
    assert f"sample {sample_id} with a different image" in body["message"]
    other_label = upload(client, image, "3", user, headers={"Idempotency-Key": "k2"})
    body = assert_error(other_label, 422, "idempotency_key_reused")
    assert "different label" in body["message"] and "new key" in body["message"]
    assert store_of(trained_registry).get(sample_id).label == 7  # type: ignore[union-attr]


def test_json_pixels_sample_is_stored_as_png(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    pixels = trained_registry.test_images[11]
    response = client.post(
        "/v1/samples", json={"user_id": user, "label": 4, "pixels": pixels.tolist()}, headers=KEY
    )
    assert response.status_code == 201, response.text
    stored = store_of(trained_registry).get(response.json()["sample_id"])
    assert stored is not None and stored.image.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.frombuffer(stored.pixels, np.uint8).reshape(28, 28), pixels)


def test_stats_count_by_user_label_and_state(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    for index, label in ((12, "1"), (13, "1"), (14, "2")):
        assert (
            upload(client, encode(trained_registry.test_images[index]), label, user).status_code
            == 201
        )
    store = store_of(trained_registry)
    quarantined = upload(client, encode(trained_registry.test_images[15]), "3", user).json()
    store.set_state([quarantined["sample_id"]], "quarantined", reason="label disagrees")
    stats = client.get("/v1/samples/stats", headers=KEY).json()
    assert stats["by_user"][user] == 4
    assert stats["by_state"]["quarantined"] >= 1
    assert stats["quarantine_reasons"]["label disagrees"] >= 1
    assert stats["total"] == sum(stats["by_state"].values()) == sum(stats["by_label"].values())
    metrics = client.get("/metrics").text
    assert 'inkwell_service_samples_accepted_total{created="true",variant="stable"}' in metrics


def test_an_image_over_the_stored_size_limit_is_413_and_not_stored(
    trained_registry: TrainedRegistry,
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    photo = as_photo(trained_registry.test_images[16]).astype(np.int16)
    noise = np.random.default_rng(0).integers(-12, 12, photo.shape)
    image = encode(np.clip(photo + noise, 0, 255).astype(np.uint8))  # paper grain: big PNG
    small = encode(trained_registry.test_images[16])
    limit = 8 * 1024
    assert len(small) < limit < len(image)
    app = create_app(trained_registry.settings(poll_interval_s=60, max_sample_image_bytes=limit))
    with TestClient(app) as client:
        body = assert_error(upload(client, image, "3", user), 413, "image_too_large")
        assert f"{limit:,} bytes" in body["message"]
        assert upload(client, small, "3", user).status_code == 201
    assert store_of(trained_registry).stats()["by_user"][user] == 1


def test_service_starts_and_predicts_without_the_database_and_uploads_recover_by_themselves(
    trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("a file where the database's folder should be")
    settings = trained_registry.settings(
        poll_interval_s=60,
        database_url=f"sqlite:///{blocker / 'inkwell.db'}",
        store_retry_seconds=0.5,
    )
    user = f"user-{uuid.uuid4().hex[:8]}"
    image = encode(trained_registry.test_images[17])
    with TestClient(create_app(settings)) as client:
        predicted = client.post(
            "/v1/digits/predict", content=image, headers={"Content-Type": "image/png"}
        )
        assert predicted.status_code == 200, predicted.text
        assert client.get("/readyz").status_code == 200

        started = time.monotonic()
        for _ in range(3):
            response = upload(client, image, "4", user)
            assert_error(response, 503, "store_unavailable")
            assert int(response.headers["Retry-After"]) >= 1
        assert_error(client.get("/v1/samples/stats", headers=KEY), 503, "store_unavailable")
        assert time.monotonic() - started < 3  # fails fast, no call hangs on the database

        blocker.unlink()  # the database comes back
        time.sleep(0.6)
        recovered = upload(client, image, "4", user)
        assert recovered.status_code == 201, recovered.text


def test_a_database_locked_past_the_statement_timeout_answers_503_then_recovers(
    trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "locked.db"
    settings = trained_registry.settings(
        poll_interval_s=60,
        database_url=f"sqlite:///{path}",
        database_statement_timeout_s=0.3,
        store_retry_seconds=0.3,
    )
    user = f"user-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings)) as client:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            started = time.monotonic()
            response = upload(client, encode(trained_registry.test_images[18]), "1", user)
            assert_error(response, 503, "store_unavailable")
            assert "Retry-After" in response.headers
            assert time.monotonic() - started < 5  # the 0.3 s timeout, not a hang
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        time.sleep(0.4)
        recovered = upload(client, encode(trained_registry.test_images[18]), "1", user)
        assert recovered.status_code == 201, recovered.text


ALICE_KEY = "alice-only-key-0123456789"


class FakeClock:
    """Seconds since the epoch that move only when the test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_key_bound_to_a_user_may_not_upload_as_another_user(
    trained_registry: TrainedRegistry,
) -> None:
    settings = trained_registry.settings(
        poll_interval_s=60, api_keys=[API_KEY, f"{ALICE_KEY}:alice|alice-*"]
    )
    other = f"bob-{uuid.uuid4().hex[:8]}"
    alice: dict[str, Any] = {"headers": {"X-API-Key": ALICE_KEY}}
    with TestClient(create_app(settings)) as client:
        own = upload(client, encode(trained_registry.test_images[21]), "1", "alice-phone", **alice)
        assert own.status_code == 201, own.text
        posing = upload(client, encode(trained_registry.test_images[22]), "1", other, **alice)
        message = assert_error(posing, 403, "user_id_not_allowed")["message"]
        assert repr(other) in message and "alice|alice-*" in message
        users = client.get("/v1/samples/stats", headers=KEY).json()["by_user"]
        assert other not in users  # refused before anything was stored
        unbound = upload(client, encode(trained_registry.test_images[22]), "1", other)
        assert unbound.status_code == 201  # a plain key may upload as any user id


def test_uploads_over_a_keys_rate_are_429_with_retry_after_until_tokens_refill(
    trained_registry: TrainedRegistry,
) -> None:
    settings = trained_registry.settings(
        poll_interval_s=60,
        api_keys=[API_KEY, ALICE_KEY],
        upload_rate_per_s=0.5,
        upload_burst=2,
    )
    clock = FakeClock()
    user = f"user-{uuid.uuid4().hex[:8]}"
    images = [encode(trained_registry.test_images[i]) for i in range(30, 35)]
    with TestClient(create_app(settings)) as client:
        client.app.state.context.upload_limiter.clock = clock  # type: ignore[attr-defined]
        assert [upload(client, images[i], "3", user).status_code for i in (0, 1)] == [201, 201]
        limited = upload(client, images[2], "3", user)
        assert "per second" in assert_error(limited, 429, "rate_limited")["message"]
        assert limited.headers["Retry-After"] == "2"  # one token at 0.5 per second
        other_key = upload(client, images[2], "3", user, headers={"X-API-Key": ALICE_KEY})
        assert other_key.status_code == 201  # each key has its own bucket
        clock.now += 2.0
        assert upload(client, images[3], "3", user).status_code == 201
        assert upload(client, images[4], "3", user).status_code == 429


def test_uploads_over_a_keys_daily_quota_are_429_until_the_next_utc_day(
    trained_registry: TrainedRegistry,
) -> None:
    settings = trained_registry.settings(
        poll_interval_s=60, upload_rate_per_s=0, upload_daily_quota=2
    )
    clock = FakeClock(now=1_800_000_000.0)  # 57 600 s before midnight UTC
    user = f"user-{uuid.uuid4().hex[:8]}"
    images = [encode(trained_registry.test_images[i]) for i in range(40, 43)]
    with TestClient(create_app(settings)) as client:
        client.app.state.context.upload_quota.clock = clock  # type: ignore[attr-defined]
        assert [upload(client, images[i], "6", user).status_code for i in (0, 1)] == [201, 201]
        over = upload(client, images[2], "6", user)
        assert "quota of 2 uploads" in assert_error(over, 429, "quota_exceeded")["message"]
        assert over.headers["Retry-After"] == "57600"
        clock.now += 57_600
        assert upload(client, images[2], "6", user).status_code == 201


def test_a_keys_daily_quota_is_shared_by_every_process_on_one_database(
    trained_registry: TrainedRegistry,
) -> None:
    # two services (as two workers or replicas) on the same sample database
    settings = trained_registry.settings(
        poll_interval_s=60, upload_rate_per_s=0, upload_daily_quota=3
    )
    user = f"user-{uuid.uuid4().hex[:8]}"
    images = [encode(trained_registry.test_images[i]) for i in range(50, 54)]
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        assert first.app.state.context is not second.app.state.context  # type: ignore[attr-defined]
        assert upload(first, images[0], "7", user).status_code == 201
        assert upload(second, images[1], "7", user).status_code == 201
        assert upload(first, images[2], "7", user).status_code == 201
        over = upload(second, images[3], "7", user)  # its own process saw one upload only
        assert "quota of 3 uploads" in assert_error(over, 429, "quota_exceeded")["message"]
        assert upload(first, images[3], "7", user).status_code == 429
