"""Pure reading of request and response bodies: the user id, the image's content hash, the
label of an upload, and the prediction in a service answer. Answers are read here only from a
service that does not send the answer headers (`inkwell.contract`): an older version during
a rollout. The service validates requests and the router forwards the bytes unchanged; the
router refuses (with `strict`) only JSON it cannot read safely itself: not JSON at all, nested
deeper than any request needs, or integers beyond 64 bits. Without `strict` nothing here raises
on odd input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from inkwell.contract import (
    IMAGE_FIELDS,
    IMAGE_KEY_HEADER,
    LABEL_FIELDS,
    MODEL_VERSION_HEADER,
    PIXEL_FIELDS,
    PREDICTION_HEADER,
    USER_FIELDS,
    pixels_key,
)
from inkwell.contract import image_key as sha256
from inkwell.errors import BadRequestError, InvalidInputError

# The deepest request (Open Inference Protocol: body, inputs, input, data as [n][h][w]) is 6.
MAX_JSON_DEPTH = 32
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


VERSION_B, PREDICTION_B, IMAGE_KEY_B = (
    name.encode() for name in (MODEL_VERSION_HEADER, PREDICTION_HEADER, IMAGE_KEY_HEADER)
)


@dataclass(frozen=True)
class Answered:
    """What a service's answer headers say: version, prediction, the one image's key."""

    version: str
    prediction: str | None = None
    image_key: str | None = None


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class Peek:
    """What the router learned from a request body."""

    user_id: str | None = None
    image_key: str | None = None  # sha256 of the image content (bytes, or canonical pixels)
    label: str | None = None


def _param(header: str, key: str) -> str | None:
    """A parameter (`boundary=...`, `name="..."`) of a header value."""
    for piece in header.split(";")[1:]:
        name, _, value = piece.strip().partition("=")
        if name.strip().lower() == key:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body (empty when it is not well formed)."""
    boundary = _param(content_type, "boundary")
    if not boundary:
        return []
    delimiter = b"--" + boundary.encode("latin-1")
    parts: list[Part] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        parts.append(
            Part(
                name=_param(disposition, "name"),
                filename=_param(disposition, "filename"),
                content_type=headers.get("content-type"),
                data=data.removesuffix(b"\r\n"),
            )
        )
    return parts


