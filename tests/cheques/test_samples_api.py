"""`POST /v1/cheques/samples`, its stats and the review queue, through the real service app.

The registry holds the hand-set CRNN that always reads "5": v1 (stable) is calibrated so every
reading is confident; v2 (canary) so every reading needs review. Both service apps share one
sample store, as the stable and canary processes do.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from prometheus_client.parser import text_string_to_metric_families

from inkwell.cheques.reader import ChequeReader
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE, CoreSettings
from inkwell.store import SampleStore
from service.main import create_app
from service.settings import ServiceSettings
from tests.cheques.helpers import TINY, always_five, field_image, shifted_field
from tests.harness import png

SAMPLES = "/v1/cheques/samples"
READ = "/v1/cheques/read"
KEY = "cheque-reviewer-key-0123"
ROGUE_KEY = "cheque-rogue-key-0123"
HONEST_KEY = "cheque-honest-key-0123"
BRANCH_KEY = "cheque-branch-7-key-0123"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("cheque-samples")
    registry = Registry(CoreSettings(home=home, data_dir=mnist_dir))
    # stable: every reading confident; canary: every reading below the review threshold
    for alias, threshold in ((STABLE, 0.5), (CANARY, 2.0)):
        with (
            registry.start_run(f"cheque-samples-{alias}") as run,
            tempfile.TemporaryDirectory() as tmp,
        ):
            files = always_five().save(Path(tmp))
            meta = ChequeReader.build_meta(
                TINY, calibration={"temperature": 1.0, "review_threshold": threshold}
            )
            registry.register_files(
                "inkwell-cheques", run.info.run_id, files, meta, aliases=(alias,)
            )
    return home


def settings(home: Path, mnist_dir: Path, variant: str) -> ServiceSettings:
    return ServiceSettings(
        home=home,
        data_dir=mnist_dir,
        variant=variant,  # type: ignore[arg-type]
        poll_interval_s=60,
        torch_threads=1,
        api_keys=[KEY, ROGUE_KEY, HONEST_KEY, f"{BRANCH_KEY}:branch-7-*"],  # type: ignore[list-item]
        cheque_contradiction_min=3,
    )


@pytest.fixture(scope="module")
def client(home: Path, mnist_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(home, mnist_dir, STABLE))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def canary(home: Path, mnist_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(home, mnist_dir, CANARY))) as test_client:
        yield test_client


def store_of(home: Path) -> SampleStore:
    return SampleStore(CoreSettings(home=home).resolved_database_url)


def user() -> str:
    return f"branch-{uuid.uuid4().hex[:8]}"


def unique_image() -> bytes:
    """A field image no other test uploads (dedup is by image and amount)."""
    image = field_image()
    image[45:48, 5:195] = np.random.default_rng().integers(180, 235, (3, 190))
    return png(image)


def upload(
    client: TestClient, image: bytes, amount: str, user_id: str, key: str = KEY, **fields: str
) -> Response:
    return client.post(
        SAMPLES,
        files={"image": ("amount.png", image, "image/png")},
        data={"amount": amount, "user_id": user_id, **fields},
        headers={"X-API-Key": key},
    )


def read(client: TestClient, image: bytes) -> dict[str, Any]:
    response = client.post(READ, content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert len(body["message"]) > 20, body
    return str(body["message"])


def test_reviewed_field_is_stored_before_201_with_separators_dropped(
    client: TestClient, home: Path
) -> None:
    image, branch = unique_image(), user()
    response = upload(client, image, " 22.000,- ", branch)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] is True and body["state"] == "accepted" and body["amount"] == "22000"
    stored = store_of(home).cheque_sample(body["sample_id"])
    assert stored is not None
    assert stored.image == image and stored.amount == "22000" and stored.user_id == branch
    assert stored.layout == "auto" and stored.reading_id is None


def test_raw_image_body_takes_its_fields_from_the_query(client: TestClient, home: Path) -> None:
    image, branch = unique_image(), user()
    response = client.post(
        SAMPLES,
        params={"amount": "1.480", "user_id": branch, "layout": "field"},
        content=image,
        headers={**HEADERS, "Content-Type": "image/png"},
    )
    assert response.status_code == 201, response.text
    stored = store_of(home).cheque_sample(response.json()["sample_id"])
    assert stored is not None and stored.amount == "1480" and stored.layout == "field"


def test_same_image_and_amount_is_a_duplicate_whoever_sends_it(client: TestClient) -> None:
    image = unique_image()
    first = upload(client, image, "1500", user())
    again = upload(client, image, "1.500", user())
    assert first.status_code == 201
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    assert again.json()["sample_id"] == again.json()["duplicate_of"] == first.json()["sample_id"]


def test_same_image_with_another_amount_is_quarantined(client: TestClient) -> None:
    image = unique_image()
    assert upload(client, image, "1500", user()).json()["state"] == "accepted"
    second = upload(client, image, "1600", user())
    assert second.status_code == 201, second.text
    assert second.json()["state"] == "quarantined"
    assert second.json()["reason"] == "conflicting_amount"


def test_idempotency_key_replay_returns_the_same_sample(client: TestClient) -> None:
    branch = user()
    first = upload(client, unique_image(), "300", branch, idempotency_key="batch-7/1")
    replay = client.post(
        SAMPLES,
        files={"image": ("amount.png", unique_image(), "image/png")},
        data={"amount": "300", "user_id": branch},
        headers={**HEADERS, "Idempotency-Key": "batch-7/1"},
    )
    assert first.status_code == 201
    assert replay.status_code == 200, replay.text
    assert replay.json()["sample_id"] == first.json()["sample_id"]
    assert replay.json()["duplicate_of"] is None


BLANK = png(np.full((50, 200), 235, np.uint8))


@pytest.mark.parametrize(
    ("fields", "image", "status", "code", "hint"),
    [
        ({"user_id": "b1"}, None, 422, "missing_amount", "field 'amount'"),
        ({"amount": "12 dollars", "user_id": "b1"}, None, 422, "invalid_amount", "digits"),
        ({"amount": "1" * 13, "user_id": "b1"}, None, 422, "invalid_amount", "at most 12"),
        ({"amount": "--", "user_id": "b1"}, None, 422, "invalid_amount", "no digits"),
        ({"amount": "100"}, None, 422, "missing_user_id", "user_id"),
        ({"amount": "100", "user_id": "x" * 129}, None, 422, "invalid_user_id", "128"),
        (
            {"amount": "100", "user_id": "b1", "reading_id": "nope"},
            None,
            422,
            "invalid_reading_id",
            "32 hex",
        ),
        (
            {"amount": "100", "user_id": "b1", "reading_id": "0" * 32},
            None,
            404,
            "reading_not_found",
            "leave reading_id out",
        ),
        ({"amount": "100", "user_id": "b1", "layout": "x"}, None, 422, "invalid_layout", "field"),
        ({"amount": "100", "user_id": "b1"}, b"not an image", 422, "invalid_image", "PNG"),
        ({"amount": "100", "user_id": "b1"}, BLANK, 422, "no_ink", "amount visible"),
        (
            {"amount": "100", "user_id": "b1"},
            png(np.full((4, 8001), 235, np.uint8)),
            413,
            "image_too_large",
            "Crop",
        ),
    ],
)
def test_malformed_upload_is_a_4xx_saying_what_to_fix(
    client: TestClient,
    fields: dict[str, str],
    image: bytes | None,
    status: int,
    code: str,
    hint: str,
) -> None:
    before = client.get(f"{SAMPLES}/stats", headers=HEADERS).json()["total"]
    response = client.post(
        SAMPLES,
        files={"image": ("amount.png", image or unique_image(), "image/png")},
        data=fields,
        headers=HEADERS,
    )
    assert hint in assert_error(response, status, code)
    assert client.get(f"{SAMPLES}/stats", headers=HEADERS).json()["total"] == before


def test_upload_needs_a_valid_api_key(client: TestClient) -> None:
    files = {"image": ("amount.png", unique_image(), "image/png")}
    data = {"amount": "100", "user_id": "b1"}
    assert_error(client.post(SAMPLES, files=files, data=data), 401, "api_key_required")
    wrong = client.post(SAMPLES, files=files, data=data, headers={"X-API-Key": "wrong"})
    assert_error(wrong, 401, "invalid_api_key")


def test_a_key_bound_to_a_branch_may_not_upload_as_another_branch(client: TestClient) -> None:
    own = upload(client, unique_image(), "100", "branch-7-teller", key=BRANCH_KEY)
    assert own.status_code == 201, own.text
    before = client.get(f"{SAMPLES}/stats", headers=HEADERS).json()["total"]
    posing = upload(client, unique_image(), "100", "branch-8-teller", key=BRANCH_KEY)
    assert "branch-7-*" in assert_error(posing, 403, "user_id_not_allowed")
    assert client.get(f"{SAMPLES}/stats", headers=HEADERS).json()["total"] == before


def test_json_and_empty_bodies_are_refused(client: TestClient) -> None:
    as_json = client.post(SAMPLES, json={"amount": "100", "user_id": "b1"}, headers=HEADERS)
    assert "multipart/form-data" in assert_error(as_json, 415, "unsupported_media_type")
    empty = client.post(
        SAMPLES,
        params={"amount": "100", "user_id": "b1"},
        content=b"",
        headers={**HEADERS, "Content-Type": "image/png"},
    )
    assert_error(empty, 422, "empty_body")
    no_file = client.post(
        SAMPLES,
        files={"scan": ("a.png", unique_image(), "image/png")},
        data={"amount": "100", "user_id": "b1"},
        headers=HEADERS,
    )
    assert_error(no_file, 422, "missing_image")


def test_correction_names_the_reading_it_corrects(client: TestClient, home: Path) -> None:
    image = unique_image()
    reading = read(client, image)
    assert reading["amount"] == "5" and len(reading["reading_id"]) == 32
    response = upload(client, image, "58", user(), reading_id=reading["reading_id"])
    assert response.status_code == 201, response.text
    assert response.json()["reading_id"] == reading["reading_id"]
    stored = store_of(home).cheque_sample(response.json()["sample_id"])
    assert stored is not None
    assert stored.confident_reading is True and stored.contradicts_reading is True


def test_key_contradicting_confident_readings_far_more_than_others_is_quarantined(
    client: TestClient,
) -> None:
    # an honest reviewer confirms confident readings; a rogue key contradicts every one
    for shift in range(4):
        image = png(shifted_field(shift))
        reading = read(client, image)
        honest = upload(client, image, "5", user(), HONEST_KEY, reading_id=reading["reading_id"])
        assert honest.json()["state"] == "accepted", honest.text
    states = []
    for shift in range(10, 14):
        image = png(shifted_field(shift))
        reading = read(client, image)
        rogue = upload(client, image, "7", "rogue", ROGUE_KEY, reading_id=reading["reading_id"])
        assert rogue.status_code == 201, rogue.text
        states.append((rogue.json()["state"], rogue.json()["reason"]))
    # below cheque_contradiction_min (3) corrections, the key is not judged yet
    assert states[:2] == [("accepted", None), ("accepted", None)]
    assert states[2:] == [("quarantined", "contradicts_confident_readings")] * 2
    # the same key agreeing with a confident reading is not suspicious
    image = png(shifted_field(20))
    agreeing = upload(
        client, image, "5", "rogue", ROGUE_KEY, reading_id=read(client, image)["reading_id"]
    )
    assert agreeing.json()["state"] == "accepted"
    stats = client.get(f"{SAMPLES}/stats", headers=HEADERS).json()
    assert stats["quarantine_reasons"]["contradicts_confident_readings"] == 2


def test_review_queue_lists_readings_that_need_review_until_corrected(
    client: TestClient, canary: TestClient
) -> None:
    image = unique_image()
    reading = read(canary, image)
    assert reading["needs_review"] is True and reading["variant"] == CANARY
    confident = read(client, unique_image())
    queue = client.get("/v1/cheques/reviews", headers=HEADERS).json()["reviews"]
    listed = {item["reading_id"]: item for item in queue}
    assert confident["reading_id"] not in listed
    item = listed[reading["reading_id"]]
    assert item["amount"] == "5" and item["image"].startswith("data:image/png;base64,")
    corrected = upload(canary, image, "512", user(), reading_id=reading["reading_id"])
    assert corrected.status_code == 201, corrected.text
    assert corrected.json()["state"] == "accepted"  # a reading sent to review is no evidence
    queue = client.get("/v1/cheques/reviews", headers=HEADERS).json()["reviews"]
    assert reading["reading_id"] not in {item["reading_id"] for item in queue}
    assert_error(client.get("/v1/cheques/reviews"), 401, "api_key_required")


def test_stats_count_by_user_state_and_length(client: TestClient) -> None:
    branch = user()
    for amount in ("100", "2500", "3500"):
        assert upload(client, unique_image(), amount, branch).status_code == 201
    assert upload(client, unique_image(), "12 dollars", branch).status_code == 422
    stats = client.get(f"{SAMPLES}/stats", headers=HEADERS).json()
    assert stats["by_user"][branch] == 3
    assert stats["by_length"]["3"] >= 1 and stats["by_length"]["4"] >= 2
    assert stats["total"] == sum(stats["by_state"].values()) == sum(stats["by_user"].values())
    assert stats["corrections"]["with_reading"] >= stats["corrections"]["contradicting_reading"]
    metrics = client.get("/metrics").text
    assert 'inkwell_service_cheque_samples_total{outcome="accepted",variant="stable"}' in metrics
    assert 'inkwell_service_cheque_samples_rejected_total{reason="invalid_amount"' in metrics


REVIEWED = "inkwell_service_cheque_reviewed_readings"


def reviewed_count(client: TestClient, version: str, exact: str) -> float:
    """Canary readings of `version` that reviews (uploaded to `client`) scored."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            wanted = {"variant": CANARY, "model_version": version, "exact": exact}
            if sample.name == f"{REVIEWED}_total" and sample.labels == wanted:
                total += sample.value
    return total


