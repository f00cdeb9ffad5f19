"""Turn request bodies into model-ready arrays: the translation layer between HTTP and model.

Every image goes through `inkwell.preprocessing`, the same code the trainer uses. Every problem
raises an `inkwell.errors` exception whose message says what to fix; the error map answers it.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import orjson
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from inkwell.cheques.preprocess import prepare_field
from inkwell.cheques.reader import to_gray
from inkwell.cheques.review import parse_amount
from inkwell.contract import image_key, pixels_key
from inkwell.errors import (
    DeadlineExceededError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    NoInkError,
    PayloadTooLargeError,
)
from inkwell.errors import UnsupportedMediaTypeError as MediaTypeError
from inkwell.preprocessing import (
    MIN_CONTRAST,
    ImageLimits,
    open_image,
    preprocess_bytes,
    validate_mnist_array,
)
from service.pixel_json import read_image_batch

IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/webp"}
)
RAW_TYPES = IMAGE_TYPES | {"application/octet-stream", ""}
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
MAX_ID_LENGTH = 128
T = TypeVar("T")
ACCEPTED_TYPES_HINT = (
    "Send an image as the raw body (Content-Type image/png, image/jpeg, image/bmp or image/webp), "
    "as multipart/form-data, or 28x28 pixel arrays as application/json."
)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Decoding:
    """How much one request may decode, and how many decodes may run at once.

    Decodes run in worker threads, never on the event loop: even a small file can declare
    millions of pixels, and decoding it on the loop would stall every request, health checks
    included. The limiter bounds the decodes in progress, so memory is bounded too (a few
    megapixels each) however many requests arrive; the rest wait for a slot, for at most
    `deadline_s` (then DeadlineExceededError, like a request queued too long for the model).
    """

    limits: ImageLimits
    max_batch_pixels: int
    limiter: anyio.CapacityLimiter
    deadline_s: float | None = None
    retry_after_s: int = 1
    on_shed: Callable[[str], None] | None = None

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` in a worker thread once a decode slot is free."""
        started = time.perf_counter()
        with anyio.move_on_after(self.deadline_s) as waiting:
            await self.limiter.acquire()
        if waiting.cancelled_caught:  # no token taken: acquire() is cancellation-safe
            waited = time.perf_counter() - started
            if self.on_shed is not None:
                self.on_shed("deadline")
            raise DeadlineExceededError(
                f"The request waited {waited * 1000:.0f} ms for a decoding slot, past the "
                f"{(self.deadline_s or 0) * 1000:.0f} ms deadline: the service is overloaded. "
                f"Retry after {self.retry_after_s} s.",
                retry_after_s=self.retry_after_s,
            )
        try:
            return await anyio.to_thread.run_sync(func, *args)
        finally:
            self.limiter.release()


async def image_to_mnist(data: bytes, decoding: Decoding) -> np.ndarray:
    """Encoded image bytes → (28, 28) float32 in [0, 1], ink = 1 (MNIST format)."""
    return await decoding.run(preprocess_bytes, data, decoding.limits)


def decode_batch(
    files: list[tuple[str, bytes]], limits: ImageLimits, max_total_pixels: int
) -> np.ndarray:
    """Named encoded images → (N, 28, 28); all headers are checked before any is decoded."""
    total = 0
    for index, (name, data) in enumerate(files):
        with _naming_image(index, name):
            width, height = open_image(data, limits).size
        total += width * height
    if total > max_total_pixels:
        raise ImageTooLargeError(
            f"The {len(files)} images declare {total:,} pixels together; the limit per batch is "
            f"{max_total_pixels:,}. Send fewer or smaller images per batch."
        )
    arrays = []
    for index, (name, data) in enumerate(files):
        with _naming_image(index, name):
            arrays.append(preprocess_bytes(data, limits))
    return np.stack(arrays)


@contextlib.contextmanager
def _naming_image(index: int, name: str | None) -> Iterator[None]:
    try:
        yield
    except InvalidInputError as exc:
        raise type(exc)(f"Image {index} ({name}): {exc.message}") from exc


