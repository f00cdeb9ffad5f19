"""The served model follows its alias in a real MLflow sqlite registry and never drops service."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from inkwell.errors import ModelNotFoundError, ModelNotReadyError
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE
from service.main import create_app
from service.model import DigitModel
from tests.outage import Mode, failing_server
from tests.service.conftest import TrainedRegistry


def test_load_serves_the_alias_version(trained_registry: TrainedRegistry) -> None:
    model = DigitModel(trained_registry.settings(), CANARY)
    assert not model.ready and model.version is None
    outcome = model.load()
    assert outcome.swapped and model.ready
    assert model.version == trained_registry.v2.version and model.name == "inkwell-digits"
    probabilities = model.predict(trained_registry.test_images[:4] / 255.0).probabilities
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_refresh_swaps_only_when_the_alias_moves(
    trained_registry: TrainedRegistry, restore_aliases: None
) -> None:
    model = DigitModel(trained_registry.settings(), STABLE)
    model.load()
    before = model.current
    assert not model.refresh().swapped and model.current is before
    trained_registry.registry().set_alias("inkwell-digits", STABLE, trained_registry.v2.version)
    outcome = model.refresh()
    assert outcome.swapped and outcome.version == trained_registry.v2.version
    assert model.current is not before and model.version == trained_registry.v2.version


def test_deleted_alias_keeps_serving_the_last_good_model(
    trained_registry: TrainedRegistry, restore_aliases: None
) -> None:
    model = DigitModel(trained_registry.settings(), CANARY)
    model.load()
    trained_registry.registry().delete_alias("inkwell-digits", CANARY)
    outcome = model.refresh()
    assert outcome.error is not None and outcome.error.code == "model_not_found"
    assert model.ready and model.version == trained_registry.v2.version


def test_unreachable_registry_before_first_load_is_not_ready(
    trained_registry: TrainedRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; restore it after this test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_registry.registry().tracking_uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = trained_registry.settings(tracking_uri="http://127.0.0.1:9/")
    model = DigitModel(settings, STABLE)
    outcome = model.refresh()
    assert outcome.error is not None and outcome.error.code == "registry_unavailable"
    assert not model.ready
    with pytest.raises(ModelNotReadyError):
        model.predict(np.zeros((1, 28, 28), np.float32))


def test_optimised_forward_agrees_with_the_eager_model(trained_registry: TrainedRegistry) -> None:
    import torch

    optimised = DigitModel(trained_registry.settings(), STABLE)
    eager = DigitModel(trained_registry.settings(), STABLE, optimize=False)
    optimised.load()
    eager.load()
    assert optimised.current is not None and optimised.current.optimized
    assert eager.current is not None and not eager.current.optimized
    images = trained_registry.test_images[:37].astype(np.float32) / 255.0
    fast = optimised.predict(images).probabilities
    with torch.inference_mode():
        reference = torch.softmax(eager.current.model(torch.from_numpy(images)[:, None]), 1)
    np.testing.assert_allclose(fast, reference.numpy(), atol=1e-4)
    np.testing.assert_allclose(eager.predict(images).probabilities, reference.numpy(), atol=1e-6)


def test_service_without_a_reachable_registry_is_alive_but_not_ready(
    trained_registry: TrainedRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app
    from tests.service.conftest import assert_error

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_registry.registry().tracking_uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = trained_registry.settings(tracking_uri="http://127.0.0.1:9/", poll_interval_s=60)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert_error(client.get("/readyz"), 503, "model_not_ready")
        pixels = {"pixels": trained_registry.test_images[0].tolist()}
        assert_error(client.post("/v1/digits/predict", json=pixels), 503, "model_not_ready")
        assert client.get("/v2/health/live").status_code == 200
        assert_error(client.get("/v2/health/ready"), 503, "model_not_ready")
        metrics = client.get("/metrics").text
        assert 'inkwell_service_model_load_failures_total{reason="registry_unavailable"' in metrics
        assert 'inkwell_service_ready{variant="stable"} 0.0' in metrics


def _poison_served_weights(model: DigitModel) -> None:
    """Make the loaded model answer NaN, as a broken checkpoint would after loading."""
    import torch

    assert model.current is not None
    with torch.no_grad():
        for parameter in model.current.model.parameters():
            parameter.fill_(float("nan"))


def test_nan_model_output_is_an_error_not_a_prediction(trained_registry: TrainedRegistry) -> None:
    from inkwell.errors import ModelOutputError

    model = DigitModel(trained_registry.settings(), STABLE, optimize=False)
    model.load()
    _poison_served_weights(model)
    with pytest.raises(ModelOutputError, match="NaN or infinite") as raised:
        model.predict(trained_registry.test_images[:3] / 255.0)
    assert raised.value.status_code == 500


def test_nan_model_output_answers_500_with_the_error_code(
    trained_registry: TrainedRegistry,
) -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app
    from tests.service.conftest import assert_error, encode

    app = create_app(trained_registry.settings(poll_interval_s=60, optimize_model=False))
    with TestClient(app) as client:
        image = encode(trained_registry.test_images[0])
        ok = client.post("/v1/digits/predict", content=image, headers={"content-type": "image/png"})
        assert ok.status_code == 200, ok.text
        _poison_served_weights(app.state.context.model)
        broken = client.post(
            "/v1/digits/predict", content=image, headers={"content-type": "image/png"}
        )
        assert_error(broken, 500, "model_output_invalid")


@pytest.mark.parametrize("mode", ["error", "hang"])
def test_a_tracking_server_failing_after_the_first_load_keeps_the_last_good_model(
    trained_registry: TrainedRegistry, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_registry.registry().tracking_uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    model = DigitModel(trained_registry.settings(), STABLE)
    model.load()
    with failing_server(mode) as server:
        # the same process, with MLflow now answering 500 or hanging
        model._registry = Registry(trained_registry.settings(tracking_uri=server.url))
        started = time.monotonic()
        outcome = model.refresh()
        assert time.monotonic() - started < 15
    assert outcome.error is not None and outcome.error.code == "registry_unavailable"
    assert model.ready and model.version == trained_registry.v1.version
    assert model.predict(trained_registry.test_images[:2] / 255.0).probabilities.shape == (2, 10)


def test_pinned_version_is_served_whatever_the_alias_says(
    trained_registry: TrainedRegistry, restore_aliases: None
) -> None:
    model = DigitModel(
        trained_registry.settings(), STABLE, pinned_version=trained_registry.v2.version
    )
    assert model.load().swapped and model.version == trained_registry.v2.version
    trained_registry.registry().set_alias("inkwell-digits", STABLE, trained_registry.v1.version)
    outcome = model.refresh()
    assert not outcome.swapped and model.version == trained_registry.v2.version


def test_service_refuses_to_start_with_a_pinned_version_the_registry_lacks(
    trained_registry: TrainedRegistry,
) -> None:
    app = create_app(trained_registry.settings(model_version="999"))
    with pytest.raises(ModelNotFoundError) as failed, TestClient(app):
        pass
    message = failed.value.message
    assert "INKWELL_SERVICE_MODEL_VERSION=999" in message and "no version 999" in message


def test_service_with_a_pinned_version_reports_it_when_ready(
    trained_registry: TrainedRegistry,
) -> None:
    pinned = trained_registry.v2.version
    app = create_app(trained_registry.settings(model_version=pinned, poll_interval_s=60))
    with TestClient(app) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["model_version"] == pinned
