"""The synthetic amount generator: reproducible, split-pure, and labelled the way it draws."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inkwell.cheques import render
from inkwell.cheques.amounts import WritingStyle, sample_amount, write_amount
from inkwell.cheques.pools import VAL_START, DigitPool, load_pool
from inkwell.cheques.synth import (
    SynthConfig,
    generate_fields,
    sample_field,
    synth_config,
    write_fields,
)


def test_same_seed_gives_identical_fields(test_pool: DigitPool) -> None:
    first = list(generate_fields(test_pool, 6, seed=3))
    again = list(generate_fields(test_pool, 6, seed=3))
    for a, b in zip(first, again, strict=True):
        assert a.label == b.label
        assert a.boxes == b.boxes
        assert np.array_equal(a.image, b.image)


def test_different_seeds_give_different_fields(test_pool: DigitPool) -> None:
    a = [s.label for s in generate_fields(test_pool, 8, seed=1)]
    b = [s.label for s in generate_fields(test_pool, 8, seed=2)]
    assert a != b


def test_sample_depends_only_on_its_index(test_pool: DigitPool) -> None:
    run = list(generate_fields(test_pool, 5, seed=9))
    tail = list(generate_fields(test_pool, 2, seed=9, start=3))
    assert np.array_equal(run[3].image, tail[0].image)
    assert np.array_equal(run[4].image, tail[1].image)


def test_pools_never_share_a_digit_image(
    train_pool: DigitPool, val_pool: DigitPool, test_pool: DigitPool
) -> None:
    assert test_pool.source_split == "test"
    assert train_pool.source_split == val_pool.source_split == "train"
    assert int(train_pool.source_index.max()) < VAL_START <= int(val_pool.source_index.min())
    train, val, test = (p.fingerprints() for p in (train_pool, val_pool, test_pool))
    assert not train & test
    assert not val & test
    assert not train & val


def test_test_fields_are_drawn_only_from_mnist_test_digits(
    test_pool: DigitPool, mnist_dir: Path
) -> None:
    from inkwell.data import load_split

    mnist_test = load_split("test", mnist_dir)
    for sample in generate_fields(test_pool, 10, seed=0):
        assert len(sample.sources) == len(sample.label)
        for digit, source in zip(sample.label, sample.sources, strict=True):
            assert int(mnist_test.labels[source]) == int(digit)


def test_train_fields_never_use_validation_digits(train_pool: DigitPool) -> None:
    for sample in generate_fields(train_pool, 20, seed=0):
        assert all(0 <= s < VAL_START for s in sample.sources)


def test_labels_are_digit_strings_of_two_to_seven(test_pool: DigitPool) -> None:
    for sample in generate_fields(test_pool, 40, seed=5):
        assert sample.label.isdigit()
        assert 2 <= len(sample.label) <= 7
        assert len(sample.boxes) == len(sample.label)
        h, w = sample.image.shape
        assert sample.image.dtype == np.uint8
        for x0, y0, x1, y1 in sample.boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_digit_boxes_run_left_to_right(test_pool: DigitPool) -> None:
    for sample in generate_fields(test_pool, 20, seed=6):
        centres = [(x0 + x1) / 2 for x0, _, x1, _ in sample.boxes]
        assert centres == sorted(centres)


def test_written_form_keeps_exactly_the_label_digits() -> None:
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
        written = sample_amount(rng)
        digits = "".join(str(t.digit) for t in written.tokens if t.is_digit)
        assert digits == written.label
        kinds.update(t.kind for t in written.tokens)
    assert {"digit", "dot", "comma", "dash"} <= kinds  # separators and trailers do occur


def test_separators_fall_where_writers_put_them() -> None:
    marks = {"dot": ".", "comma": ","}
    allowed = re.compile(
        r"^(1234567"  # plain
        r"|1(?P<t>[.,])234(?P=t)567"  # thousands
        r"|12345[.,]67"  # cents
        r"|12(?P<u>[.,])345(?!(?P=u))[.,]67"  # thousands and cents, with different marks
        r"|12[.,]34567)$"  # thousands with raised cents (no cents mark)
    )
    rng = np.random.default_rng(1)
    for _ in range(300):
        written = write_amount("1234567", rng)
        text = "".join(
            str(t.digit) if t.is_digit else marks.get(t.kind, "") for t in written.tokens
        )
        body = text[text.index("1") : text.rindex("7") + 1]
        assert allowed.match(body), body


def test_blank_rate_produces_fields_without_digits(test_pool: DigitPool) -> None:
    rng = np.random.default_rng(0)
    samples = [sample_field(test_pool, rng, SynthConfig(blank_rate=1.0)) for _ in range(3)]
    assert all(s.label == "" and not s.boxes for s in samples)


def test_write_fields_writes_images_labels_and_provenance(
    test_pool: DigitPool, tmp_path: Path
) -> None:
    count = write_fields(tmp_path, generate_fields(test_pool, 4, seed=2), "test", 2)
    assert count == 4
    with (tmp_path / "labels.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["filename", "digit_string"]
    assert len(rows) == 5
    for name, label in rows[1:]:
        image = Image.open(tmp_path / name)
        assert image.mode == "L"
        assert label.isdigit()
    meta = [json.loads(line) for line in (tmp_path / "meta.jsonl").read_text().splitlines()]
    assert all(m["mnist_split"] == "test" for m in meta)


def test_unknown_split_is_refused(mnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_pool("holdout", mnist_dir)


def _ink(alpha: np.ndarray) -> float:
    return float((alpha > 0.4).sum())


def test_writer_form_crosses_a_seven_and_flags_a_one(test_pool: DigitPool) -> None:
    rng = np.random.default_rng(0)
    for digit in (7, 1):
        image = test_pool.images[test_pool.pick(digit, rng)].astype(np.float32) / 255.0
        r0, r1, c0, c1 = render.ink_bbox(image, 0.1)
        crop = image[r0:r1, c0:c1]
        redrawn = render.writer_form(crop, digit, rng)
        assert _ink(redrawn) > _ink(crop) * 1.1  # a new stroke was added
        if digit == 1:
            assert redrawn.shape[1] > crop.shape[1]  # the flag reaches out to the left
            assert redrawn[: crop.shape[0] // 3, : redrawn.shape[1] - crop.shape[1]].max() > 0.4
    three = test_pool.images[test_pool.pick(3, rng)].astype(np.float32) / 255.0
    assert np.array_equal(render.writer_form(three, 3, rng), three)


def test_real_style_writes_trailing_thousands_zeros_small() -> None:
    rng = np.random.default_rng(2)
    style = WritingStyle(compact_zeros=1.0, thousands_rate=1.0, cents_rate=0.0)
    for _ in range(50):
        written = write_amount("22000", rng, style)
        digits = [t for t in written.tokens if t.is_digit]
        assert [t.scale for t in digits[:2]] == [1.0, 1.0]
        assert all(0.45 <= t.scale < 0.95 for t in digits[2:])
        assert "".join(str(t.digit) for t in digits) == "22000"


def test_amounts_without_a_zero_run_keep_full_size_digits() -> None:
    rng = np.random.default_rng(3)
    style = WritingStyle(compact_zeros=1.0)
    for label in ("12345", "1005", "7"):
        written = write_amount(label, rng, style)
        assert all(t.scale == 1.0 for t in written.tokens if t.is_digit)


def test_real_style_fields_keep_their_labels_and_boxes(test_pool: DigitPool) -> None:
    samples = list(generate_fields(test_pool, 30, seed=4, cfg=synth_config("real")))
    for sample in samples:
        assert sample.label.isdigit() and 2 <= len(sample.label) <= 7
        assert len(sample.boxes) == len(sample.label)
        centres = [(x0 + x1) / 2 for x0, _, x1, _ in sample.boxes]
        assert centres == sorted(centres)
    classic = list(generate_fields(test_pool, 30, seed=4))
    assert [s.label for s in classic] == [s.label for s in samples]  # same amounts drawn
    assert any(a.image.shape != b.image.shape for a, b in zip(classic, samples, strict=True))


def test_unknown_synth_style_is_refused() -> None:
    with pytest.raises(ValueError, match="classic, real"):
        synth_config("fancy")
