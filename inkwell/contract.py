"""What the components agree on over HTTP: header names, the request-body fields the router
reads, the image-key hash, and the service metrics the router and the dashboards read.

The service, the router, `inkwell up` and `monitoring/build.py` import these names instead of
spelling the strings again, so renaming one side cannot silently break the other.
The image-key hash is defined with the answer headers that carry it and re-exported here.
"""

from __future__ import annotations

from inkwell.web.headers import image_key as image_key
from inkwell.web.headers import pixels_key as pixels_key

# ---- headers (lower case: ASGI and httpx give header names in lower case) -------------------
API_KEY_HEADER = "x-api-key"
USER_HEADER = "x-user-id"
VARIANT_HEADER = "x-inkwell-variant"  # a tester's override on requests, the answer's variant
OVERRIDE_KEY_HEADER = "x-inkwell-override-key"
FALLBACK_HEADER = "x-inkwell-fallback"

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
