"""Cheque courtesy amounts: one image (an amount box or a whole cheque) in, the amount out."""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from inkwell.cheques.reader import ChequeReading
from inkwell.contract import answer_headers, image_key
from inkwell.errors import StoreUnavailableError
from service import inputs
from service.context import ServiceContext
from service.deps import (
    ChequeModelDep,
    ContextDep,
    DecodingDep,
    MetricsDep,
    PredictionAccess,
    SettingsDep,
)
from service.schemas import ChequeCharacterPublic, ChequeReadingPublic

log = logging.getLogger("inkwell.service.cheques")

router = APIRouter(prefix="/v1/cheques", tags=["cheques"], dependencies=[PredictionAccess])

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
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "The image is too large."},
    415: {"description": "Not an image content type."},
    422: {"description": "Not an image, no ink, no digits, or no amount box found (code says)."},
    503: {"description": "No cheque model is registered yet."},
}


@router.post(
    "/read", response_model=ChequeReadingPublic, openapi_extra=IMAGE_BODY, responses=ERRORS
)
async def read_cheque(
    request: Request,
    response: Response,
    cheques: ChequeModelDep,
    settings: SettingsDep,
    decoding: DecodingDep,
    metrics: MetricsDep,
    context: ContextDep,
    layout: Literal["auto", "field", "cheque"] = Query(
        "auto", description="auto: a whole cheque is recognised by its size."
    ),
    decoder: Literal["greedy", "beam"] = "greedy",
) -> ChequeReadingPublic:
    """Read the courtesy (numeric) amount; a blank field is a 422, never an invented amount."""
    data = await inputs.image_bytes(request)
    reading = await decoding.run(
        functools.partial(cheques.read, layout=layout, decoder=decoder, limits=decoding.limits),
        data,
    )
    version = reading.model_version or "none"
    metrics.observe_cheque(version, reading.confidence, reading.needs_review)
    reading_id = await record_reading(context, reading, data, settings.variant, cheques.alias)
    for name, value in answer_headers(version, reading.amount, image_key(data)):
        response.headers.append(name.decode(), value.decode("latin-1"))
    return ChequeReadingPublic(
        amount=reading.amount,
        confidence=reading.confidence,
        needs_review=reading.needs_review,
        review_threshold=reading.review_threshold,
        characters=[
            ChequeCharacterPublic(digit=c.digit, confidence=c.confidence, x=[c.x_start, c.x_end])
            for c in reading.characters
        ],
        layout=reading.layout,
        field_box=list(reading.field_box) if reading.field_box else None,
        locate_method=reading.locate_method,
        decoder=reading.decoder,
        model_name=reading.model_name,
        model_version=version,
        variant=settings.variant,
        reading_id=reading_id,
    )


async def record_reading(
    context: ServiceContext,
    reading: ChequeReading,
    image: bytes,
    variant: str,
    alias: str | None,
) -> str | None:
    """Keep the reading (and, when it needs review, its image) so a reviewer can correct it.

    Best effort: a store outage must not fail a read that already succeeded; the answer then
    has no reading_id, and a correction is uploaded without one.
    """
    try:
        return await context.with_store(
            lambda store: store.add_reading(
                amount=reading.amount,
                confidence=reading.confidence,
                needs_review=reading.needs_review,
                model_version=reading.model_version or "none",
                variant=variant,
                alias=alias,
                layout=reading.layout,
                image=image,
            )
        )
    except (SQLAlchemyError, StoreUnavailableError):
        log.warning("could not record a cheque reading; answering without reading_id")
        return None
