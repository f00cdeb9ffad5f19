"""Digit predictions: one image, or a batch, in any of the accepted body formats."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import inputs, responses
from service.deps import PredictContextDep
from service.schemas import BatchPredictionPublic, PredictionPublic

router = APIRouter(prefix="/v1/digits", tags=["digits"])

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"pixels": {"type": "array", "items": {"type": "array"}}},
                    "required": ["pixels"],
                }
            },
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "array"}}},
                }
            },
        },
    }
}


@router.post("/predict", response_model=PredictionPublic, openapi_extra=IMAGE_BODY)
async def predict_digit(request: Request, context: PredictContextDep) -> Response:
    """Read the digit in one image (photo, scan or 28x28 pixels)."""
    image, key = await inputs.single_image(request, context.decoding)
    prediction = await context.batcher.infer(image[None])
    return responses.single(request, context.metrics, prediction, key)


@router.post("/predict/batch", response_model=BatchPredictionPublic, openapi_extra=BATCH_BODY)
async def predict_digits(request: Request, context: PredictContextDep) -> Response:
    """Read the digits in up to INKWELL_SERVICE_MAX_BATCH_IMAGES images, in order."""
    images = await inputs.image_batch(request, context.decoding, context.settings.max_batch_images)
    prediction = await context.batcher.infer(images)
    return responses.batch(request, context.metrics, prediction)
