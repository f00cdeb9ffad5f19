"""Data validation quarantines bad uploads with a reason and keeps good ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inkwell.model import DigitNet
from tests.trainer.conftest import TINY, MnistArrays, png_bytes
from trainer.validation import (
    BLANK,
    DUPLICATE,
    LABEL_CONFLICT,
    NOT_DIGIT_LIKE,
    SMUDGE,
    UNDECODABLE,
    USER_DISAGREEMENT,
    Candidate,
    DigitReference,
    ValidationRules,
    validate,
)


@pytest.fixture(scope="module")
def model(tiny_base: dict[str, torch.Tensor]) -> DigitNet:
    net = DigitNet(TINY)
    net.load_state_dict(tiny_base)
    return net.eval()


@pytest.fixture(scope="module")
def reference(model: DigitNet, mnist: MnistArrays) -> DigitReference:
    return DigitReference(model, mnist.train_images[10_000:12_000])


def cand(i: int, user: str, image: np.ndarray, label: int) -> Candidate:
    return Candidate(i, user, label, png_bytes(image), image.astype(np.uint8).tobytes())


def test_broken_blank_smudged_and_duplicate_uploads_are_quarantined(
    model: DigitNet, reference: DigitReference, mnist: MnistArrays
) -> None:
    good = [
        cand(i + 1, "alice", mnist.test_images[i], int(mnist.test_labels[i])) for i in range(10)
    ]
    blank = cand(20, "alice", np.zeros((28, 28), np.uint8), 1)
    smudge = cand(21, "alice", np.full((28, 28), 255, np.uint8), 8)
    broken = Candidate(22, "alice", 3, b"\x89PNG truncated", mnist.test_images[0].tobytes())
    short = Candidate(23, "alice", 3, good[0].image, b"\x00" * 100)
    copy_of_good = cand(24, "bob", mnist.test_images[4], int(mnist.test_labels[4]))

    report = validate(
        [*good, blank, smudge, broken, short, copy_of_good], model, reference, ValidationRules()
    )

    assert report.quarantined[20] == BLANK
    assert report.quarantined[21] == SMUDGE
    assert report.quarantined[22] == UNDECODABLE
    assert report.quarantined[23] == UNDECODABLE
    assert report.quarantined[24] == DUPLICATE
    assert set(report.accepted) <= {c.sample_id for c in good}
    assert len(report.accepted) >= 9
    assert report.counts()[BLANK] == 1


def test_duplicates_of_already_trained_samples_are_quarantined(
    model: DigitNet, reference: DigitReference, mnist: MnistArrays
) -> None:
    from trainer.validation import pixel_hash

    sample = cand(1, "carol", mnist.test_images[7], int(mnist.test_labels[7]))
    report = validate(
        [sample],
        model,
        reference,
        ValidationRules(),
        known_pixel_hashes={pixel_hash(sample.pixels)},
    )
    assert report.quarantined == {1: DUPLICATE}


def test_images_far_from_any_digit_are_quarantined(
    model: DigitNet, reference: DigitReference, mnist: MnistArrays
) -> None:
    rng = np.random.default_rng(0)
    noise = []
    for i in range(10):  # scattered specks: enough ink to pass the blank check, no strokes
        image = np.zeros((28, 28), np.uint8)
        image[rng.random((28, 28)) < 0.25] = 255
        noise.append(cand(100 + i, "eve", image, i))
    digits = [
        cand(i + 1, "alice", mnist.test_images[i], int(mnist.test_labels[i])) for i in range(20)
    ]

    report = validate([*digits, *noise], model, reference, ValidationRules())

    assert all(report.quarantined.get(c.sample_id) == NOT_DIGIT_LIKE for c in noise)
    assert sum(1 for c in digits if c.sample_id in report.accepted) >= 19


def test_a_user_with_shuffled_labels_is_quarantined_and_honest_users_are_not(
    model: DigitNet, reference: DigitReference, mnist: MnistArrays
) -> None:
    honest = [
        cand(i + 1, "alice", mnist.test_images[i], int(mnist.test_labels[i])) for i in range(40)
    ]
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(mnist.test_labels[100:140])
    poisoned = [
        cand(200 + i, "mallory", mnist.test_images[100 + i], int(label))
        for i, label in enumerate(shuffled)
    ]

    report = validate([*honest, *poisoned], model, reference, ValidationRules())

    for c in poisoned:
        assert report.quarantined[c.sample_id] in (LABEL_CONFLICT, USER_DISAGREEMENT)
    assert report.user_disagreement["mallory"] > 0.6
    assert sum(1 for c in honest if c.sample_id in report.accepted) >= 36
