"""`ChequeReader`: bad inputs get clear errors, nothing is ever invented, artifacts round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inkwell.cheques.decode import Decoded, DecodedChar
from inkwell.cheques.model import CRNN, CRNNConfig
from inkwell.cheques.preprocess import prepare_field
from inkwell.cheques.reader import ChequeReader
from inkwell.errors import InvalidImageError, InvalidInputError, ModelNotFoundError, NoInkError
from tests.harness import png

TINY = CRNNConfig(channels=(8, 8, 16, 16), hidden=16)


@pytest.fixture(scope="module")
def reader() -> ChequeReader:
    torch.manual_seed(0)
    meta = ChequeReader.build_meta(TINY, calibration={"temperature": 1.5, "review_threshold": 0.8})
    return ChequeReader(CRNN(TINY), meta, name="inkwell-cheques")


def test_non_image_bytes_are_refused(reader: ChequeReader) -> None:
    with pytest.raises(InvalidImageError, match="not a readable image"):
        reader.read(b"%PDF-1.4 this is not an image")


def test_empty_body_is_refused(reader: ChequeReader) -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        reader.read(b"")


@pytest.mark.parametrize("shade", [255, 200, 0])
def test_blank_field_is_no_ink_not_an_amount(reader: ChequeReader, shade: int) -> None:
    with pytest.raises(NoInkError, match="No ink"):
        reader.read(png(np.full((60, 240), shade, np.uint8)))


def test_blank_cheque_is_no_ink(reader: ChequeReader) -> None:
    with pytest.raises(NoInkError):
        reader.read(png(np.full((450, 1050), 240, np.uint8)))


def test_unknown_layout_is_refused(reader: ChequeReader) -> None:
    with pytest.raises(InvalidInputError, match="layout must be one of"):
        reader.read(png(np.full((60, 240), 255, np.uint8)), layout="portrait")


def test_arrays_of_the_wrong_shape_are_refused(reader: ChequeReader) -> None:
    with pytest.raises(InvalidInputError, match="shape"):
        reader.read(np.zeros((2, 3, 4, 5), np.uint8))


def test_an_empty_decoding_is_refused_never_invented(reader: ChequeReader) -> None:
    prepared = prepare_field(np.pad(np.zeros((20, 60)), 10, constant_values=1.0))
    with pytest.raises(NoInkError, match="No digits found"):
        reader.reading_from(Decoded("", (), 0.0), prepared, layout="field")


def test_character_frames_map_back_to_image_columns(reader: ChequeReader) -> None:
    gray = np.ones((64, 400), np.float32)
    gray[20:40, 50:350] = 0.0
    prepared = prepare_field(gray)  # 400 px wide at 64 high → 200 input columns, x_scale 2
    decoded = Decoded(
        "12",
        (DecodedChar("1", 0.9, 5, 8), DecodedChar("2", 0.6, 20, 22)),
        float(np.log(0.5)),
    )
    reading = reader.reading_from(decoded, prepared, layout="field")
    assert [(c.x_start, c.x_end) for c in reading.characters] == [(40, 64), (160, 176)]
    assert reading.amount == "12"
    assert reading.confidence == pytest.approx(0.5)
    assert reading.needs_review  # 0.5 < the calibrated threshold 0.8
    body = reading.to_dict()
    assert body["characters"][1] == {"digit": "2", "confidence": 0.6, "x": [160, 176]}
    json.dumps(body)


def test_rgb_arrays_and_uint8_arrays_are_accepted(reader: ChequeReader) -> None:
    rng = np.random.default_rng(0)
    gray = np.full((48, 200), 230, np.uint8)
    gray[12:36, 20:180] = rng.integers(0, 60, size=(24, 160))
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for image in (gray, rgb, png(gray)):
        try:
            reader.read(image)
        except NoInkError as exc:  # an untrained model may see no digit: still no invention
            assert "No digits found" in exc.message


def test_save_and_load_round_trip_gives_the_same_logits(
    reader: ChequeReader, tmp_path: Path
) -> None:
    reader.save(tmp_path)
    loaded = ChequeReader.from_dir(tmp_path)
    field = prepare_field(np.random.default_rng(1).random((40, 160)).astype(np.float32))
    before = reader.field_logits([field.pixels])[0]
    after = loaded.field_logits([field.pixels])[0]
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-5)
    assert loaded.review_threshold == pytest.approx(0.8)
    assert loaded.temperature == pytest.approx(1.5)


def test_loading_a_folder_without_a_cheque_model_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="inkwell cheques train"):
        ChequeReader.from_dir(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"kind": "digits"}))
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="not a cheque-amount model"):
        ChequeReader.from_dir(tmp_path)


def test_a_field_reads_the_same_alone_or_in_a_padded_batch(reader: ChequeReader) -> None:
    rng = np.random.default_rng(2)
    fields = [
        prepare_field(rng.random((40, width)).astype(np.float32)).pixels for width in (90, 200, 130)
    ]
    together = reader.field_logits(fields)
    for field, batched in zip(fields, together, strict=True):
        alone = reader.field_logits([field])[0]
        assert alone.shape == batched.shape == (-(-field.shape[1] // 4), 11)
        # the BiLSTM skips padding; only the CNN's last few columns see it (through BatchNorm)
        np.testing.assert_allclose(alone[:-6], batched[:-6], atol=0.05)