def test_a_review_scores_the_reading_of_the_variant_that_made_it(
    client: TestClient, canary: TestClient
) -> None:
    version = read(canary, unique_image())["model_version"]
    before = reviewed_count(client, version, "true"), reviewed_count(client, version, "false")
    for amount in ("5", "57"):
        image = unique_image()
        reading = read(canary, image)  # the canary service read it; stable takes the review
        assert (reading["variant"], reading["amount"]) == (CANARY, "5")
        response = upload(client, image, amount, user(), reading_id=reading["reading_id"])
        assert response.json()["state"] == "accepted", response.text
    after = reviewed_count(client, version, "true"), reviewed_count(client, version, "false")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_a_reading_is_scored_once_whatever_reviews_name_it(
    client: TestClient, canary: TestClient
) -> None:
    image = unique_image()
    reading = read(canary, image)
    version = reading["model_version"]
    before = reviewed_count(client, version, "true")
    who, fields = user(), {"reading_id": reading["reading_id"], "idempotency_key": "k1"}
    assert upload(client, image, "5", who, **fields).status_code == 201
    assert upload(client, image, "5", who, **fields).status_code == 200  # a retry
    other = upload(client, unique_image(), "5", user(), reading_id=reading["reading_id"])
    assert other.json()["state"] == "accepted", other.text  # another image, same reading
    assert reviewed_count(client, version, "true") - before == 1


def test_a_quarantined_review_does_not_score_the_reading(
    client: TestClient, canary: TestClient
) -> None:
    image = unique_image()
    assert upload(client, image, "5", user()).json()["state"] == "accepted"
    reading = read(canary, image)
    version = reading["model_version"]
    before = reviewed_count(client, version, "false")
    response = upload(client, image, "57", user(), reading_id=reading["reading_id"])
    assert response.json()["state"] == "quarantined", response.text
    assert reviewed_count(client, version, "false") == before
