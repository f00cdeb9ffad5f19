"""Property-based fuzzing of an app's OpenAPI (issue 18): hand-written hypothesis strategies for
every request body the routes declare (raw PNG/JPEG, multipart, JSON pixel arrays, Open
Inference Protocol v2 JSON), valid and corrupted, sent one request per example.

The number of requests per component is `INKWELL_FUZZ_EXAMPLES` (default `DEFAULT_EXAMPLES`).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

DEFAULT_EXAMPLES = 5000


# read once, on import: some fixtures (the trainer's) clear every INKWELL_* variable
EXAMPLES = int(os.environ.get("INKWELL_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))


def examples() -> int:
    """Requests to send per component: `INKWELL_FUZZ_EXAMPLES`, else `DEFAULT_EXAMPLES`."""
    return EXAMPLES


@dataclass(frozen=True)
class Operation:
    """One method + path of an OpenAPI document, with what its requests carry."""

    method: str
    path: str
    parameters: tuple[dict[str, Any], ...]
    media_types: tuple[str, ...]
    form_fields: tuple[str, ...]  # multipart fields besides the image(s)
    json_keys: tuple[str, ...]  # top-level keys of a JSON object body
    proxied: bool = False  # answered by a fake upstream, which only knows the declared methods


def operations(
    schema: Mapping[str, Any], keep: Callable[[str], bool] = lambda _: True, proxied: bool = False
) -> list[Operation]:
    """Every operation of an OpenAPI document whose path `keep` accepts."""
    found = []
    for path, item in schema["paths"].items():
        if not keep(path):
            continue
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {})
            form = content.get("multipart/form-data", {}).get("schema", {})
            fields = tuple(f for f in form.get("properties", {}) if f not in ("image", "images"))
            keys = tuple(
                content.get("application/json", {}).get("schema", {}).get("properties", {})
            )
            parameters = tuple(op.get("parameters", []))
            found.append(
                Operation(method.upper(), path, parameters, tuple(content), fields, keys, proxied)
            )
    return found


# ---- bodies -----------------------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def images(draw: st.DrawFn, fmt: str) -> bytes:
    """A valid image in `fmt` of odd size and mode, with random pixels."""
    height = draw(st.integers(1, 120))
    width = draw(st.integers(1, 120))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "1", "LA", "P"]))
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        mode = "RGB"
    seed = draw(st.integers(0, 2**32 - 1))
    style = draw(st.sampled_from(["noise", "blank", "ink", "digit"]))
    rng = np.random.default_rng(seed)
    if style == "noise":
        pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
    elif style == "blank":
        pixels = np.full((height, width), draw(st.sampled_from([0, 255])), dtype=np.uint8)
    else:
        pixels = np.full((height, width), 255, dtype=np.uint8)
        pixels[height // 4 : max(height // 4 + 1, 3 * height // 4), width // 2] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@st.composite
def corrupted(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid image truncated, with bytes flipped, or with junk appended."""
    data = bytearray(draw(valid))
    how = draw(st.sampled_from(["truncate", "flip", "append"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return bytes(data) + draw(st.binary(max_size=64))


image_bytes = st.one_of(
    images("PNG"),
    images("JPEG"),
    corrupted(images("PNG")),
    corrupted(images("JPEG")),
    st.binary(max_size=256),
    st.just(b""),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1),
    st.integers(0, 255),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | printable,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(printable, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def pixel_arrays(draw: st.DrawFn) -> object:
    """Nested lists of numbers of odd shapes (28x28 among them), ragged now and then."""
    shape = draw(
        st.one_of(
            st.just([28, 28]),
            st.just([1, 28, 28]),
            st.just([784]),
            st.lists(st.integers(0, 30), min_size=0, max_size=3),
        )
    )
    if np.prod(shape, dtype=np.int64) > 4000:
        shape = [28, 28]
    value = draw(numbers)
    array: object = np.full(shape, 0.0).tolist() if shape else 0.0
    if draw(st.booleans()):
        array = np.full(shape, 0.5).tolist() if shape else value
    if draw(st.booleans()) and isinstance(array, list) and array:
        array[0] = value if draw(st.booleans()) else [value]  # ragged or odd values
    return array


@st.composite
def v2_bodies(draw: st.DrawFn) -> object:
    """Open Inference Protocol v2 bodies with odd shapes, datatypes, data and outputs."""
    count = draw(st.integers(0, 3))
    shape = draw(
        st.one_of(
            st.just([count, 1, 28, 28]),
            st.just([count, 784]),
            st.lists(st.integers(-2, 40), max_size=5),
        )
    )
    size = int(np.prod([max(s, 0) for s in shape], dtype=np.int64)) if shape else 1
    size = min(size, 5000)
    data = draw(
        st.one_of(
            st.just([0.5] * size),
            st.just([[0.5] * 784] * max(count, 1)),
            st.lists(numbers, max_size=10),
            json_values,
        )
    )
    tensor: dict[str, object] = {
        "name": draw(st.sampled_from(["input", "input", "x"]) | printable),
        "shape": shape if draw(st.integers(0, 9)) else draw(json_values),
        "datatype": draw(
            st.sampled_from(["FP32"] * 5 + ["FP64", "INT64", "UINT8", "BYTES", "BOOL"])
        ),
        "data": data,
    }
    if draw(st.integers(0, 4)) == 0:
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-5, 10_000) | json_values)}
    body: dict[str, object] = {"inputs": [tensor] if draw(st.integers(0, 9)) else draw(json_values)}
    if draw(st.booleans()):
        body["id"] = draw(printable | printable | json_values)
    if draw(st.booleans()):
        outputs = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["digit", "nope"])}))
        body["outputs"] = draw(outputs | json_values)
    return body


