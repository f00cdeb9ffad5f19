"""`POST /v1/cheques/read` through the real service app and a real MLflow sqlite registry.

The registered model is a real CRNN whose output layer is set by hand to emit digit 5 on every
frame (so greedy decoding reads "5"): the plumbing is tested exactly, without training.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from inkwell.cheques.reader import ChequeReader
from inkwell.contract import IMAGE_KEY_HEADER, MODEL_VERSION_HEADER, PREDICTION_HEADER
from inkwell.errors import ModelNotFoundError
from inkwell.registry import Registry
from inkwell.settings import STABLE, CoreSettings
from router.payload import peek, prediction_of, version_of
from service.main import create_app
from service.settings import ServiceSettings
from tests.cheques.helpers import TINY, always_five, field_image
from tests.harness import png
from tests.service.conftest import png_of_zeros

READ = "/v1/cheques/read"


def settings_for(home: Path, mnist_dir: Path, seed_shipped: bool = False) -> ServiceSettings:
    return ServiceSettings(
        home=home,
        data_dir=mnist_dir,
        poll_interval_s=60,
        torch_threads=1,
        seed_shipped=seed_shipped,
    )


@pytest.fixture(scope="module")
def registered_home(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("cheque-service")
    registry = Registry(CoreSettings(home=home, data_dir=mnist_dir))
    with registry.start_run("cheque-api-test") as run, tempfile.TemporaryDirectory() as tmp:
        files = always_five().save(Path(tmp))
        meta = ChequeReader.build_meta(
            TINY, calibration={"temperature": 1.0, "review_threshold": 0.5}
        )
        registry.register_files("inkwell-cheques", run.info.run_id, files, meta, aliases=(STABLE,))
    return home


@pytest.fixture(scope="module")
def client(registered_home: Path, mnist_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(registered_home, mnist_dir))) as test_client:
        yield test_client


def assert_error(response, status: int, code: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    return body


def test_reads_an_amount_field(client: TestClient) -> None:
    response = client.post(READ, content=png(field_image()), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["amount"] == "5"
    assert body["model_name"] == "inkwell-cheques"
    assert body["model_version"] == "1"
    assert body["variant"] == "stable"
    assert body["layout"] == "field"
    assert body["needs_review"] is False  # P("5") ≈ 1 > threshold 0.5
    assert body["confidence"] > 0.9
    (char,) = body["characters"]
    assert char["digit"] == "5"
    assert 0 <= char["x"][0] < char["x"][1] <= 200


def test_reads_a_multipart_upload(client: TestClient) -> None:
    files = {"image": ("amount.png", png(field_image()), "image/png")}
    response = client.post(READ, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["amount"] == "5"


def test_read_answer_headers_name_version_amount_and_image_key(client: TestClient) -> None:
    """The router learns the reading from these headers without parsing the JSON body."""
    image = png(field_image())
    response = client.post(READ, content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers[MODEL_VERSION_HEADER] == "1" == version_of(body)
    assert response.headers[PREDICTION_HEADER] == "5" == prediction_of(body)
    assert response.headers[IMAGE_KEY_HEADER] == peek("image/png", image).image_key


def test_non_image_bytes_are_a_422(client: TestClient) -> None:
    response = client.post(READ, content=b"not an image", headers={"Content-Type": "image/png"})
    assert_error(response, 422, "invalid_image")


def test_blank_field_is_a_422_never_an_amount(client: TestClient) -> None:
    blank = png(np.full((50, 200), 240, np.uint8))
    body = assert_error(
        client.post(READ, content=blank, headers={"Content-Type": "image/png"}), 422, "no_ink"
    )
    assert "No ink" in body["message"]


def test_blank_cheque_is_a_422(client: TestClient) -> None:
    blank = png(np.full((450, 1050), 240, np.uint8))
    response = client.post(READ, content=blank, headers={"Content-Type": "image/png"})
    assert_error(response, 422, "no_ink")


def test_cheque_without_an_amount_box_says_to_crop_it(client: TestClient) -> None:
    cheque = np.full((450, 1050), 240, np.uint8)
    cheque[200:230, 100:400] = 30  # ink, but no printed box or underline
    response = client.post(READ, content=png(cheque), headers={"Content-Type": "image/png"})
    body = assert_error(response, 422, "amount_field_not_found")
    assert "Crop the amount box" in body["message"]


@pytest.mark.parametrize("content_type", ["image/png", "multipart/form-data"])
def test_small_png_declaring_4000x4000_rgba_is_a_413(client: TestClient, content_type: str) -> None:
    bomb = png_of_zeros(4_000, 4_000, bit_depth=8, color_type=6)  # ~62 kB, 64 MB raw
    if content_type == "image/png":
        response = client.post(READ, content=bomb, headers={"Content-Type": content_type})
    else:
        response = client.post(READ, files={"image": ("cheque.png", bomb, "image/png")})
    assert "4000x4000" in assert_error(response, 413, "image_too_large")["message"]


def test_json_is_not_an_image(client: TestClient) -> None:
    response = client.post(READ, json={"pixels": [[0] * 28] * 28})
    assert_error(response, 415, "unsupported_media_type")


def test_empty_body_is_a_422(client: TestClient) -> None:
    response = client.post(READ, content=b"", headers={"Content-Type": "image/png"})
    assert_error(response, 422, "empty_body")


def test_unknown_layout_is_a_422(client: TestClient) -> None:
    response = client.post(
        READ + "?layout=sideways", content=png(field_image()), headers={"Content-Type": "image/png"}
    )
    assert_error(response, 422, "invalid_request")


def test_reads_are_counted_in_metrics(client: TestClient) -> None:
    client.post(READ, content=png(field_image()), headers={"Content-Type": "image/png"})
    text = client.get("/metrics").text
    assert 'inkwell_service_cheque_reads_total{model_version="1",needs_review="false"' in text
    assert 'inkwell_service_cheque_model_info{model_name="inkwell-cheques"' in text


def test_without_a_cheque_model_the_route_is_503(inkwell_home: Path, mnist_dir: Path) -> None:
    # a fresh home: no registry, so no cheque model
    with TestClient(create_app(settings_for(inkwell_home, mnist_dir))) as empty:
        response = empty.post(
            READ, content=png(field_image()), headers={"Content-Type": "image/png"}
        )
        body = assert_error(response, 503, "model_not_ready")
        assert "inkwell cheques train" in body["message"]


def test_a_fresh_home_reads_amounts_with_the_shipped_reader(
    inkwell_home: Path, mnist_dir: Path
) -> None:
    from inkwell.cheques.pools import load_pool
    from inkwell.cheques.synth import generate_fields

    # the shipped reader's accuracy is on its model card; here: it is seeded and it answers
    with TestClient(create_app(settings_for(inkwell_home, mnist_dir, seed_shipped=True))) as app:
        answers = []
        for sample in generate_fields(load_pool("test", mnist_dir), 8, seed=7):
            response = app.post(
                READ, content=png(sample.image), headers={"Content-Type": "image/png"}
            )
            answers.append(f"{response.status_code} {response.text[:100]}")
            if response.status_code == 200:
                break
        assert response.status_code == 200, "\n".join(answers)
        assert response.json()["model_version"] == "1"
    info = Registry(CoreSettings(home=inkwell_home)).get_version("inkwell-cheques", STABLE)
    assert info.tags["source"] == "shipped"


def test_readiness_reports_the_served_cheque_version(inkwell_home: Path, mnist_dir: Path) -> None:
    with TestClient(create_app(settings_for(inkwell_home, mnist_dir, seed_shipped=True))) as app:
        ready = app.get("/readyz").json()
    assert ready["variant"] == "stable"
    assert ready["cheque_model_version"] == "1"


def test_a_pinned_cheque_version_is_served_instead_of_the_alias(
    inkwell_home: Path, mnist_dir: Path
) -> None:
    with TestClient(create_app(settings_for(inkwell_home, mnist_dir, seed_shipped=True))):
        pass  # seeds the shipped reader as v1 (stable)
    registry = Registry(CoreSettings(home=inkwell_home, data_dir=mnist_dir))
    with registry.start_run("cheque-pin-test") as run, tempfile.TemporaryDirectory() as tmp:
        meta = ChequeReader.build_meta(
            TINY, calibration={"temperature": 1.0, "review_threshold": 0.5}
        )
        files = always_five().save(Path(tmp))
        v2 = registry.register_files("inkwell-cheques", run.info.run_id, files, meta)
    registry.set_alias("inkwell-cheques", STABLE, v2.version)
    pinned = settings_for(inkwell_home, mnist_dir).model_copy(update={"cheque_model_version": "1"})
    with TestClient(create_app(pinned)) as app:
        assert app.get("/readyz").json()["cheque_model_version"] == "1"
    with TestClient(create_app(settings_for(inkwell_home, mnist_dir))) as app:
        assert app.get("/readyz").json()["cheque_model_version"] == v2.version


def test_service_refuses_to_start_with_a_pinned_cheque_version_the_registry_lacks(
    registered_home: Path, mnist_dir: Path
) -> None:
    pinned = settings_for(registered_home, mnist_dir).model_copy(
        update={"cheque_model_version": "999"}
    )
    with pytest.raises(ModelNotFoundError) as failed, TestClient(create_app(pinned)):
        pass
    message = failed.value.message
    assert "INKWELL_SERVICE_CHEQUE_MODEL_VERSION=999" in message and "no version 999" in message
    assert "inkwell-cheques" in message
