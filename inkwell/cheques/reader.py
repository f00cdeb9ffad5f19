"""`ChequeReader`: the cheque-amount model contract (load, read), with no HTTP inside.

    reader = ChequeReader.load("stable")          # from the MLflow registry
    reading = reader.read(png_bytes)              # or a grayscale numpy array
    reading.amount, reading.confidence, reading.needs_review, reading.characters

`read` accepts an amount field or a whole cheque (`layout="auto"` decides by size; see
`inkwell.cheques.locate`). It never invents an amount: an image without ink, or whose field
holds no digits, raises `NoInkError`; a cheque whose amount box cannot be found raises
`AmountFieldNotFoundError`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inkwell.cheques.decode import DECODERS, Decoded
from inkwell.cheques.locate import LAYOUTS, FieldLocation, is_whole_cheque, locate_amount_field
from inkwell.cheques.model import CRNN, CRNNConfig, batch_inputs, frames_for
from inkwell.cheques.preprocess import (
    FRAME_STRIDE,
    PREPROCESSING_VERSION,
    FieldInput,
    prepare_field,
)
from inkwell.errors import InvalidInputError, ModelNotFoundError, NoInkError
from inkwell.preprocessing import ImageLimits, decode_image
from inkwell.registry import META_FILE, WEIGHTS_FILE, Registry, VersionInfo
from inkwell.settings import STABLE, CoreSettings

KIND = "cheques"


@dataclass(frozen=True)
class CharReading:
    """One digit of the amount: its confidence and columns ``[x_start, x_end)`` in the image."""

    digit: str
    confidence: float
    x_start: int
    x_end: int


@dataclass(frozen=True)
class ChequeReading:
    """The amount read from one image, ready to serialise with `to_dict`."""

    amount: str
    confidence: float
    needs_review: bool
    review_threshold: float
    characters: tuple[CharReading, ...]
    layout: str  # "field" or "cheque"
    field_box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) when a cheque
    locate_method: str | None = None
    model_name: str = ""
    model_version: str | None = None
    decoder: str = "greedy"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the API response body)."""
        return {
            "amount": self.amount,
            "confidence": round(self.confidence, 6),
            "needs_review": self.needs_review,
            "review_threshold": round(self.review_threshold, 6),
            "characters": [
                {
                    "digit": c.digit,
                    "confidence": round(c.confidence, 6),
                    "x": [c.x_start, c.x_end],
                }
                for c in self.characters
            ],
            "layout": self.layout,
            "field_box": list(self.field_box) if self.field_box else None,
            "locate_method": self.locate_method,
            "model": {"name": self.model_name, "version": self.model_version},
            "decoder": self.decoder,
        }


