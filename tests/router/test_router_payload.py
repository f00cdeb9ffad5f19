"""Peeking into request/response bodies: user id, image hash, label, prediction, version."""

from __future__ import annotations

import json

import httpx

from router.payload import (
    answer_problem,
    parse_multipart,
    peek,
    prediction_of,
    sha256,
    version_of,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3


def multipart(files: dict, data: dict) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.headers["content-type"], request.read()


def test_multipart_upload_gives_user_label_and_image_hash():
    content_type, body = multipart(
        {"image": ("digit.png", PNG, "image/png")}, {"label": "7", "user_id": "alice"}
    )
    found = peek(content_type, body)
    assert (found.user_id, found.label, found.image_key) == ("alice", "7", sha256(PNG))


def test_same_image_hashes_the_same_in_raw_and_multipart_form():
    content_type, body = multipart({"file": ("d.png", PNG, "image/png")}, {})
    assert peek(content_type, body).image_key == peek("image/png", PNG).image_key


def test_multipart_parts_keep_binary_data_intact():
    data = b"--not-a-boundary\r\n\r\n" + PNG + b"\r\n"
    content_type, body = multipart({"image": ("d.png", data, "image/png")}, {"a": "b"})
    parts = parse_multipart(content_type, body)
    assert [p.data for p in parts if p.filename] == [data]


def test_json_pixels_and_user_field():
    pixels = [[0] * 28 for _ in range(28)]
    body = json.dumps({"pixels": pixels, "user_id": "bob", "label": 3}).encode()
    found = peek("application/json", body)
    assert found.user_id == "bob" and found.label == "3"
    other = json.dumps({"pixels": pixels}, indent=2).encode()
    assert peek("application/json", other).image_key == found.image_key


def test_query_string_user_id():
    assert peek("image/png", PNG, "user_id=carol").user_id == "carol"


def test_garbage_bodies_are_not_an_error():
    assert peek("application/json", b"{not json").image_key is None
    assert peek("multipart/form-data", b"garbage").image_key is None
    assert peek("multipart/form-data; boundary=zz", b"garbage").image_key is None
    assert peek(None, b"").image_key is None


def test_prediction_from_digit_amount_and_oip_outputs():
    assert prediction_of({"digit": 4, "confidence": 0.9}) == "4"
    assert prediction_of({"amount": "12.50"}) == "12.50"
    outputs = {"outputs": [{"name": "probabilities", "data": [0.1, 0.7, 0.2]}]}
    assert prediction_of(outputs) == "1"
    assert prediction_of({"outputs": [{"data": [6]}]}) == "6"
    two = {
        "outputs": [
            {"name": "probabilities", "data": [0.9, 0.1]},
            {"name": "digit", "data": [3, 8]},
        ]
    }
    assert prediction_of(two) == "3,8"
    assert prediction_of({"predictions": [{"digit": 1}, {"digit": 2}]}) == "1,2"
    assert prediction_of(["x"]) is None


def test_nan_answers_are_recognised_as_unusable():
    assert answer_problem({"digit": 0, "confidence": None, "probabilities": [None] * 10})
    assert answer_problem({"predictions": [{"digit": 1, "confidence": 0.9}, {"confidence": None}]})
    assert answer_problem({"outputs": [{"name": "probabilities", "data": [None, 0.1]}]})
    assert answer_problem({"digit": 3, "confidence": 0.8, "probabilities": [0.1] * 10}) is None
    assert answer_problem({"status": "ready"}) is None


def test_version_from_service_answers():
    assert version_of({"model_version": "3"}) == "3"
    assert version_of({"model": {"version": 5}}) == "5"
    assert version_of({"status": "ready"}) is None