@dataclass(frozen=True)
class Body:
    """What httpx sends: content bytes or multipart files, with a content type (or none)."""

    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    content_type: str | None = None
    headers: dict[str, str] | None = None


def json_bytes(value: object) -> bytes:
    """JSON as a client would send it; NaN/Infinity are written the way Python writes them."""
    return json.dumps(value).encode()


@st.composite
def bodies(draw: st.DrawFn, op: Operation) -> Body:
    """A body for one of the declared media types, now and then a wrong or missing one."""
    declared = list(op.media_types) or ["none"]
    media = draw(st.sampled_from([*declared, *declared, "text/plain", "none"]))
    if media == "none":
        return Body()
    if media.startswith("image/"):
        return Body(content=draw(image_bytes), content_type=media)
    if media == "multipart/form-data":
        plural = op.path.endswith("/batch")
        name = draw(st.sampled_from(["images" if plural else "image"] * 2 + ["file"]))
        filename = draw(st.sampled_from(["digit.png", "digit.jpg", "x"]))
        kind = draw(st.sampled_from(["image/png", "image/jpeg", "application/octet-stream"]))
        files = [
            (name, (filename, draw(image_bytes), kind)) for _ in range(draw(st.integers(1, 3)))
        ]
        data = {f: draw(printable | st.integers(-3, 12).map(str)) for f in op.form_fields}
        return Body(files=files, data=data)
    if media == "application/json":
        if op.path.endswith("/infer"):
            value = draw(st.one_of(v2_bodies(), v2_bodies(), json_values))
        else:
            arrays = st.one_of(pixel_arrays(), st.lists(pixel_arrays(), max_size=3), json_values)
            keyed = st.fixed_dictionaries({key: arrays for key in op.json_keys})
            value = draw(st.one_of(keyed, keyed, pixel_arrays(), json_values))
        if draw(st.integers(0, 19)) == 0:
            return Body(content=json_bytes(value)[:-1], content_type=media)  # malformed
        return Body(content=json_bytes(value), content_type=media)
    if media == "application/octet-stream":  # the v2 binary tensor extension
        head = json_bytes(draw(v2_bodies()))
        tail = draw(st.binary(max_size=64) | st.just(b"\0" * 4 * 784))
        length = draw(st.just(str(len(head))) | printable | st.integers(-9, 9999).map(str))
        headers = {"inference-header-content-length": length}
        return Body(content=head + tail, content_type=media, headers=headers)
    return Body(content=draw(st.binary(max_size=128)), content_type=media)


# ---- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One generated request, ready for `send`."""

    method: str
    url: str
    headers: dict[str, str]
    body: Body


def parameter_values(
    parameter: Mapping[str, Any], known: Mapping[str, list[str]]
) -> st.SearchStrategy[str | None]:
    """Values for one parameter: known good ones, the schema's enum, odd numbers and text."""
    schema = parameter.get("schema", {})
    options = list(known.get(parameter["name"], []))
    for choice in schema.get("anyOf", [schema]):
        options += [str(v) for v in choice.get("enum", [])]
    good = st.sampled_from(options) if options else printable
    odd = printable | st.integers(-(2**40), 2**40).map(str) | st.just("")
    missing = st.none() if not parameter.get("required") else st.nothing()
    # mostly good values, so that requests get past routing and auth to the bodies
    return st.integers(0, 9).flatmap(lambda n: good if n < 7 else odd if n < 9 else missing)


