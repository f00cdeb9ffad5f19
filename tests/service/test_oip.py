"""Open Inference Protocol v2 routes: health, metadata and FP32 inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import TrainedRegistry, assert_error

MODEL = "/v2/models/inkwell-digits"


def infer_body(images: np.ndarray, shape: list[int] | None = None) -> dict[str, object]:
    data = (images.astype(np.float32) / 255.0).reshape(-1).tolist()
    return {
        "id": "req-1",
        "inputs": [
            {
                "name": "input",
                "shape": shape or [len(images), 1, 28, 28],
                "datatype": "FP32",
                "data": data,
            }
        ],
    }


def test_health_and_model_metadata(client: TestClient, trained_registry: TrainedRegistry) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get(MODEL).json()
    assert meta["name"] == "inkwell-digits"
    assert meta["versions"] == [trained_registry.v1.version]
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "digit"}
    assert client.get(f"{MODEL}/ready").json()["ready"] is True
    version = trained_registry.v1.version
    assert client.get(f"{MODEL}/versions/{version}/ready").status_code == 200
    assert "binary_data" in client.get("/v2").json()["extensions"]


def test_infer_fp32_returns_probabilities_and_digits(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    images, labels = trained_registry.test_images[:16], trained_registry.test_labels[:16]
    response = client.post(f"{MODEL}/infer", json=infer_body(images))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-1" and body["model_version"] == trained_registry.v1.version
    assert body["parameters"]["variant"] == "stable"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [16, 10]
    assert outputs["digit"]["datatype"] == "INT64"
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(16, 10)
    assert outputs["digit"]["data"] == probabilities.argmax(1).tolist()
    assert np.mean(np.array(outputs["digit"]["data"]) == labels) >= 0.75
    flat = client.post(f"{MODEL}/infer", json=infer_body(images, [16, 784])).json()
    np.testing.assert_allclose(
        flat["outputs"][0]["data"], outputs["probabilities"]["data"], atol=1e-5
    )


def test_infer_binary_tensor_extension(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:4]
    raw = (images.astype("<f4") / 255.0).tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [4, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "digit"}],
    }
    head = json.dumps(header).encode()
    response = client.post(
        f"{MODEL}/infer",
        content=head + raw,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
    )
    assert response.status_code == 200, response.text
    expected = client.post(f"{MODEL}/infer", json=infer_body(images)).json()
    digit = next(o for o in expected["outputs"] if o["name"] == "digit")
    assert response.json()["outputs"] == [digit]


def test_infer_rejects_bad_tensors_with_code_message_and_error(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    images = trained_registry.test_images[:2]
    wrong_type = infer_body(images)
    wrong_type["inputs"][0]["datatype"] = "INT8"  # type: ignore[index]
    body = assert_error(client.post(f"{MODEL}/infer", json=wrong_type), 422, "unsupported_datatype")
    assert body["error"] == body["message"]
    assert_error(
        client.post(f"{MODEL}/infer", json=infer_body(images, [2, 27, 28])), 422, "invalid_shape"
    )
    assert_error(
        client.post(f"{MODEL}/infer", json=infer_body(images, [3, 1, 28, 28])), 422, "invalid_shape"
    )
    out_of_range = infer_body(images)
    out_of_range["inputs"][0]["data"][5] = 3.0  # type: ignore[index]
    assert_error(client.post(f"{MODEL}/infer", json=out_of_range), 422, "invalid_data")
    assert_error(client.post(f"{MODEL}/infer", json={"inputs": "x"}), 422, "invalid_request")
    renamed = infer_body(images)
    renamed["inputs"][0]["name"] = "pixels"  # type: ignore[index]
    assert_error(client.post(f"{MODEL}/infer", json=renamed), 422, "invalid_input_name")
    too_many = infer_body(np.zeros((257, 28, 28), np.uint8))
    assert_error(client.post(f"{MODEL}/infer", json=too_many), 413, "batch_too_large")


def test_unknown_model_or_version_is_404(client: TestClient) -> None:
    assert_error(client.get("/v2/models/resnet"), 404, "model_not_found")
    assert_error(client.get(f"{MODEL}/versions/999"), 404, "model_not_found")
    assert_error(client.post("/v2/models/resnet/infer", json={}), 404, "model_not_found")


HUGE_INT = "1" + "0" * 400
NESTED = "[" * 3_000 + "]" * 3_000
PIXELS_JSON = "[" + ",".join(["0.5"] * 784) + "]"


def tensor_json(shape: str = "[1, 784]", data: str | None = None, parameters: str = "") -> str:
    """An infer request's JSON text with raw snippets, for what json.dumps cannot write."""
    fields = f'"name": "input", "shape": {shape}, "datatype": "FP32"'
    if data is not None:
        fields += f', "data": {data}'
    if parameters:
        fields += f', "parameters": {parameters}'
    return f'{{"inputs": [{{{fields}}}]}}'


def post_raw(client: TestClient, head: str, binary: bytes = b""):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(head.encode()))
    return client.post(f"{MODEL}/infer", content=head.encode() + binary, headers=headers)


def test_binary_data_size_must_be_an_integer_not_a_float(client: TestClient) -> None:
    head = tensor_json(parameters='{"binary_data_size": 3136.0}')
    body = assert_error(post_raw(client, head, b"\0" * 3136), 422, "invalid_request")
    assert "binary_data_size" in body["message"] and "integer" in body["message"]


def test_shape_must_be_integers_not_floats(client: TestClient) -> None:
    head = tensor_json(shape="[1, 784.0]", data=PIXELS_JSON)
    body = assert_error(post_raw(client, head), 422, "invalid_request")
    assert "shape" in body["message"]


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (NESTED, "invalid_json"),
        ('{"inputs": ' + NESTED + "}", "invalid_json"),
        (tensor_json(data=NESTED), "invalid_json"),
        (tensor_json(data=f"[{HUGE_INT}{',0' * 783}]"), "invalid_data"),
        (tensor_json(data=f"[1{'0' * 5_000}{',0' * 783}]"), "invalid_data"),
    ],
    ids=["deep-body", "deep-inputs", "deep-data", "400-digit-value", "5000-digit-value"],
)
def test_malformed_json_in_infer_requests_is_a_422(
    client: TestClient, head: str, code: str
) -> None:
    assert_error(post_raw(client, head), 422, code)


def test_openapi_declares_the_infer_body(client: TestClient) -> None:
    """Clients and fuzzers see the real v2 request: JSON tensors or the binary extension."""
    paths = client.get("/openapi.json").json()["paths"]
    for path in (f"{MODEL}/infer", f"{MODEL}/versions/{{version}}/infer"):
        template = path.replace("inkwell-digits", "{name}")
        content = paths[template]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/octet-stream"}
        schema = content["application/json"]["schema"]
        assert schema["required"] == ["inputs"]
        assert schema["properties"]["inputs"]["items"]["required"] == ["name", "shape", "datatype"]
