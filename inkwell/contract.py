"""What the components agree on over HTTP: header names, the request-body fields the router
reads, the image-key hash, and the service metrics the router and the dashboards read.

The service, the router, `inkwell up` and `monitoring/build.py` import these names instead of
spelling the strings again, so renaming one side cannot silently break the other.
The answer headers are the service-to-router contract: a model route's 2xx answer names the
model version that answered, the prediction, and (for one image) the image's content key, so
the router remembers predictions for delayed labels without parsing the body (docs/router.md).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# ---- headers (lower case: ASGI and httpx give header names in lower case) -------------------
API_KEY_HEADER = "x-api-key"
USER_HEADER = "x-user-id"
VARIANT_HEADER = "x-inkwell-variant"  # a tester's override on requests, the answer's variant
OVERRIDE_KEY_HEADER = "x-inkwell-override-key"
FALLBACK_HEADER = "x-inkwell-fallback"
# the answer headers (values are ASCII text)
MODEL_VERSION_HEADER = "x-inkwell-model-version"
PREDICTION_HEADER = "x-inkwell-prediction"  # a digit, digits joined by "," or a cheque amount
IMAGE_KEY_HEADER = "x-inkwell-image-key"  # `image_key` or `pixels_key` of the one image

# ---- request-body fields the router reads (the service validates, the router only peeks) ----
USER_FIELDS = ("user_id", "user")
LABEL_FIELDS = ("label",)
IMAGE_FIELDS = ("image", "file", "upload")
PIXEL_FIELDS = ("pixels", "image", "images", "inputs", "instances")

# ---- service metrics the router's analysis scrapes and the dashboards query -----------------
PREDICTION_CONFIDENCE = "inkwell_service_prediction_confidence"  # histogram
CHEQUE_READS = "inkwell_service_cheque_reads"  # counter (`_total` when exposed)
CHEQUE_CONFIDENCE = "inkwell_service_cheque_confidence"  # histogram
CHEQUE_REVIEWED = "inkwell_service_cheque_reviewed_readings"  # counter
MODEL_INFO = "inkwell_service_model_info"  # gauge, 1 for the version served
READY = "inkwell_service_ready"  # gauge, 1 once a model is loaded


# ---- the image-key hash and the answer headers ------------------------------------------
def image_key(data: bytes) -> str:
    """The content key of an image sent as bytes (raw body or multipart file): its sha256."""
    return hashlib.sha256(data).hexdigest()


def pixels_key(value: Any) -> str | None:
    """The content key of JSON pixels (their canonical JSON's sha256), None when not pixels.

    The router keys a labelled upload this way too, so both sides must agree byte for byte.
    """
    if isinstance(value, list) and value:
        return image_key(json.dumps(value, separators=(",", ":")).encode())
    if isinstance(value, str) and value:  # base64 image in JSON
        return image_key(value.encode())
    return None


def answer_headers(version: str, prediction: str, key: str | None) -> list[tuple[bytes, bytes]]:
    """The answer headers of one model answer (`key` None: no single image to key)."""
    headers = [
        (MODEL_VERSION_HEADER.encode(), version.encode("latin-1", "replace")),
        (PREDICTION_HEADER.encode(), prediction.encode("latin-1", "replace")),
    ]
    if key is not None:
        headers.append((IMAGE_KEY_HEADER.encode(), key.encode()))
    return headers
