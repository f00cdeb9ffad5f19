"""Open Inference Protocol (KServe v2 / Triton) REST routes for the digit model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inkwell.errors import ModelNotFoundError
from service import oip
from service.deps import ModelDep, PredictContextDep
from service.model import DigitModel, ServedModel
from service.responses import json_response, record, with_answer_headers
from service.routes.health import not_ready

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
SERVER_NAME = "inkwell-service"
TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": ["FP32"]},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {"type": "array", "items": {}},
    },
    "required": ["name", "shape", "datatype"],
}
# The body is read raw (the binary tensor extension appends bytes after the JSON header), so
# FastAPI cannot infer it; declared here so clients and fuzzers see the real v2 request.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "items": TENSOR, "minItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"name": {"enum": ["probabilities", "digit"]}},
                                "required": ["name"],
                            },
                        },
                        "parameters": {"type": "object"},
                    },
                    "required": ["inputs"],
                }
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "JSON header of Inference-Header-Content-Length bytes, "
                    "then the little-endian FP32 tensor bytes.",
                }
            },
        },
    }
}


def served_model(model: DigitModel, name: str, version: str | None = None) -> ServedModel:
    """The loaded model if `name` (and `version`, when given) match it."""
    if name != model.name:
        raise ModelNotFoundError(
            f"This service serves model {model.name!r}, not {name!r}. Use /v2/models/{model.name}."
        )
    served = model.current
    if served is None:
        raise not_ready(model.name, model.variant)
    if version is not None and version != served.version:
        raise ModelNotFoundError(
            f"Version {version!r} of {name!r} is not loaded here; this {served.variant} service "
            f"serves version {served.version}. Omit the version or use that one."
        )
    return served


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(model: ModelDep) -> dict[str, bool]:
    served_model(model, model.name)
    return {"ready": True}


@router.get("")
async def server_metadata() -> oip.ServerMetadata:
    from inkwell import __version__

    return oip.ServerMetadata(name=SERVER_NAME, version=__version__, extensions=["binary_data"])


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, model: ModelDep, version: str | None = None) -> Response:
    served = served_model(model, name, version)
    return json_response(oip.model_metadata(served.name, served.version, served.variant))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, model: ModelDep, version: str | None = None) -> dict[str, object]:
    served = served_model(model, name, version)
    return {"name": served.name, "ready": True}


@router.post("/models/{name}/infer", openapi_extra=INFER_BODY)
@router.post("/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY)
async def infer(
    name: str, request: Request, context: PredictContextDep, version: str | None = None
) -> Response:
    """Run the model on an FP32 `input` tensor; returns `probabilities` and `digit`."""
    served_model(context.model, name, version)
    body = await request.body()
    parsed, binary = oip.parse_request(body, request.headers.get("inference-header-content-length"))
    images = oip.input_images(parsed, binary, context.settings.max_batch_images)
    outputs = oip.requested_outputs(parsed)
    prediction = await context.batcher.infer(images)
    if version is not None and prediction.served.version != version:
        # the alias moved while this request waited; answer with what was asked or not at all
        served_model(context.model, name, version)
    digits = record(request, context.metrics, prediction)
    response = json_response(oip.infer_response(parsed, outputs, prediction))
    return with_answer_headers(response, prediction.served.version, ",".join(map(str, digits)))