# JSON numbers are doubles (RFC 8259 interoperability); integers past int64 are read as floats,
# as orjson reads them, so a 400-digit "pixel" becomes infinity and gets that clear error later.
_EXACT_INT_DIGITS = 18
SLOW_JSON_MAX_BYTES = 64 * 1024


def _json_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= _EXACT_INT_DIGITS else float(text)


def parse_json(body: bytes) -> Any:
    """Parse a JSON request body; anything unparseable is an InvalidInputError, never a 500."""
    try:
        # orjson parses a 256-image batch ~3x faster than `json`; it refuses NaN and Infinity,
        # which Python's parser below accepts so that they get their own clear error later
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if len(body) > SLOW_JSON_MAX_BYTES:
            # Python's parser holds the event loop (and the GIL) ~0.2 s per MB: big bodies get
            # orjson's verdict, which says where the problem is.
            raise InvalidInputError(
                f"The body is not valid JSON ({exc}). Send a JSON object; NaN and Infinity "
                "are not JSON numbers.",
                code="invalid_json",
            ) from exc
    try:
        return json.loads(body, parse_int=_json_int)
    except RecursionError as exc:
        raise InvalidInputError(
            "The JSON is nested too deeply. Send a flat object; pixel arrays need only 2 levels "
            "(3 for a batch).",
            code="invalid_json",
        ) from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInputError(
            f"The body is not valid JSON ({exc}). Send a JSON object.", code="invalid_json"
        ) from exc


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON; an empty or malformed body is a 422 with a message."""
    return parse_json_body(await request.body())


def parse_json_body(body: bytes) -> Any:
    """A request body parsed as JSON; an empty or malformed body is a 422 with a message."""
    if not body:
        raise InvalidInputError(
            'The request body is empty. Send a JSON object, e.g. {"pixels": [[0, ...], ...]}.',
            code="empty_body",
        )
    return parse_json(body)


async def read_form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=64)
    except HTTPException as exc:  # starlette's multipart parser errors
        raise InvalidInputError(
            f"The multipart body is malformed ({exc.detail}). Let your HTTP client build it, "
            "e.g. `curl -F image=@digit.png`.",
            code="invalid_multipart",
        ) from exc


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, UploadFile):
        return None
    return value


async def form_file(form: FormData, *names: str) -> bytes:
    """The bytes of the first file field among `names`."""
    for name in names:
        value = form.get(name)
        if isinstance(value, UploadFile):
            return await value.read()
        if isinstance(value, str):
            raise InvalidInputError(
                f"The form field {name!r} must be a file upload, not text. "
                f"Use e.g. `curl -F {name}=@digit.png`.",
                code="invalid_multipart",
            )
    raise InvalidInputError(
        f"The multipart form has no image. Add the file as field {names[0]!r}, "
        f"e.g. `curl -F {names[0]}=@digit.png`.",
        code="missing_image",
    )


def pixels_from_json(payload: Any, key: str = "pixels") -> np.ndarray:
    """`{"pixels": 28x28}` → (28, 28) float32."""
    if not isinstance(payload, dict) or key not in payload:
        raise InvalidInputError(
            f'The JSON must be an object with a "{key}" field holding 28 rows of 28 numbers.',
            code="invalid_json",
        )
    return require_ink(validate_mnist_array(payload[key]))


def require_ink(images: np.ndarray) -> np.ndarray:
    """Blank pixel arrays are refused like blank photos: the model would still name a digit."""
    peaks = images.reshape(-1, 28 * 28).max(axis=1)
    blank = np.flatnonzero(peaks < MIN_CONTRAST)
    if blank.size:
        where = "The pixel array" if images.ndim == 2 else f"Image {int(blank[0])}"
        raise NoInkError(
            f"{where} has no ink (all values below {MIN_CONTRAST}). Send a digit drawn with "
            "high values (ink = 1 or 255) on a zero background."
        )
    return images


def check_batch_size(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidInputError("The batch is empty. Send at least one image.", code="empty_batch")
    if count > limit:
        raise PayloadTooLargeError(
            f"The batch has {count} images; the limit is {limit}. Split it into smaller batches.",
            code="batch_too_large",
        )


def mnist_batch(values: Any, limit: int) -> np.ndarray:
    """A JSON list of 28x28 arrays → (N, 28, 28) float32, with the single-image rules per image."""
    if not isinstance(values, list):
        raise InvalidImageError(
            '"images" must be a list of 28x28 pixel arrays.', code="invalid_image"
        )
    check_batch_size(len(values), limit)
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape[1:] != (28, 28) or not np.isfinite(array).all():
        return require_ink(np.stack([_validated(i, v) for i, v in enumerate(values)]))
    scaled = _scaled_batch(array)
    if scaled is None:
        return require_ink(np.stack([_validated(i, v) for i, v in enumerate(values)]))
    return require_ink(scaled)


def _scaled_batch(array: np.ndarray) -> np.ndarray | None:
    """Finite (N, 28, 28) values → [0, 1] per image (0..255 images scaled); None if out of range."""
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        return None
    scale = array.reshape(len(array), -1).max(axis=1) > 1.0  # 0..255 images, per image
    if scale.any():
        array[scale] /= 255.0
    return array


def _validated(index: int, value: Any) -> np.ndarray:
    try:
        return validate_mnist_array(value)
    except InvalidImageError as exc:
        raise InvalidImageError(f"Image {index}: {exc.message}") from exc


async def single_image(request: Request, decoding: Decoding) -> tuple[np.ndarray, str | None]:
    """One image from a raw body, a multipart form or JSON pixels → (28, 28) float32, with its
    content key (`inkwell.contract`: the key the router gives a labelled upload)."""
    kind = media_type(request)
    if kind in RAW_TYPES:
        body = await request.body()
        if not body:
            raise InvalidInputError(
                f"The request body is empty. {ACCEPTED_TYPES_HINT}", code="empty_body"
            )
        return await image_to_mnist(body, decoding), image_key(body)
    if kind == MULTIPART_TYPE:
        form = await read_form(request, max_files=1)
        data = await form_file(form, "image", "file")
        return await image_to_mnist(data, decoding), image_key(data)
    if kind == JSON_TYPE:
        payload = await read_json(request)
        image = pixels_from_json(payload)
        return image, pixels_key(payload["pixels"])
    raise MediaTypeError(f"Content-Type {kind!r} is not supported. {ACCEPTED_TYPES_HINT}")


async def image_bytes(request: Request) -> bytes:
    """The encoded bytes of one image sent as the raw body or as multipart field `image`.

    For routes that need the image itself (cheque amounts), not 28x28 MNIST pixels.
    """
    kind = media_type(request)
    if kind in RAW_TYPES:
        body = await request.body()
        if not body:
            raise InvalidInputError(
                "The request body is empty. Send the image as the raw body (Content-Type "
                "image/png or image/jpeg) or as multipart field 'image'.",
                code="empty_body",
            )
        return body
    if kind == MULTIPART_TYPE:
        form = await read_form(request, max_files=1)
        return await form_file(form, "image", "file")
    raise MediaTypeError(
        f"Content-Type {kind!r} is not supported here. Send the image as the raw body "
        "(image/png, image/jpeg, image/bmp or image/webp) or as multipart field 'image'."
    )


async def image_batch(request: Request, decoding: Decoding, limit: int) -> np.ndarray:
    """A batch from a multipart form (repeated `images` files) or JSON `{"images": [...]}`."""
    kind = media_type(request)
    if kind == MULTIPART_TYPE:
        form = await read_form(request, max_files=limit + 1)
        uploads = [v for v in form.getlist("images") if isinstance(v, UploadFile)]
        check_batch_size(len(uploads), limit)
        files = [(upload.filename or "", await upload.read()) for upload in uploads]
        return await decoding.run(decode_batch, files, decoding.limits, decoding.max_batch_pixels)
    if kind == JSON_TYPE:
        body = await request.body()
        fast = read_image_batch(body)
        if fast is not None:  # plain 0..255 integers, parsed without Python objects
            check_batch_size(len(fast), limit)
            scaled = _scaled_batch(fast)
            if scaled is not None:
                return require_ink(scaled)
        payload = parse_json_body(body)
        if not isinstance(payload, dict) or "images" not in payload:
            raise InvalidInputError(
                'The JSON must be an object with an "images" field: a list of 28x28 arrays.',
                code="invalid_json",
            )
        return mnist_batch(payload["images"], limit)
    raise MediaTypeError(
        f"Content-Type {kind!r} is not supported for batches. Send multipart/form-data with "
        'repeated "images" files, or application/json {"images": [28x28, ...]}.'
    )


@dataclass(frozen=True)
class SampleUpload:
    """A labelled sample as received: original bytes, MNIST pixels, label, user, key."""

    user_id: str
    label: int
    image: bytes
    pixels: bytes  # 784 uint8, ink = 255
    idempotency_key: str | None


def parse_label(raw: object) -> int:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise InvalidInputError(
            "The label is missing. Send the digit the image shows, 0 to 9, as field 'label'.",
            code="missing_label",
        )
    text = str(raw).strip()
    if isinstance(raw, bool) or len(text) != 1 or text not in "0123456789":
        raise InvalidInputError(
            f"The label {text[:20]!r} is not a digit. Send one of 0, 1, ..., 9.",
            code="invalid_label",
        )
    return int(text)


def parse_user_id(raw: object) -> str:
    text = str(raw).strip() if raw is not None else ""
    if not text:
        raise InvalidInputError(
            "The user id is missing. Send the uploading user's id as field 'user_id'.",
            code="missing_user_id",
        )
    if len(text) > MAX_ID_LENGTH or not text.isprintable():
        raise InvalidInputError(
            f"The user id must be 1 to {MAX_ID_LENGTH} printable characters.",
            code="invalid_user_id",
        )
    return text


def parse_idempotency_key(raw: object) -> str | None:
    key = str(raw).strip() if raw is not None else ""
    if not key:
        return None
    if len(key) > MAX_ID_LENGTH or not key.isprintable():
        raise InvalidInputError(
            f"The idempotency key must be 1 to {MAX_ID_LENGTH} printable characters.",
            code="invalid_idempotency_key",
        )
    return key


def to_pixels(mnist: np.ndarray) -> bytes:
    """(28, 28) float in [0, 1] → 784 uint8 bytes (ink = 255), the store's format."""
    return np.clip(np.rint(mnist * 255.0), 0, 255).astype(np.uint8).tobytes()


