"""Every kind of bad input gets a 4xx `{code, message}` from the one error map, never a 500."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import (
    API_KEY,
    TrainedRegistry,
    as_photo,
    assert_error,
    encode,
    png_of_zeros,
)

PREDICT = "/v1/digits/predict"
BATCH = "/v1/digits/predict/batch"
SAMPLES = "/v1/samples"
KEY = {"X-API-Key": API_KEY}


def post_json(client: TestClient, path: str, payload: object):  # type: ignore[no-untyped-def]
    """JSON as Python writes it, NaN included (clients in the wild send it)."""
    return client.post(
        path, content=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )


def post_png(client: TestClient, data: bytes):  # type: ignore[no-untyped-def]
    return client.post(PREDICT, content=data, headers={"Content-Type": "image/png"})


def test_non_image_bytes_are_invalid_image(client: TestClient) -> None:
    assert_error(post_png(client, b"this is not an image at all"), 422, "invalid_image")


def test_truncated_image_is_invalid_image(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    data = encode(as_photo(trained_registry.test_images[0]))
    body = assert_error(post_png(client, data[: len(data) // 2]), 422, "invalid_image")
    assert "truncated" in body["message"]


def test_empty_body_is_rejected(client: TestClient) -> None:
    assert_error(post_png(client, b""), 422, "empty_body")
    assert_error(
        client.post(PREDICT, content=b"", headers={"Content-Type": "application/json"}),
        422,
        "empty_body",
    )


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "image/gif-ish"]
)
def test_wrong_content_type_is_415(client: TestClient, content_type: str) -> None:
    response = client.post(PREDICT, content=b"1234", headers={"Content-Type": content_type})
    assert_error(response, 415, "unsupported_media_type")


def test_image_of_20000_by_20000_pixels_is_too_large(client: TestClient) -> None:
    data = png_of_zeros(20_000, 20_000)
    assert len(data) < 200_000  # small on the wire: a decompression bomb as well
    assert_error(post_png(client, data), 413, "image_too_large")


def test_decompression_bomb_under_pillow_limit_but_over_ours_is_too_large(
    client: TestClient,
) -> None:
    data = png_of_zeros(5_000, 5_000, bit_depth=8)  # 25 Mpx from ~25 kB
    body = assert_error(post_png(client, data), 413, "image_too_large")
    assert "5000x5000" in body["message"]


def test_small_png_declaring_4000x4000_rgba_is_refused_before_decoding(
    client: TestClient,
) -> None:
    data = png_of_zeros(
        4_000, 4_000, bit_depth=8, color_type=6
    )  # 16 Mpx RGBA (64 MB raw) in ~62 kB
    assert len(data) < 64 * 1024
    started = time.perf_counter()
    body = assert_error(post_png(client, data), 413, "image_too_large")
    assert time.perf_counter() - started < 2.0  # decoding it takes seconds and ~500 MB
    assert "4000x4000" in body["message"] and "4,000,000" in body["message"]


def test_jpeg_declaring_4000x4000_is_refused_before_decoding(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("L", (4_000, 4_000), 255).save(buffer, "JPEG", quality=50)
    response = client.post(
        PREDICT, content=buffer.getvalue(), headers={"Content-Type": "image/jpeg"}
    )
    assert "4000x4000" in assert_error(response, 413, "image_too_large")["message"]


def test_batch_over_its_pixel_budget_is_refused_before_decoding(client: TestClient) -> None:
    image = png_of_zeros(2_000, 2_000)  # each within the per-image limit, 20 Mpx together
    files = [("images", (f"{i}.png", image, "image/png")) for i in range(5)]
    body = assert_error(client.post(BATCH, files=files), 413, "image_too_large")
    assert "20,000,000 pixels together" in body["message"], body


def test_all_white_image_has_no_ink(client: TestClient) -> None:
    white = np.full((120, 90), 255, dtype=np.uint8)
    assert_error(post_png(client, encode(white)), 422, "no_ink")
    assert_error(client.post(PREDICT, json={"pixels": [[0] * 28] * 28}), 422, "no_ink")


@pytest.mark.parametrize(
    ("pixels", "fragment"),
    [
        ([[0] * 28] * 27, "shape [27, 28]"),
        ([[0] * 27] * 28, "shape [28, 27]"),
        ([[0] * 28] * 27 + [[0] * 27 + [float("nan")]], "NaN"),
        ([[0] * 28] * 27 + [[0] * 27 + [256]], "range"),
        ([[0] * 28] * 27 + [[0] * 27 + [-1]], "range"),
        ([[0] * 28] * 27 + [[0] * 27 + ["x"]], "malformed"),
        ([[0] * 28] * 27 + [[0] * 30], "malformed"),
        ("not a list", "malformed"),
        (7, "shape []"),
    ],
)
def test_malformed_json_pixel_arrays(client: TestClient, pixels: object, fragment: str) -> None:
    body = assert_error(post_json(client, PREDICT, {"pixels": pixels}), 422, "invalid_image")
    assert fragment in body["message"]


def test_json_syntax_error_and_missing_field(client: TestClient) -> None:
    headers = {"Content-Type": "application/json"}
    assert_error(
        client.post(PREDICT, content=b'{"pixels": [', headers=headers), 422, "invalid_json"
    )
    assert_error(client.post(PREDICT, json={"image": []}), 422, "invalid_json")


NESTED = "[" * 3_000 + "]" * 3_000
HUGE_INT = "1" + "0" * 400


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (PREDICT, "[" * 100_000 + "]" * 100_000, "invalid_json"),
        (PREDICT, '{"pixels": ' + NESTED + "}", "invalid_json"),
        (PREDICT, '{"pixels": [[' + HUGE_INT + "]]}", "invalid_image"),
        (PREDICT, '{"pixels": 1' + "0" * 5_000 + "}", "invalid_image"),
        (BATCH, '{"images": ' + NESTED + "}", "invalid_json"),
        (BATCH, '{"images": [[[-' + HUGE_INT + "]]]}", "invalid_image"),
        (SAMPLES, '{"user_id": "u", "label": ' + NESTED + "}", "invalid_json"),
        (SAMPLES, '{"user_id": "u", "label": 1, "pixels": [[' + HUGE_INT + "]]}", "invalid_image"),
    ],
    ids=[
        "deep-body",
        "deep-pixels",
        "400-digit-pixel",
        "5000-digit-pixels",
        "deep-batch",
        "400-digit-batch-pixel",
        "deep-label",
        "400-digit-sample-pixel",
    ],
)
def test_malformed_json_is_a_422_with_a_message(
    client: TestClient, path: str, body: str, code: str
) -> None:
    headers = {"Content-Type": "application/json", **KEY}
    assert_error(client.post(path, content=body.encode(), headers=headers), 422, code)


def test_big_json_with_nan_is_refused_by_the_fast_parser(client: TestClient) -> None:
    # Python's parser (which reads NaN) needs ~1 s of event loop for these 6 MB; orjson ~0.1 s.
    image = "[" + ",".join(["[" + ",".join(["0.5"] * 28) + "]"] * 28) + "]"
    body = '{"images": [' + ",".join([image] * 2_000) + '], "note": NaN}'
    response = client.post(BATCH, content=body, headers={"Content-Type": "application/json"})
    assert "NaN and Infinity are not JSON" in assert_error(response, 422, "invalid_json")["message"]


def test_malformed_batch_names_the_bad_image(client: TestClient) -> None:
    good = [[0] * 28] * 14 + [[200] * 28] + [[0] * 28] * 13
    bad = [[0] * 28] * 28
    bad[3] = [float("nan")] * 28
    response = post_json(client, BATCH, {"images": [good, good, bad]})
    body = assert_error(response, 422, "invalid_image")
    assert body["message"].startswith("Image 2:")
    ragged = assert_error(
        client.post(BATCH, json={"images": [good, good[:20]]}), 422, "invalid_image"
    )
    assert ragged["message"].startswith("Image 1:")


def test_plain_integer_batch_out_of_range_or_blank_names_the_bad_image(
    client: TestClient,
) -> None:
    good = [[0] * 28] * 14 + [[200] * 28] + [[0] * 28] * 13
    too_bright = [row[:] for row in good]
    too_bright[5][7] = 256
    body = assert_error(
        client.post(BATCH, json={"images": [good, too_bright]}), 422, "invalid_image"
    )
    assert body["message"].startswith("Image 1:") and "range" in body["message"]
    blank = [[0] * 28] * 28
    body = assert_error(client.post(BATCH, json={"images": [good, good, blank]}), 422, "no_ink")
    assert body["message"].startswith("Image 2 has no ink")


def test_oversize_batch_is_rejected(client: TestClient, trained_registry: TrainedRegistry) -> None:
    limit = trained_registry.settings().max_batch_images
    images = [[[0] * 28] * 28] * (limit + 1)
    body = assert_error(client.post(BATCH, json={"images": images}), 413, "batch_too_large")
    assert str(limit) in body["message"]
    assert_error(client.post(BATCH, json={"images": []}), 422, "empty_batch")


def test_body_over_the_limit_is_413_by_length_and_when_streamed(client: TestClient) -> None:
    limit = 10 * 1024 * 1024
    assert_error(post_png(client, b"\x00" * (limit + 1)), 413, "payload_too_large")

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(11):
            yield b"\x00" * (1024 * 1024)

    streamed = client.post(PREDICT, content=chunks(), headers={"Content-Type": "image/png"})
    assert_error(streamed, 413, "payload_too_large")


def test_multipart_without_image_field(client: TestClient) -> None:
    response = client.post(PREDICT, files={"picture": ("a.png", b"123", "image/png")})
    assert_error(response, 422, "missing_image")
    broken = client.post(
        PREDICT, content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"}
    )
    assert_error(broken, 422, "invalid_multipart")


def sample_form(trained_registry: TrainedRegistry, **fields: str) -> dict[str, object]:
    return {
        "files": {"image": ("d.png", encode(trained_registry.test_images[5]), "image/png")},
        "data": fields,
        "headers": KEY,
    }


@pytest.mark.parametrize("label", ["12", "x", "-1", "7.5", "٣"])
def test_sample_label_must_be_a_digit(
    client: TestClient, trained_registry: TrainedRegistry, label: str
) -> None:
    response = client.post(SAMPLES, **sample_form(trained_registry, label=label, user_id="u1"))
    body = assert_error(response, 422, "invalid_label")
    assert "0, 1, ..., 9" in body["message"]


def test_sample_missing_label_or_user_id(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    no_user = client.post(SAMPLES, **sample_form(trained_registry, label="3"))
    assert_error(no_user, 422, "missing_user_id")
    blank_user = client.post(SAMPLES, **sample_form(trained_registry, label="3", user_id="  "))
    assert_error(blank_user, 422, "missing_user_id")
    no_label = client.post(SAMPLES, **sample_form(trained_registry, user_id="u1"))
    assert_error(no_label, 422, "missing_label")
    json_label = client.post(
        SAMPLES, json={"user_id": "u1", "label": 12, "pixels": [[0] * 28] * 28}, headers=KEY
    )
    assert_error(json_label, 422, "invalid_label")


def test_sample_bad_image_is_rejected_and_counted(client: TestClient) -> None:
    response = client.post(
        SAMPLES,
        files={"image": ("d.png", b"GIF89a-not-really", "image/png")},
        data={"label": "3", "user_id": "u1"},
        headers=KEY,
    )
    assert_error(response, 422, "invalid_image")
    assert (
        'inkwell_service_samples_rejected_total{reason="invalid_image"'
        in client.get("/metrics").text
    )


def test_uploads_need_a_valid_api_key(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    form = sample_form(trained_registry, label="3", user_id="u1")
    form.pop("headers")
    missing = client.post(SAMPLES, **form)
    assert_error(missing, 401, "api_key_required")
    assert missing.headers["WWW-Authenticate"] == "ApiKey"
    wrong = client.post(SAMPLES, **form, headers={"X-API-Key": "guess"})
    assert_error(wrong, 401, "invalid_api_key")
    assert_error(client.get(f"{SAMPLES}/stats"), 401, "api_key_required")


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get(PREDICT), 405, "method_not_allowed")


def test_keyed_predictions_need_the_key(trained_registry: TrainedRegistry) -> None:
    from service.main import create_app

    app = create_app(trained_registry.settings(predict_requires_key=True, poll_interval_s=60))
    pixels = {"pixels": trained_registry.test_images[0].tolist()}
    with TestClient(app) as keyed:
        assert_error(keyed.post(PREDICT, json=pixels), 401, "api_key_required")
        assert_error(
            keyed.post(PREDICT, json=pixels, headers={"X-API-Key": "nope"}), 401, "invalid_api_key"
        )
        assert keyed.post(PREDICT, json=pixels, headers=KEY).status_code == 200
        v2 = keyed.post("/v2/models/inkwell-digits/infer", json={})
        assert_error(v2, 401, "api_key_required")
