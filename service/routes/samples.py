"""Labelled sample uploads (durably stored before the 201) and their statistics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inkwell.errors import ForbiddenError, ImageTooLargeError, InvalidInputError
from service import inputs
from service.deps import ApiKeyRequired, ContextDep, UploadGrantDep
from service.keys import check_user
from service.responses import json_response
from service.schemas import SampleCreatedPublic, SampleStatsPublic

router = APIRouter(prefix="/v1/samples", tags=["samples"], dependencies=[ApiKeyRequired])

SAMPLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "label": {"type": "integer", "minimum": 0, "maximum": 9},
                        "user_id": {"type": "string"},
                        "idempotency_key": {"type": "string"},
                    },
                    "required": ["image", "label", "user_id"],
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=SampleCreatedPublic,
    openapi_extra=SAMPLE_BODY,
    responses={
        200: {"model": SampleCreatedPublic, "description": "Repeat of an earlier upload"},
        403: {"description": "The key may not upload as this user_id."},
        429: {"description": "The key is over its upload rate or quota (see Retry-After)."},
    },
)
async def upload_sample(request: Request, context: ContextDep, grant: UploadGrantDep) -> Response:
    """Store a labelled image for continual learning; 201 only once it is on disk.

    A repeated idempotency key, or the same image bytes from the same user, answers 200 with
    the earlier sample's id instead of storing it twice.
    """
    limit = context.settings.max_sample_image_bytes
    try:
        upload = await inputs.sample_upload(request, context.decoding)
        if len(upload.image) > limit:
            raise ImageTooLargeError(
                f"The image is {len(upload.image):,} bytes; a sample stores its image, which "
                f"may be at most {limit:,} bytes. Crop it to the digit or compress it (a "
                "digit needs no more than a few hundred pixels a side) and upload it again."
            )
        check_user(grant, upload.user_id)
    except (InvalidInputError, ForbiddenError) as exc:
        context.metrics.sample_rejected(exc.code)
        raise
    added = await context.with_store(
        lambda store: store.add(
            user_id=upload.user_id,
            label=upload.label,
            image=upload.image,
            pixels=upload.pixels,
            idempotency_key=upload.idempotency_key,
        )
    )
    context.metrics.sample_accepted(added.created)
    stored = await context.with_store(lambda store: store.get(added.sample_id))
    return json_response(
        SampleCreatedPublic(
            sample_id=added.sample_id,
            created=added.created,
            duplicate_of=added.duplicate_of,
            label=stored.label if stored else upload.label,
            user_id=upload.user_id,
            state=stored.state if stored else "accepted",
        ),
        status_code=201 if added.created else 200,
    )


@router.get("/stats", response_model=SampleStatsPublic)
async def sample_stats(context: ContextDep) -> SampleStatsPublic:
    """Counts by user, label and state (accepted, quarantined with reason, trained-on)."""
    return SampleStatsPublic(**await context.with_store(lambda store: store.stats()))