def encode_png(mnist: np.ndarray) -> bytes:
    """A 28x28 MNIST-format array as PNG bytes (white ink on black, like MNIST)."""
    buffer = io.BytesIO()
    Image.fromarray(np.frombuffer(to_pixels(mnist), np.uint8).reshape(28, 28)).save(buffer, "PNG")
    return buffer.getvalue()


async def sample_upload(request: Request, decoding: Decoding) -> SampleUpload:
    """A labelled sample from multipart (image, label, user_id) or JSON (pixels, label, user_id).

    Fields are validated before the image is decoded, so a bad label costs no decoding.
    """
    header_key = request.headers.get("idempotency-key")
    kind = media_type(request)
    if kind == MULTIPART_TYPE:
        form = await read_form(request, max_files=1)
        label = parse_label(_field(form, "label"))
        user_id = parse_user_id(_field(form, "user_id"))
        key = parse_idempotency_key(_field(form, "idempotency_key") or header_key)
        image = await form_file(form, "image", "file")
        mnist = await image_to_mnist(image, decoding)
    elif kind == JSON_TYPE:
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise InvalidInputError(
                'The JSON must be an object: {"user_id", "label", "pixels": 28x28}.',
                code="invalid_json",
            )
        label = parse_label(payload.get("label"))
        user_id = parse_user_id(payload.get("user_id"))
        key = parse_idempotency_key(payload.get("idempotency_key") or header_key)
        mnist = pixels_from_json(payload)
        image = encode_png(mnist)
    else:
        raise MediaTypeError(
            f"Content-Type {kind!r} is not supported for samples. Send multipart/form-data with "
            "fields image, label and user_id, or application/json with pixels, label, user_id."
        )
    return SampleUpload(user_id, label, image, to_pixels(mnist), key)


