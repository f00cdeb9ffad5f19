"""The NumPy reader of plain JSON batches: same numbers as a JSON parser, or no answer at all."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from service.pixel_json import read_image_batch


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28))


@pytest.mark.parametrize(
    "dump",
    [
        lambda doc: orjson.dumps(doc),
        lambda doc: json.dumps(doc).encode(),  # ", " separators
        lambda doc: json.dumps(doc, indent=2).encode(),
        lambda doc: b' \r\n{ "images"\t:\n' + orjson.dumps(doc["images"]) + b" }\n",
    ],
    ids=["compact", "python-default", "indented", "spaces-around"],
)
def test_plain_integer_batches_read_exactly_what_a_json_parser_reads(dump: object) -> None:
    pixels = images(5)
    pixels[0, 0, :3] = [0, 9, 255]  # one, two and three digits
    body = dump({"images": pixels.tolist()})  # type: ignore[operator]
    array = read_image_batch(body)
    assert array is not None and array.dtype == np.float32 and array.shape == (5, 28, 28)
    np.testing.assert_array_equal(array, np.asarray(orjson.loads(body)["images"], np.float32))


def image_text(value: str = "0") -> str:
    return "[" + ",".join(["[" + ",".join([value] * 28) + "]"] * 28) + "]"


IMAGE = image_text()


@pytest.mark.parametrize(
    "body",
    [
        '{"images": [' + image_text("0.5") + "]}",
        '{"images": [' + image_text("-1") + "]}",
        '{"images": [' + image_text("007") + "]}",
        '{"images": [' + image_text("1000") + "]}",
        '{"images": [' + image_text("1e2") + "]}",
        '{"images": [' + IMAGE + '], "note": 1}',
        '{"note": 1, "images": [' + IMAGE + "]}",
        '{"images": [' + IMAGE + "]} x",
        '{"images": [' + IMAGE + ",]}",
        '{"images": []}',
        '{"images": ' + IMAGE + "}",
        '{"images": [[' + IMAGE + "]]}",
        '{"images": [' + IMAGE.replace("0,0", "0 0", 1) + "]}",
        '{"images": [' + IMAGE.replace("0,0", "1 2", 1) + "]}",
        '{"images": [' + IMAGE.replace("[0,", "[0,,", 1).replace(",0]", "]", 1) + "]}",
        '{"images": [' + IMAGE.replace("[0,", "[", 1).replace("[[", "[[5", 1) + "]}",
        '{"images": [' + IMAGE[:-1] + "]}",
        '{"images": [' + IMAGE.replace("0", '"0"', 1) + "]}",
        '{"images": [' + IMAGE + "]",
        '{"images": [' + IMAGE + "]}}",
        '{"images": [' + IMAGE.replace(",", "\u00a0,", 1) + "]}",
        "",
        "{}",
    ],
)
def test_anything_but_the_plain_form_is_left_to_the_general_parser(body: str) -> None:
    assert read_image_batch(body.encode()) is None


def test_a_body_it_reads_is_valid_json_with_the_same_numbers_after_any_one_byte_change() -> None:
    body = orjson.dumps({"images": images(2, seed=1).tolist()})
    rng = np.random.default_rng(2)
    alphabet = b'0123456789[],{} \n"-.e'
    read = 0
    for _ in range(3000):
        mutated = bytearray(body)
        position = int(rng.integers(len(mutated)))
        if rng.random() < 0.5:
            mutated[position] = alphabet[int(rng.integers(len(alphabet)))]
        else:
            del mutated[position]
        array = read_image_batch(bytes(mutated))
        if array is None:
            continue
        read += 1
        parsed = np.asarray(orjson.loads(bytes(mutated))["images"], np.float32)
        np.testing.assert_array_equal(array, parsed)
    assert read > 100  # digit-for-digit swaps keep the form: the reader did answer
