"""Reviewed cheque uploads (durably stored before the 201), their statistics, the review queue."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from inkwell.cheques.review import quarantine_reason
from inkwell.errors import InkwellError
from inkwell.store import ACCEPTED, ChequeReadingRecord, SampleStore
from service import inputs
from service.deps import ApiKeyRequired, ContextDep, StoreDep, UploadGrantDep
from service.keys import check_user, key_id
from service.responses import json_response
from service.schemas import (
    ChequeReviewPublic,
    ChequeReviewQueuePublic,
    ChequeSampleCreatedPublic,
    ChequeSampleStatsPublic,
)

router = APIRouter(prefix="/v1/cheques", tags=["cheques"], dependencies=[ApiKeyRequired])

FIELDS: dict[str, Any] = {
    "amount": {"type": "string", "description": "Digits; separators are dropped (22.000,-)."},
    "user_id": {"type": "string", "description": "The reviewer or branch."},
    "idempotency_key": {"type": "string"},
    "reading_id": {"type": "string", "description": "The reading this corrects, if any."},
    "layout": {"type": "string", "enum": ["auto", "field", "cheque"]},
}
SAMPLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}, **FIELDS},
                    "required": ["image", "amount", "user_id"],
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in FIELDS.items()
    ],
}
IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"BM", "image/bmp"))


def data_url(image: bytes) -> str:
    kind = next((t for magic, t in IMAGE_TYPES if image.startswith(magic)), "image/webp")
    return f"data:{kind};base64,{base64.b64encode(image).decode()}"


@router.post(
    "/samples",
    status_code=201,
    response_model=ChequeSampleCreatedPublic,
    openapi_extra=SAMPLE_BODY,
    responses={
        200: {"model": ChequeSampleCreatedPublic, "description": "Repeat of an earlier upload"},
        403: {"description": "The key may not upload as this user_id."},
        404: {"description": "reading_id names no reading."},
        413: {"description": "The image is too large."},
        415: {"description": "Not an image or multipart content type."},
        422: {"description": "Bad amount, user id, key, layout, or an image without ink."},
        429: {"description": "The key is over its upload rate or quota (see Retry-After)."},
    },
)
async def upload_cheque_sample(
    request: Request, context: ContextDep, grant: UploadGrantDep
) -> Response:
    """Store a reviewed amount field (or whole cheque) with its corrected amount; 201 once on disk.

    The same image with the same amount, or a repeated idempotency key, answers 200 with the
    earlier sample. Suspicious uploads are stored quarantined, with the reason.
    """
    try:
        upload = await inputs.cheque_sample_upload(request, context.decoding)
        check_user(grant, upload.user_id)
        rules = context.settings.cheque_sample_rules
        added = await context.with_store(
            lambda store: store.add_cheque_sample(
                user_id=upload.user_id,
                amount=upload.amount,
                image=upload.image,
                layout=upload.layout,
                key_id=key_id(grant.key),
                idempotency_key=upload.idempotency_key,
                reading_id=upload.reading_id,
                decide=lambda check: quarantine_reason(upload.amount, check, rules),
            )
        )
    except InkwellError as exc:
        if exc.status_code < 500:
            context.metrics.cheque_sample_rejected(exc.code)
        raise
    stored = await context.with_store(lambda store: store.cheque_sample(added.sample_id))
    if stored is None:  # pragma: no cover - committed above
        raise InkwellError("The stored sample vanished; retry the upload.")
    context.metrics.cheque_sample(stored.state if added.created else "repeat")
    if added.created and stored.state == ACCEPTED and stored.reading_id is not None:
        await score_reading(context, stored.reading_id, added.sample_id, stored.amount)
    return json_response(
        ChequeSampleCreatedPublic(
            sample_id=added.sample_id,
            created=added.created,
            duplicate_of=added.duplicate_of,
            amount=stored.amount,
            user_id=stored.user_id,
            reading_id=stored.reading_id,
            state=stored.state,
            reason=stored.reason,
        ),
        status_code=201 if added.created else 200,
    )


@router.get("/samples/stats", response_model=ChequeSampleStatsPublic)
async def cheque_sample_stats(store: StoreDep) -> ChequeSampleStatsPublic:
    """Reviewed fields by user, state and amount length; corrections; quarantine reasons."""
    return ChequeSampleStatsPublic(**await run_in_threadpool(store.cheque_stats))


def _review(record: ChequeReadingRecord) -> ChequeReviewPublic:
    return ChequeReviewPublic(
        reading_id=record.id,
        amount=record.amount,
        confidence=record.confidence,
        model_version=record.model_version,
        variant=record.variant,
        layout=record.layout,
        created_at=record.created_at.isoformat(),
        image=data_url(record.image or b""),
    )


@router.get("/reviews", response_model=ChequeReviewQueuePublic)
async def review_queue(
    store: StoreDep, limit: int = Query(50, ge=1, le=200)
) -> ChequeReviewQueuePublic:
    """Readings with `needs_review` that no reviewed upload corrects yet, newest first."""
    records = await run_in_threadpool(store.pending_reviews, limit)
    return ChequeReviewQueuePublic(reviews=[_review(r) for r in records])


FirstReview = tuple[int | None, ChequeReadingRecord | None]


async def score_reading(context: ContextDep, reading_id: str, sample_id: int, amount: str) -> None:
    """Count a reading as right or wrong once: on the first accepted review that names it.

    A retried upload (same idempotency key or image) is not `created`; a second, different
    image naming the same reading is not the first review; quarantined uploads are not trusted.
    The reading's own variant and cheque version are counted, not this service's.
    """

    def first_review_and_reading(store: SampleStore) -> FirstReview:
        return store.first_review(reading_id), store.reading(reading_id)

    first, reading = await context.with_store(first_review_and_reading)
    if first == sample_id and reading is not None:
        exact = reading.amount == amount
        context.metrics.cheque_reading_reviewed(reading.variant, reading.model_version, exact)