@dataclass(frozen=True)
class ChequeSampleUpload:
    """A reviewed cheque field as received: image bytes, the amount's digits, who, which reading."""

    user_id: str
    amount: str
    image: bytes
    layout: str
    idempotency_key: str | None
    reading_id: str | None


CHEQUE_LAYOUTS = ("auto", "field", "cheque")


def parse_reading_id(raw: object) -> str | None:
    text = str(raw).strip() if raw is not None else ""
    if not text:
        return None
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidInputError(
            f"The reading_id {text[:40]!r} is not one this service issues (32 hex characters). "
            "Send the reading_id that POST /v1/cheques/read returned, or leave it out.",
            code="invalid_reading_id",
        )
    return text


def parse_layout(raw: object) -> str:
    text = str(raw).strip().lower() if raw is not None else ""
    if not text:
        return "auto"
    if text not in CHEQUE_LAYOUTS:
        raise InvalidInputError(
            f"The layout {text[:20]!r} is not one of {', '.join(CHEQUE_LAYOUTS)}: field (the "
            "amount box), cheque (a whole cheque) or auto (decided by size).",
            code="invalid_layout",
        )
    return text


def check_cheque_image(data: bytes, limits: ImageLimits) -> None:
    """The image decodes within the limits and shows ink (no model needed)."""
    prepare_field(to_gray(data, limits))