def to_gray(image: bytes | np.ndarray, limits: ImageLimits | None = None) -> np.ndarray:
    """Bytes of an image file, or a 2-D array (uint8, or floats in [0, 1]), → gray (1 = white)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image), limits)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if np.asarray(image).dtype == np.uint8:
            return (array / 255.0).astype(np.float32)
    if array.ndim != 2:
        raise InvalidInputError(
            f"Expected image bytes or a 2-D grayscale array, got an array of shape "
            f"{list(array.shape)}."
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if array.size and (float(array.min()) < 0.0 or float(array.max()) > 1.0):
        raise InvalidInputError("Float pixel arrays must lie in [0, 1] (1 = white).")
    return array


class ChequeReader:
    """A loaded amount recogniser with its calibration; `read` turns an image into a reading."""

    def __init__(
        self,
        model: CRNN,
        meta: Mapping[str, Any],
        *,
        name: str = "inkwell-cheques",
        info: VersionInfo | None = None,
    ) -> None:
        self.model = model.eval()
        self.meta = dict(meta)
        self.name = name
        self.info = info
        calibration = self.meta.get("calibration", {})
        self.temperature = float(calibration.get("temperature", 1.0))
        self.review_threshold = float(calibration.get("review_threshold", 0.0))

    @property
    def version(self) -> str | None:
        return self.info.version if self.info else None

    # ---- loading and saving ---------------------------------------------------------------
    @classmethod
    def from_dir(cls, folder: Path, *, info: VersionInfo | None = None) -> ChequeReader:
        """Load `weights.pt` + `model.json` from a folder (a downloaded registry version)."""
        meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
        if not meta_path.is_file() or not weights_path.is_file():
            raise ModelNotFoundError(
                f"{folder} holds no cheque model ({META_FILE} and {WEIGHTS_FILE} expected). "
                "Train one with `inkwell cheques train`."
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") != KIND:
            raise ModelNotFoundError(
                f"{folder} holds a {meta.get('kind')!r} model, not a cheque-amount model."
            )
        model = CRNN(CRNNConfig.from_dict(meta.get("config", {})))
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        name = info.name if info else str(meta.get("name", "inkwell-cheques"))
        return cls(model, meta, name=name, info=info)

    @classmethod
    def load(
        cls,
        ref: str = STABLE,
        *,
        settings: CoreSettings | None = None,
        registry: Registry | None = None,
    ) -> ChequeReader:
        """Load `inkwell-cheques@ref` (alias such as `stable`, or a version number)."""
        registry = registry or Registry(settings)
        name = registry.settings.cheque_model_name
        try:
            info = registry.get_version(name, ref)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"Cheque model {name!r} has no version {ref!r}. Train one with "
                "`inkwell cheques train`, or check the alias (`inkwell models --name "
                f"{name}`)."
            ) from exc
        with tempfile.TemporaryDirectory() as tmp:
            return cls.from_dir(registry.download(info, Path(tmp)), info=info)

    def save(self, folder: Path) -> dict[str, Path]:
        """Write `weights.pt` and `model.json` (the registry's artifact layout) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / WEIGHTS_FILE
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        torch.save(state, weights)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
        return {WEIGHTS_FILE: weights}

    @staticmethod
    def build_meta(config: CRNNConfig, **extra: Any) -> dict[str, Any]:
        """The `model.json` of a cheque model."""
        return {
            "kind": KIND,
            "architecture": "CRNN",
            "config": config.to_dict(),
            "preprocessing": PREPROCESSING_VERSION,
            "input": {"height": config.height, "ink": "high", "frame_stride": FRAME_STRIDE},
            **extra,
        }

    # ---- inference ------------------------------------------------------------------------
    @torch.inference_mode()
    def field_logits(self, fields: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame logits (T_i, 11) of prepared field inputs (batched by similar width)."""
        out: list[np.ndarray] = [np.zeros(0)] * len(fields)
        order = sorted(range(len(fields)), key=lambda i: fields[i].shape[1])
        for start in range(0, len(order), 32):
            chunk = order[start : start + 32]
            inputs, widths = batch_inputs([fields[i] for i in chunk])
            frames = frames_for(widths)
            logits = self.model(inputs, frames).float().numpy()
            for row, (i, count) in enumerate(zip(chunk, frames.tolist(), strict=True)):
                out[i] = logits[row, :count]
        return out

    def decode(self, logits: np.ndarray, decoder: str = "greedy") -> Decoded:
        """Decode one field's logits with the calibrated temperature."""
        if decoder not in DECODERS:
            raise InvalidInputError(f"decoder must be one of {', '.join(DECODERS)}.")
        log_probs = F.log_softmax(torch.from_numpy(logits) / self.temperature, dim=-1).numpy()
        return DECODERS[decoder](log_probs.astype(np.float64))

    def reading_from(
        self,
        decoded: Decoded,
        prepared: FieldInput,
        *,
        layout: str,
        location: FieldLocation | None = None,
        decoder: str = "greedy",
    ) -> ChequeReading:
        """Turn a decoded field into a reading, mapping frames back to image columns."""
        if not decoded.text:
            raise NoInkError(
                "No digits found in the amount field: the box looks empty (or holds only "
                "strokes and separators). Send an image with the written amount; nothing was "
                "read, so nothing was booked."
            )
        offset = (location.box[0] if location else 0) + prepared.x_offset
        chars = tuple(
            CharReading(
                digit=c.digit,
                confidence=c.confidence,
                x_start=offset + int(c.frame_start * FRAME_STRIDE * prepared.x_scale),
                x_end=offset
                + min(
                    prepared.original_width,
                    int(np.ceil(c.frame_end * FRAME_STRIDE * prepared.x_scale)),
                ),
            )
            for c in decoded.chars
        )
        confidence = decoded.confidence
        return ChequeReading(
            amount=decoded.text,
            confidence=confidence,
            needs_review=confidence < self.review_threshold,
            review_threshold=self.review_threshold,
            characters=chars,
            layout=layout,
            field_box=location.box if location else None,
            locate_method=location.method if location else None,
            model_name=self.name,
            model_version=self.version,
            decoder=decoder,
        )

    def prepare(
        self, image: bytes | np.ndarray, layout: str = "auto", limits: ImageLimits | None = None
    ) -> tuple[FieldInput, str, FieldLocation | None]:
        """Decode and, for a whole cheque, locate and crop the amount field; then prepare it."""
        if layout not in LAYOUTS:
            raise InvalidInputError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}.")
        gray = to_gray(image, limits)
        location = None
        if layout == "cheque" or (layout == "auto" and is_whole_cheque(gray)):
            location = locate_amount_field(gray)
            x0, y0, x1, y1 = location.box
            gray = gray[y0:y1, x0:x1]
            layout = "cheque"
        else:
            layout = "field"
        height = int(self.model.config.height)
        return prepare_field(gray, height), layout, location

    def read(
        self,
        image: bytes | np.ndarray,
        *,
        layout: str = "auto",
        decoder: str = "greedy",
        limits: ImageLimits | None = None,
    ) -> ChequeReading:
        """Read the courtesy amount of one image (field or whole cheque)."""
        if decoder not in DECODERS:
            raise InvalidInputError(
                f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}."
            )
        prepared, used_layout, location = self.prepare(image, layout, limits)
        logits = self.field_logits([prepared.pixels])[0]
        decoded = self.decode(logits, decoder)
        return self.reading_from(
            decoded, prepared, layout=used_layout, location=location, decoder=decoder
        )
