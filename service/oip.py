"""Open Inference Protocol (KServe v2 / Triton) schemas and tensor translation.

The digit model has one input, `input`: FP32 of shape [N, 1, 28, 28] (also accepted: [N, 28, 28]
and [N, 784]) with values in [0, 1], ink = 1; and two outputs: `probabilities` (FP32 [N, 10]) and
`digit` (INT64 [N]). Inputs may come as JSON `data` (flat or nested) or in the binary tensor
extension (`Inference-Header-Content-Length` header, raw little-endian bytes after the JSON).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inkwell.errors import InvalidInputError, PayloadTooLargeError
from service.inputs import parse_json
from service.model import Prediction

INPUT_NAME = "input"
OUTPUT_NAMES = ("probabilities", "digit")
PLATFORM = "pytorch_inkwell_digitnet"
PIXELS = 28 * 28


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


# Sizes and shapes are integers in the protocol: 3136.0 or "3136" is refused, not coerced.
StrictSize = Annotated[int, Field(strict=True, ge=0)]
StrictDim = Annotated[int, Field(strict=True)]


class TensorParameters(BaseModel):
    """An input's parameters: the binary extension's size, anything else passed through."""

    model_config = ConfigDict(extra="allow")

    binary_data_size: StrictSize | None = None


class RequestInput(BaseModel):
    name: str
    shape: list[StrictDim]
    datatype: str
    parameters: TensorParameters = Field(default_factory=TensorParameters)
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    outputs: list[ResponseOutput]


def model_metadata(name: str, version: str, variant: str) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        versions=[version],
        platform=PLATFORM,
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, 1, 28, 28])],
        outputs=[
            TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, 10]),
            TensorMetadata(name="digit", datatype="INT64", shape=[-1]),
        ],
        parameters={"variant": variant, "input_range": [0.0, 1.0], "ink": "high"},
    )


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The JSON part (validated) and the binary part of an infer request body."""
    if not body:
        raise InvalidInputError(
            'The request body is empty. Send {"inputs": [{"name": "input", "shape": '
            '[N, 1, 28, 28], "datatype": "FP32", "data": [...]}]}.',
            code="empty_body",
        )
    split = len(body)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            split = -1
        if not 0 < split <= len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_length!r} does not fit the body of "
                f"{len(body)} bytes; it must be the length of the JSON header.",
                code="invalid_request",
            )
    payload = parse_json(body[:split])
    try:
        request = InferenceRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(
            f"The inference request does not follow the v2 protocol: {problems}.",
            code="invalid_request",
        ) from exc
    return request, body[split:]


def input_images(request: InferenceRequest, binary: bytes, limit: int) -> np.ndarray:
    """The request's `input` tensor as (N, 28, 28) float32 in [0, 1]."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [i.name for i in request.inputs]
        raise InvalidInputError(
            f"Expected exactly one input named {INPUT_NAME!r}, got {names}. "
            "See GET /v2/models/{name} for the model's inputs.",
            code="invalid_input_name",
        )
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInputError(
            f"Input datatype {tensor.datatype!r} is not supported; send FP32 values in [0, 1].",
            code="unsupported_datatype",
        )
    shape = tensor.shape
    if not shape or any(d < 1 for d in shape) or int(np.prod(shape[1:])) != PIXELS:
        raise InvalidInputError(
            f"Input shape {shape} is not [N, 1, 28, 28], [N, 28, 28] or [N, 784].",
            code="invalid_shape",
        )
    count = shape[0]
    if count > limit:
        raise PayloadTooLargeError(
            f"The batch has {count} images; the limit is {limit}. Split it into smaller batches.",
            code="batch_too_large",
        )
    binary_size = tensor.parameters.binary_data_size
    if binary_size is not None:
        if binary_size != count * PIXELS * 4 or len(binary) < binary_size:
            raise InvalidInputError(
                f"binary_data_size {binary_size} does not match shape {shape} of FP32 "
                f"({count * PIXELS * 4} bytes) or the {len(binary)} bytes sent.",
                code="invalid_shape",
            )
        flat = np.frombuffer(binary[:binary_size], dtype="<f4").astype(np.float32)
    else:
        try:
            flat = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                "Input data must be a (flat or nested) list of numbers.", code="invalid_data"
            ) from exc
        if flat.size != count * PIXELS:
            raise InvalidInputError(
                f"Input data has {flat.size} values; shape {shape} needs {count * PIXELS}.",
                code="invalid_shape",
            )
    if not np.isfinite(flat).all():
        raise InvalidInputError("Input data contains NaN or infinity.", code="invalid_data")
    if flat.size and (float(flat.min()) < 0.0 or float(flat.max()) > 1.0):
        raise InvalidInputError(
            f"Input values range over [{float(flat.min())}, {float(flat.max())}]; the model "
            "takes FP32 in [0, 1] with ink = 1 (divide 8-bit pixels by 255).",
            code="invalid_data",
        )
    return flat.reshape(count, 28, 28)


def requested_outputs(request: InferenceRequest) -> tuple[str, ...]:
    if not request.outputs:
        return OUTPUT_NAMES
    names = tuple(o.name for o in request.outputs)
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown:
        raise InvalidInputError(
            f"Unknown outputs {unknown}; the model has {list(OUTPUT_NAMES)}.",
            code="invalid_output_name",
        )
    return names


def infer_response(
    request: InferenceRequest, outputs: tuple[str, ...], prediction: Prediction
) -> InferenceResponse:
    probabilities = prediction.probabilities
    count = len(probabilities)
    tensors = {
        "probabilities": ResponseOutput(
            name="probabilities",
            shape=[count, probabilities.shape[1]],
            datatype="FP32",
            data=probabilities.reshape(-1).tolist(),
        ),
        "digit": ResponseOutput(
            name="digit", shape=[count], datatype="INT64", data=probabilities.argmax(1).tolist()
        ),
    }
    served = prediction.served
    return InferenceResponse(
        model_name=served.name,
        model_version=served.version,
        id=request.id,
        parameters={"variant": served.variant},
        outputs=[tensors[name] for name in outputs],
    )
