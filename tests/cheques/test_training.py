"""Training and calibration: the loop learns, calibration does what it promises."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from inkwell.cheques.calibrate import (
    calibrate,
    expected_calibration_error,
    review_threshold,
    sequence_confidences,
)
from inkwell.cheques.model import CRNN
from inkwell.cheques.pools import DigitPool
from inkwell.cheques.stream import FieldStream, encode_label, make_batch
from inkwell.cheques.synth import SynthConfig, generate_fields
from inkwell.cheques.train import (
    ChequeTrainConfig,
    calibrate_reader,
    fit_recogniser,
    validation_batches,
    validation_metrics,
)


def test_stream_batches_are_padded_to_the_frame_stride(train_pool: DigitPool) -> None:
    batch = next(iter(FieldStream(train_pool, seed=0, batch_size=4)))
    assert batch.inputs.shape[0] == 4 and batch.inputs.shape[1:3] == (1, 32)
    assert batch.inputs.shape[3] % 4 == 0
    assert int(batch.widths.max()) <= batch.inputs.shape[3]
    assert batch.target_lengths.tolist() == [len(label) for label in batch.labels]
    assert batch.targets.tolist() == [c for label in batch.labels for c in encode_label(label)]


def test_streams_are_reproducible(train_pool: DigitPool) -> None:
    a = next(iter(FieldStream(train_pool, seed=5, batch_size=3)))
    b = next(iter(FieldStream(train_pool, seed=5, batch_size=3)))
    assert a.labels == b.labels
    assert torch.equal(a.inputs, b.inputs)


def test_every_field_gives_the_model_enough_frames(test_pool: DigitPool) -> None:
    # CTC needs a frame per digit plus a blank between repeated digits
    batch = make_batch(list(generate_fields(test_pool, 64, seed=3)))
    frames = (batch.widths + 3) // 4
    for label, count in zip(batch.labels, frames.tolist(), strict=True):
        repeats = sum(a == b for a, b in itertools.pairwise(label))
        assert count >= len(label) + repeats


@pytest.mark.slow
def test_a_tiny_recogniser_learns_to_read_short_amounts(
    train_pool: DigitPool, val_pool: DigitPool
) -> None:
    """A seconds-scale run: 512 fields of 2-3 digits, seen ~8 times each by a tiny CRNN."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ChequeTrainConfig.tiny(
        steps=260, lr=2e-2, channels=(16, 32, 32, 48), hidden=48, min_digits=2, max_digits=3
    )
    synth = replace(cfg.synth_config(), degrade=0.3)
    train = validation_batches(train_pool, 512, seed=0, synth=synth, batch_size=16)
    val = validation_batches(val_pool, 64, seed=99, synth=synth)
    model = CRNN(cfg.model_config())
    before = validation_metrics(model, val)
    fit_recogniser(model, itertools.cycle(train), cfg)
    after = validation_metrics(model, val)
    # untrained, about nothing is right; seconds of training already read some digits and
    # make the true strings far more likely (CTC is slow to leave its all-blank start, so
    # this is a learning test, not an accuracy one: the benchmark measures accuracy)
    assert after["val_loss"] < 0.6 * before["val_loss"], (before, after)
    assert after["val_cer"] < min(0.85, before["val_cer"] - 0.05), (before, after)
    calibration, report = calibrate_reader(model, val, review_rate=0.25)
    # at least the target share goes to review; more here, since this seconds-trained model
    # doubts most readings and none below 0.5 confidence is auto-accepted
    assert report.flagged_rate >= 0.1
    assert calibration.review_threshold >= 0.5
    assert calibration.temperature > 0


def test_temperature_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    logits, texts, truths = [], [], []
    for i in range(200):
        frame = np.full((6, 11), -4.0)
        frame[:, 0] = 4.0  # blanks
        frame[2, 4] = 4.0 + rng.normal(0, 0.5)  # the digit "3", confidently
        frame[2, 0] = 0.0
        logits.append(frame)
        texts.append("3")
        truths.append("3" if i % 2 == 0 else "8")  # but right only half the time
    calibration = calibrate(logits, texts, truths, review_rate=0.1)
    raw = sequence_confidences(logits, texts, 1.0)
    cal = sequence_confidences(logits, texts, calibration.temperature)
    correct = np.array([t == p for t, p in zip(truths, texts, strict=True)], dtype=float)
    assert calibration.temperature > 1.0
    assert float(cal.mean()) < float(raw.mean())
    assert calibration.ece_after < calibration.ece_before
    assert expected_calibration_error(cal, correct) == pytest.approx(calibration.ece_after)


def test_review_threshold_sends_the_target_share_to_review() -> None:
    confidences = np.linspace(0.0, 1.0, 1001)
    threshold = review_threshold(confidences, 0.05)
    assert float((confidences < threshold).mean()) == pytest.approx(0.05, abs=0.002)
    assert review_threshold(confidences, 0.0) == 0.0


def test_synth_config_of_the_training_config() -> None:
    cfg = ChequeTrainConfig(min_digits=3, max_digits=5, blank_rate=0.1)
    assert cfg.synth_config() == SynthConfig(min_digits=3, max_digits=5, blank_rate=0.1)


def test_a_weak_model_never_auto_accepts_a_reading_it_doubts() -> None:
    # every validation reading is unsure (confidence ~0.3): the 5 % quantile is ~0.3, but a
    # reading below 0.5 must still go to a person
    frame = np.full((6, 11), -4.0)
    frame[:, 0] = 4.0
    frame[2, 4], frame[2, 5], frame[2, 0] = 1.0, 1.0, 1.0  # "3", "4" or blank: a three-way tie
    logits = [frame.copy() for _ in range(50)]
    calibration = calibrate(logits, ["3"] * 50, ["3"] * 50, review_rate=0.05)
    assert calibration.review_threshold >= 0.5