def _text(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    return None


def _first(mapping: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in mapping:
            return mapping[name]
    return None


def json_problem(document: Any) -> str | None:
    """Why a parsed JSON request is unsafe to hand on (too deep, an integer beyond 64 bits),
    or None. Iterative: a deep document must not exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        items = value.values() if isinstance(value, dict) else value
        if depth > MAX_JSON_DEPTH:
            return f"it is nested more than {MAX_JSON_DEPTH} levels deep"
        for item in items:
            kind = type(item)
            if kind is int and not INT64_MIN <= item <= UINT64_MAX:
                return f"it holds an integer of {len(str(abs(item)))} digits (at most 64 bits)"
            if kind is list or kind is dict:
                stack.append((item, depth + 1))
    return None


def parse_json(body: bytes) -> Any:
    """A JSON request body, or a 4xx error that says what is wrong with it."""
    problem: str | None
    try:
        document = json.loads(body)
    except RecursionError:
        document, problem = None, f"it is nested more than {MAX_JSON_DEPTH} levels deep"
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also 4300+ digit integers
        raise BadRequestError(
            f"the request body is not valid JSON ({str(exc)[:200]}); send a JSON document, "
            "or the right Content-Type for an image.",
            code="invalid_json",
        ) from exc
    else:
        problem = json_problem(document) if isinstance(document, list | dict) else None
    if problem is not None:
        raise InvalidInputError(
            f"the JSON request body cannot be used: {problem}. Send the pixels as a flat or "
            "[rows][columns] array of numbers, as docs/service.md shows.",
            code="invalid_json",
        )
    return document


def peek(content_type: str | None, body: bytes, query: str = "", *, strict: bool = False) -> Peek:
    """User id, image hash and label from a request, whatever form it was sent in. With
    `strict`, a JSON body the router cannot read safely is a 4xx (`parse_json`)."""
    kind = media_type(content_type)
    fields: dict[str, str] = {}
    image_key: str | None = None
    if kind == "multipart/form-data":
        for part in parse_multipart(content_type or "", body):
            if part.filename is not None or (part.name or "") in IMAGE_FIELDS:
                if image_key is None and part.data:
                    image_key = sha256(part.data)
            elif part.name:
                fields.setdefault(part.name, part.data.decode("utf-8", "replace"))
    elif kind == "application/json" or kind.endswith("+json"):
        try:
            document = parse_json(body) if body else None
        except InvalidInputError:
            if strict:
                raise
            document = None
        if isinstance(document, dict):
            for name in (*USER_FIELDS, *LABEL_FIELDS):
                text = _text(document.get(name))
                if text is not None:
                    fields[name] = text
            image_key = pixels_key(_first(document, PIXEL_FIELDS))
    elif kind == "application/x-www-form-urlencoded":
        for name, values in parse_qs(body.decode("utf-8", "replace")).items():
            fields.setdefault(name, values[0])
    elif body:
        image_key = sha256(body)  # a raw image body
    if query:
        for name, values in parse_qs(query).items():
            fields.setdefault(name, values[0])
    return Peek(
        user_id=_first(fields, USER_FIELDS),
        image_key=image_key,
        label=_first(fields, LABEL_FIELDS),
    )


def prediction_of(document: Any) -> str | None:
    """The answer in a service response, as text to compare variants and check labels: the
    digit (or the digits of a batch, in order), a cheque amount, or the Open Inference
    Protocol `digit` output (else the argmax of the first output)."""
    if not isinstance(document, dict):
        return None
    for key in ("digit", "prediction", "amount"):
        value = document.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    batch = document.get("predictions")
    if isinstance(batch, list) and batch:
        answers = [prediction_of(item) for item in batch]
        return None if None in answers else ",".join(str(a) for a in answers)
    outputs = document.get("outputs")
    if isinstance(outputs, list) and outputs and all(isinstance(o, dict) for o in outputs):
        chosen = next((o for o in outputs if o.get("name") == "digit"), None)
        data = (chosen or outputs[0]).get("data")
        if not isinstance(data, list) or not data:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in data):
            return None
        if chosen is not None or len(data) == 1:
            return ",".join(str(v) for v in data)
        return str(max(range(len(data)), key=data.__getitem__))
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _all_finite(values: list[Any]) -> bool:
    try:  # one C-level pass; None, strings and nested lists raise
        return math.isfinite(math.fsum(values))
    except (TypeError, ValueError, OverflowError):
        return False


def answer_problem(document: Any) -> str | None:
    """Why a 2xx prediction cannot be trusted (a model gone numerically wrong answers NaN,
    which JSON carries as null), or None when it looks sound."""
    if not isinstance(document, dict):
        return None
    if "confidence" in document and not _finite(document["confidence"]):
        return f"confidence is {document['confidence']!r}, not a number"
    probabilities = document.get("probabilities")
    if isinstance(probabilities, list) and not _all_finite(probabilities):
        return "probabilities contain non-numbers"
    batch = document.get("predictions")
    if isinstance(batch, list):
        for item in batch:
            problem = answer_problem(item)
            if problem is not None:
                return problem
    outputs = document.get("outputs")
    if isinstance(outputs, list):
        for output in outputs:
            data = output.get("data") if isinstance(output, dict) else None
            if isinstance(data, list) and not _all_finite(data):
                return "an output tensor contains non-numbers"
    return None


def version_of(document: Any) -> str | None:
    """The model version a service says answered (`model_version`, or OIP `model_version`)."""
    if not isinstance(document, dict):
        return None
    for key in ("model_version", "version"):
        value = document.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    model = document.get("model")
    if isinstance(model, dict):
        return version_of(model)
    return None


def answered(headers: list[tuple[bytes, bytes]]) -> Answered | None:
    """The answer headers of a service answer, or None from a service that sends none (then
    the body is read: `prediction_of`, `version_of`). Empty values count as absent."""
    version = prediction = key = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == VERSION_B:
            version = value.decode("latin-1")
        elif lowered == PREDICTION_B:
            prediction = value.decode("latin-1")
        elif lowered == IMAGE_KEY_B:
            key = value.decode("latin-1")
    if not version:
        return None
    return Answered(version, prediction or None, key or None)