def requests(ops: list[Operation], known: Mapping[str, list[str]]) -> st.SearchStrategy[Request]:
    """Requests to any of `ops`, parameters and bodies drawn from the strategies above."""

    @st.composite
    def build(draw: st.DrawFn) -> Request:
        op = draw(st.sampled_from(ops))
        path, query, headers = op.path, [], {}
        for parameter in op.parameters:
            value = draw(parameter_values(parameter, known))
            where, name = parameter["in"], parameter["name"]
            if where == "path":
                path = path.replace("{" + name + "}", quote(value or "x", safe=""))
            elif value is not None and where == "query":
                query.append(f"{quote(name)}={quote(value, safe='')}")
            elif value is not None and where == "header":
                headers[name] = value.strip()  # HTTP trims the ends; h11 refuses to send them
        body = draw(bodies(op))
        if body.content_type:
            headers["content-type"] = body.content_type
        headers.update(body.headers or {})
        url = path + ("?" + "&".join(query) if query else "")
        # now and then a method the route lacks: the 405 must have the error shape too
        odd_method = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])
        odd = not op.proxied and draw(st.integers(0, 19)) == 0
        method = draw(odd_method) if odd else op.method
        return Request(method, url, headers, body)

    return build()


def send(client: httpx.Client, request: Request) -> httpx.Response:
    """Send one generated request."""
    body = request.body
    return client.request(
        request.method,
        request.url,
        headers=request.headers,
        content=body.content,
        files=body.files,
        data=body.data,
    )


def check(request: Request, response: httpx.Response) -> None:
    """No 5xx ever; every 4xx is the project's error shape with a code and a message."""
    described = f"{request.method} {request.url} {request.headers} -> {response.status_code}"
    if response.status_code >= 500:
        raise AssertionError(f"server error: {described}: {response.text[:500]}")
    if response.status_code >= 400:
        body = response.json()
        if not (isinstance(body, dict) and {"code", "message"} <= set(body)):
            raise AssertionError(f"4xx without the error shape: {described}: {body}")
        if not (isinstance(body["message"], str) and body["message"]):
            raise AssertionError(f"4xx with an empty message: {described}: {body}")


def fuzz(
    client: httpx.Client,
    ops: list[Operation],
    known: Mapping[str, list[str]] | None = None,
) -> Counter[tuple[str, int]]:
    """Send `examples()` generated requests to `ops` through `client`; check each answer.

    Returns how many answers each (operation, status) got, to show what the run reached.
    """
    seen: Counter[tuple[str, int]] = Counter()

    @settings(
        max_examples=examples(),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(ops, known or {}))
    def run(request: Request) -> None:
        response = send(client, request)
        seen[(request.method + " " + request.url.split("?")[0], response.status_code)] += 1
        check(request, response)

    run()
    return seen


@st.composite
def v2_tensor_bodies(draw: st.DrawFn, max_images: int = 40) -> tuple[bytes, dict[str, str]]:
    """Well-formed v2 FP32 requests (JSON or binary) whose values and counts are odd."""
    count = draw(st.integers(0, max_images))
    shape = draw(st.sampled_from([[count, 1, 28, 28], [count, 784], [count, 28, 28]]))
    value = draw(
        st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, 1.0])
    )
    values = np.full(count * 784, value, dtype="<f4")
    if count and draw(st.booleans()):
        values[draw(st.integers(0, count * 784 - 1))] = draw(st.floats(width=32))
    tensor: dict[str, object] = {"name": "input", "shape": shape, "datatype": "FP32"}
    outputs = draw(
        st.sampled_from([None, ["digit"], ["probabilities"], ["digit", "probabilities"]])
    )
    head: dict[str, object] = {"id": draw(printable), "inputs": [tensor]}
    if outputs is not None:
        head["outputs"] = [{"name": name} for name in outputs]
    if draw(st.booleans()):
        tensor["data"] = values.tolist()
        return json_bytes(head), {"content-type": "application/json"}
    raw = values.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json_bytes(head)
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + raw, headers