CHEQUE_FIELDS = ("amount", "user_id", "idempotency_key", "reading_id", "layout")


def _cheque_sample(fields: dict[str, str | None], header_key: str | None) -> ChequeSampleUpload:
    """The validated fields, with the image still to come."""
    return ChequeSampleUpload(
        user_id=parse_user_id(fields["user_id"]),
        amount=parse_amount(fields["amount"]),
        image=b"",
        layout=parse_layout(fields["layout"]),
        idempotency_key=parse_idempotency_key(fields["idempotency_key"] or header_key),
        reading_id=parse_reading_id(fields["reading_id"]),
    )


async def cheque_sample_upload(request: Request, decoding: Decoding) -> ChequeSampleUpload:
    """A reviewed field from multipart (image + fields) or a raw image body (fields in the query).

    Fields are validated before the image is decoded, so a bad amount costs no decoding.
    """
    kind = media_type(request)
    header_key = request.headers.get("idempotency-key")
    if kind == MULTIPART_TYPE:
        form = await read_form(request, max_files=1)
        upload = _cheque_sample({name: _field(form, name) for name in CHEQUE_FIELDS}, header_key)
        image = await form_file(form, "image", "file")
    elif kind in RAW_TYPES:
        query = request.query_params
        upload = _cheque_sample({name: query.get(name) for name in CHEQUE_FIELDS}, header_key)
        image = await request.body()
        if not image:
            raise InvalidInputError(
                "The request body is empty. Send the amount field or cheque image as the raw "
                "body (Content-Type image/png or image/jpeg) or as multipart field 'image'.",
                code="empty_body",
            )
    else:
        raise MediaTypeError(
            f"Content-Type {kind!r} is not supported for reviewed cheques. Send multipart/form-"
            "data with fields image, amount and user_id, or the image as the raw body with "
            "?amount=...&user_id=... in the query."
        )
    await decoding.run(check_cheque_image, image, decoding.limits)
    return replace(upload, image=image)
