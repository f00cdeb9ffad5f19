"""Security headers on the service's answers: API, errors and docs (issue 18)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.service.conftest import TrainedRegistry, encode


def test_api_answers_and_errors_carry_the_security_headers_once(
    client: TestClient, trained_registry: TrainedRegistry
) -> None:
    image = encode(trained_registry.test_images[0])
    answers = [
        client.post("/v1/digits/predict", content=image, headers={"Content-Type": "image/png"}),
        client.get("/v1/samples/stats"),  # 401 from the error map
        client.get("/no-such-route"),
    ]
    for response in answers:
        headers = response.headers
        assert headers.get_list("x-frame-options") == ["DENY"], response.url
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        policy = headers.get_list("content-security-policy")
        assert len(policy) == 1 and "frame-ancestors 'none'" in policy[0]


def test_the_interactive_docs_keep_working_without_the_page_policy(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in docs.headers  # Swagger UI loads from a CDN
