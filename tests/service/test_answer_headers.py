"""The answer headers (`inkwell.contract`): what the router learns from a prediction without
parsing its body must equal what it would read from the body, and the image key must be the key
the router gives a labelled upload of the same image (else delayed labels never match)."""

from __future__ import annotations

import json

import numpy as np
from fastapi.testclient import TestClient

from inkwell.contract import IMAGE_KEY_HEADER, MODEL_VERSION_HEADER, PREDICTION_HEADER
from router.payload import peek, prediction_of, version_of
from tests.service.conftest import TrainedRegistry, encode

BOUNDARY = "inkwell-answer-headers"


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (built by hand: the test compares exact bytes)."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(
        parts
    ) + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def label_key(content_type: str, body: bytes) -> str | None:
    """The key the router gives a labelled upload (`POST /v1/samples`)."""
    return peek(content_type, body).image_key


def assert_headers_match_body(response, version: str) -> None:  # type: ignore[no-untyped-def]
    """The headers say what a router reading the body (an older service) would learn."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers[MODEL_VERSION_HEADER] == version == version_of(body)
    assert response.headers[PREDICTION_HEADER] == prediction_of(body)


def test_png_prediction_headers_name_version_digit_and_the_labelled_uploads_key(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    image = encode(trained_registry.test_images[0])
    response = client.post(
        "/v1/digits/predict", content=image, headers={"Content-Type": "image/png"}
    )
    assert_headers_match_body(response, trained_registry.v1.version)
    assert response.headers[PREDICTION_HEADER] == str(response.json()["digit"])
    upload, content_type = multipart({"label": "7", "user_id": "u"}, image)
    assert response.headers[IMAGE_KEY_HEADER] == label_key(content_type, upload)


def test_multipart_prediction_is_keyed_like_the_labelled_upload_of_that_image(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    image = encode(trained_registry.test_images[1])
    body, content_type = multipart({}, image)
    response = client.post(
        "/v1/digits/predict", content=body, headers={"Content-Type": content_type}
    )
    assert_headers_match_body(response, trained_registry.v1.version)
    assert response.headers[IMAGE_KEY_HEADER] == label_key(content_type, body)
    assert response.headers[IMAGE_KEY_HEADER] == label_key("image/png", image)


def test_json_pixels_prediction_is_keyed_like_the_labelled_json_upload(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    pixels = trained_registry.test_images[2].tolist()
    response = client.post("/v1/digits/predict", json={"pixels": pixels})
    assert_headers_match_body(response, trained_registry.v1.version)
    upload = json.dumps({"user_id": "u", "label": 3, "pixels": pixels}).encode()
    assert response.headers[IMAGE_KEY_HEADER] == label_key("application/json", upload)


def test_batch_headers_give_the_digits_in_order_and_no_single_image_key(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:5]
    response = client.post("/v1/digits/predict/batch", json={"images": images.tolist()})
    assert_headers_match_body(response, trained_registry.v1.version)
    digits = [str(p["digit"]) for p in response.json()["predictions"]]
    assert response.headers[PREDICTION_HEADER] == ",".join(digits)
    assert IMAGE_KEY_HEADER not in response.headers


def test_open_inference_protocol_headers_give_the_digits(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:3]
    data = (images.astype(np.float32) / 255.0).reshape(-1).tolist()
    tensor = {"name": "input", "shape": [3, 1, 28, 28], "datatype": "FP32", "data": data}
    response = client.post("/v2/models/inkwell-digits/infer", json={"inputs": [tensor]})
    assert_headers_match_body(response, trained_registry.v1.version)
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert response.headers[PREDICTION_HEADER] == ",".join(map(str, outputs["digit"]["data"]))


def test_errors_carry_no_answer_headers(client: TestClient) -> None:
    response = client.post(
        "/v1/digits/predict", content=b"not an image", headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 422
    for name in (MODEL_VERSION_HEADER, PREDICTION_HEADER, IMAGE_KEY_HEADER):
        assert name not in response.headers
