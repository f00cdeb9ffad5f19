"""Predictions on real images through every accepted body format, answered by a trained model."""

from __future__ import annotations

import asyncio
import threading

import anyio
import cv2
import numpy as np
from fastapi.testclient import TestClient

from inkwell.errors import DeadlineExceededError
from inkwell.preprocessing import ImageLimits, preprocess_bytes
from service.inputs import Decoding
from service.main import create_app
from service.schemas import BatchPredictionPublic, PredictionPublic
from tests.service.conftest import TrainedRegistry, as_photo, encode

N = 40


def accuracy(client: TestClient, registry: TrainedRegistry, send) -> float:  # type: ignore[no-untyped-def]
    correct = 0
    for image, label in zip(registry.test_images[:N], registry.test_labels[:N], strict=True):
        response = send(client, image)
        assert response.status_code == 200, response.text
        correct += response.json()["digit"] == int(label)
    return correct / N


def test_predict_png_raw_body_names_model_version_and_variant(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    image = trained_registry.test_images[0]
    response = client.post(
        "/v1/digits/predict", content=encode(image), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "inkwell-digits"
    assert body["model_version"] == trained_registry.v1.version
    assert body["variant"] == "stable"
    assert len(body["probabilities"]) == 10
    assert abs(sum(body["probabilities"]) - 1.0) < 1e-4
    assert body["digit"] == int(np.argmax(body["probabilities"]))
    assert body["confidence"] == max(body["probabilities"])


def test_predict_mnist_pngs_matches_model_accuracy(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    def send(c: TestClient, image: np.ndarray):  # type: ignore[no-untyped-def]
        return c.post(
            "/v1/digits/predict", content=encode(image), headers={"content-type": "image/png"}
        )

    assert accuracy(client, trained_registry, send) >= trained_registry.accuracy - 0.1


def test_predict_scans_dark_ink_on_light_paper_as_jpeg_multipart(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    def send(c: TestClient, image: np.ndarray):  # type: ignore[no-untyped-def]
        data = encode(as_photo(image), "JPEG")
        return c.post("/v1/digits/predict", files={"image": ("scan.jpg", data, "image/jpeg")})

    assert accuracy(client, trained_registry, send) >= trained_registry.accuracy - 0.15


def test_predict_rgb_bmp_webp_and_rgba_with_transparent_background(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    image, label = trained_registry.test_images[1], int(trained_registry.test_labels[1])
    photo = as_photo(image)
    rgba = np.zeros((*image.shape, 4), dtype=np.uint8)
    rgba[..., 3] = image  # black ink whose only trace is the alpha channel
    bodies = {
        "image/bmp": encode(photo, "BMP", "RGB"),
        "image/webp": encode(photo, "WEBP", "RGB"),
        "image/png": encode(rgba, "PNG", "RGBA"),
        "application/octet-stream": encode(photo, "PNG", "RGB"),
    }
    for content_type, data in bodies.items():
        response = client.post(
            "/v1/digits/predict", content=data, headers={"content-type": content_type}
        )
        assert response.status_code == 200, (content_type, response.text)
        assert response.json()["digit"] == label, content_type


def test_predict_json_pixels_in_0_255_and_0_1(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    image, label = trained_registry.test_images[2], int(trained_registry.test_labels[2])
    as_ints = client.post("/v1/digits/predict", json={"pixels": image.tolist()})
    as_floats = client.post("/v1/digits/predict", json={"pixels": (image / 255.0).tolist()})
    assert as_ints.status_code == as_floats.status_code == 200
    assert as_ints.json()["digit"] == as_floats.json()["digit"] == label
    np.testing.assert_allclose(
        as_ints.json()["probabilities"], as_floats.json()["probabilities"], atol=1e-5
    )


def test_batch_json_answers_in_order_like_single_requests(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:12]
    response = client.post("/v1/digits/predict/batch", json={"images": images.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["variant"] == "stable" and body["model_version"] == trained_registry.v1.version
    batch = [p["probabilities"] for p in body["predictions"]]
    for image, probabilities in zip(images[:3], batch, strict=False):
        single = client.post("/v1/digits/predict", json={"pixels": image.tolist()}).json()
        np.testing.assert_allclose(single["probabilities"], probabilities, atol=1e-5)
    digits = [p["digit"] for p in body["predictions"]]
    assert np.mean(np.array(digits) == trained_registry.test_labels[:12]) >= 0.75


def test_batch_multipart_images(client: TestClient, trained_registry: TrainedRegistry) -> None:
    files = [
        ("images", (f"{i}.png", encode(image), "image/png"))
        for i, image in enumerate(trained_registry.test_images[:5])
    ]
    response = client.post("/v1/digits/predict/batch", files=files)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 5


def test_a_loaded_versions_prediction_series_start_at_zero(
    trained_registry: TrainedRegistry,
) -> None:
    from service.main import create_app

    # before its first answer: so rate() counts the first burst of predictions too
    with TestClient(create_app(trained_registry.settings(poll_interval_s=60))) as fresh:
        text = fresh.get("/metrics").text
    assert (
        'inkwell_service_prediction_confidence_count{model_version="1",variant="stable"} 0.0'
        in text
    )
    assert (
        'inkwell_service_predictions_total{digit="7",model_version="1",variant="stable"} 0.0'
        in text
    )


def test_metrics_count_requests_predictions_and_confidence(client: TestClient) -> None:
    client.post(
        "/v1/digits/predict", json={"pixels": [[0] * 28] * 10 + [[255] * 28] + [[0] * 28] * 17}
    )
    text = client.get("/metrics").text
    assert 'inkwell_service_requests_total{method="POST",model_version="1",' in text
    assert 'route="/v1/digits/predict",status="200",variant="stable"}' in text
    assert "inkwell_service_request_duration_seconds_bucket" in text
    assert "inkwell_service_predictions_total{digit=" in text
    assert "inkwell_service_prediction_confidence_bucket" in text
    assert 'inkwell_service_model_reloads_total{model_version="1",variant="stable"} 1.0' in text


def test_health_and_readiness(client: TestClient, trained_registry: TrainedRegistry) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["model_version"] == trained_registry.v1.version
    assert ready["variant"] == "stable"


def test_decodes_in_progress_never_exceed_the_decode_threads(
    trained_registry: TrainedRegistry,
) -> None:
    photo = encode(as_photo(trained_registry.test_images[0], size=600))
    limits = ImageLimits()
    lock = threading.Lock()
    active = peak = 0

    def tracked(data: bytes) -> np.ndarray:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return preprocess_bytes(data, limits)
        finally:
            with lock:
                active -= 1

    async def decode_many() -> list[np.ndarray]:
        decoding = Decoding(limits, 16_000_000, anyio.CapacityLimiter(2))
        return await asyncio.gather(*(decoding.run(tracked, photo) for _ in range(12)))

    results = asyncio.run(decode_many())
    assert peak <= 2, peak
    assert all(np.array_equal(r, results[0]) for r in results)


def test_service_decodes_with_its_configured_number_of_threads(
    trained_registry: TrainedRegistry,
) -> None:
    with TestClient(create_app(trained_registry.settings(decode_threads=3))) as client:
        assert client.app.state.context.decoding.limiter.total_tokens == 3  # type: ignore[attr-defined]
        image = encode(as_photo(trained_registry.test_images[0]))
        response = client.post(
            "/v1/digits/predict", content=image, headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 200, response.text


def test_service_runs_opencv_on_the_decoding_threads_only(
    trained_registry: TrainedRegistry,
) -> None:
    cv2.setNumThreads(2)
    with TestClient(create_app(trained_registry.settings())):
        assert cv2.getNumThreads() == 1  # setNumThreads(0): no pool of its own


def test_waiting_past_the_deadline_for_a_decode_slot_is_a_503_not_a_late_answer(
    trained_registry: TrainedRegistry,
) -> None:
    photo = encode(as_photo(trained_registry.test_images[0]))
    limits = ImageLimits()
    shed: list[str] = []

    async def scenario() -> tuple[object, np.ndarray]:
        decoding = Decoding(
            limits, 16_000_000, anyio.CapacityLimiter(1), 0.05, retry_after_s=2, on_shed=shed.append
        )
        release = threading.Event()
        holder = asyncio.ensure_future(decoding.run(release.wait, 10))  # takes the only slot
        await asyncio.sleep(0.01)
        try:
            (late,) = await asyncio.gather(
                decoding.run(preprocess_bytes, photo, limits), return_exceptions=True
            )
        finally:
            release.set()
        await holder
        return late, await decoding.run(preprocess_bytes, photo, limits)  # the slot is free again

    late, after = asyncio.run(scenario())
    assert isinstance(late, DeadlineExceededError), late
    assert late.status_code == 503 and late.retry_after_s == 2
    assert "decoding slot" in late.message and "50 ms deadline" in late.message
    assert shed == ["deadline"]
    assert after.shape == (28, 28)


def test_predict_bodies_are_exactly_their_openapi_response_models(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    image = trained_registry.test_images[0]
    one = client.post(
        "/v1/digits/predict", content=encode(image), headers={"Content-Type": "image/png"}
    )
    many = client.post("/v1/digits/predict/batch", json={"images": [image.tolist()] * 3})
    assert one.status_code == many.status_code == 200
    assert one.headers["content-type"] == many.headers["content-type"] == "application/json"
    assert (
        one.content == PredictionPublic.model_validate_json(one.content).model_dump_json().encode()
    )
    assert (
        many.content
        == BatchPredictionPublic.model_validate_json(many.content).model_dump_json().encode()
    )
    paths = client.get("/openapi.json").json()["paths"]
    for path, model in (
        ("predict", "PredictionPublic"),
        ("predict/batch", "BatchPredictionPublic"),
    ):
        answer = paths[f"/v1/digits/{path}"]["post"]["responses"]["200"]["content"]
        assert answer["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
