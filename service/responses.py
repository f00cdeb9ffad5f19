"""Turn model output into responses, recording the prediction metrics on the way."""

from __future__ import annotations

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from service.metrics import ServiceMetrics
from service.middleware import MODEL_VERSION_KEY
from service.model import Prediction
from service.schemas import BatchPredictionPublic, DigitPrediction, PredictionPublic


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise with pydantic-core directly (the hot path skips FastAPI's re-validation)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def record(request: Request, metrics: ServiceMetrics, prediction: Prediction) -> list[int]:
    """Count predicted digits and confidences; tag the request with the answering version."""
    probabilities = prediction.probabilities
    digits = probabilities.argmax(axis=1)
    confidences = probabilities[np.arange(len(digits)), digits]
    version = prediction.served.version
    request.scope.setdefault("state", {})[MODEL_VERSION_KEY] = version
    metrics.observe_predictions(digits.tolist(), confidences.tolist(), version)
    return [int(d) for d in digits]


def _digit(probabilities: np.ndarray, digit: int) -> DigitPrediction:
    values = probabilities.tolist()
    return DigitPrediction(digit=digit, confidence=values[digit], probabilities=values)


def single(request: Request, metrics: ServiceMetrics, prediction: Prediction) -> Response:
    digit = record(request, metrics, prediction)[0]
    served = prediction.served
    one = _digit(prediction.probabilities[0], digit)
    return json_response(
        PredictionPublic(
            digit=digit,
            confidence=one.confidence,
            probabilities=one.probabilities,
            model_name=served.name,
            model_version=served.version,
            variant=served.variant,
        )
    )


def batch(request: Request, metrics: ServiceMetrics, prediction: Prediction) -> Response:
    digits = record(request, metrics, prediction)
    served = prediction.served
    return json_response(
        BatchPredictionPublic(
            predictions=[
                _digit(p, d) for p, d in zip(prediction.probabilities, digits, strict=True)
            ],
            model_name=served.name,
            model_version=served.version,
            variant=served.variant,
        )
    )
