"""Turn model output into responses, recording the prediction metrics on the way."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from inkwell.contract import answer_headers
from service.metrics import ServiceMetrics
from service.middleware import MODEL_VERSION_KEY
from service.model import Prediction

JSON_TYPE = "application/json"


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise with pydantic-core directly (the hot path skips FastAPI's re-validation)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type=JSON_TYPE)


def record(request: Request, metrics: ServiceMetrics, prediction: Prediction) -> list[int]:
    """Count predicted digits and confidences; tag the request with the answering version."""
    probabilities = prediction.probabilities
    digits = probabilities.argmax(axis=1)
    confidences = probabilities[np.arange(len(digits)), digits]
    version = prediction.served.version
    request.scope.setdefault("state", {})[MODEL_VERSION_KEY] = version
    metrics.observe_predictions(digits.tolist(), confidences.tolist(), version)
    return [int(d) for d in digits]


def orjson_response(content: dict[str, Any], status_code: int = 200) -> Response:
    """Serialise plain data with orjson: the predict routes' bodies, no model objects built."""
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON_TYPE)


def with_answer_headers(
    response: Response, version: str, prediction: str, key: str | None = None
) -> Response:
    """`response` carrying the answer headers, so the router need not parse its body."""
    response.raw_headers.extend(answer_headers(version, prediction, key))
    return response


def _digit(probabilities: list[float], digit: int) -> dict[str, Any]:
    """One image's answer, shaped like `DigitPrediction` (the OpenAPI response model)."""
    return {"digit": digit, "confidence": probabilities[digit], "probabilities": probabilities}


def single(
    request: Request, metrics: ServiceMetrics, prediction: Prediction, key: str | None = None
) -> Response:
    """The body of `PredictionPublic` for one image; `key` is the image's content key."""
    digit = record(request, metrics, prediction)[0]
    served = prediction.served
    response = orjson_response(
        {
            **_digit(prediction.probabilities[0].tolist(), digit),
            "model_name": served.name,
            "model_version": served.version,
            "variant": served.variant,
        }
    )
    return with_answer_headers(response, served.version, str(digit), key)


def batch(request: Request, metrics: ServiceMetrics, prediction: Prediction) -> Response:
    """The body of `BatchPredictionPublic`: one answer per image, in request order."""
    digits = record(request, metrics, prediction)
    served = prediction.served
    rows = prediction.probabilities.tolist()  # Python floats: the float32 values, exactly
    response = orjson_response(
        {
            "model_name": served.name,
            "model_version": served.version,
            "variant": served.variant,
            "predictions": [_digit(p, d) for p, d in zip(rows, digits, strict=True)],
        }
    )
    return with_answer_headers(response, served.version, ",".join(map(str, digits)))
