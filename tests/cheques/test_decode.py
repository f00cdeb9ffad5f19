"""CTC decoding on hand-made frame scores: strings, spans, probabilities, beam vs greedy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inkwell.cheques.decode import align, beam_decode, greedy_decode, label_log_prob

B = 0  # blank


def frames(*best: int, p: float = 0.9) -> np.ndarray:
    """Log-probs where each frame puts `p` on its class and spreads the rest evenly."""
    out = np.full((len(best), 11), (1 - p) / 10)
    for t, c in enumerate(best):
        out[t, c] = p
    return np.log(out)


def cls(digit: int) -> int:
    return digit + 1


def test_greedy_merges_repeats_and_drops_blanks() -> None:
    decoded = greedy_decode(frames(B, cls(1), cls(1), B, cls(5), cls(5), cls(5), B))
    assert decoded.text == "15"
    assert [(c.frame_start, c.frame_end) for c in decoded.chars] == [(1, 3), (4, 7)]


def test_greedy_needs_a_blank_between_repeated_digits() -> None:
    assert greedy_decode(frames(cls(0), B, cls(0), cls(0), B)).text == "00"
    assert greedy_decode(frames(cls(0), cls(0), cls(0))).text == "0"


def test_greedy_of_all_blanks_is_empty() -> None:
    decoded = greedy_decode(frames(B, B, B))
    assert decoded.text == ""
    assert decoded.chars == ()
    assert decoded.confidence == pytest.approx(0.9**3)


def test_character_confidence_is_its_best_frame_probability() -> None:
    log_probs = frames(B, cls(7), cls(7), B)
    log_probs[2, cls(7)] = math.log(0.6)
    decoded = greedy_decode(log_probs)
    assert decoded.chars[0].confidence == pytest.approx(0.9)


@pytest.mark.parametrize("label", [[], [2], [3, 3], [1, 4, 4, 9]])
def test_label_log_prob_matches_torch_ctc_loss(label: list[int]) -> None:
    rng = np.random.default_rng(len(label))
    logits = torch.from_numpy(rng.normal(size=(9, 11)))
    log_probs = F.log_softmax(logits, dim=-1)
    expected = -F.ctc_loss(
        log_probs[:, None, :],
        torch.tensor([label], dtype=torch.long) if label else torch.zeros(1, 0, dtype=torch.long),
        torch.tensor([9]),
        torch.tensor([len(label)]),
        reduction="sum",
    ).item()
    assert label_log_prob(log_probs.numpy(), label) == pytest.approx(expected, abs=1e-6)


def test_probabilities_of_all_strings_sum_to_at_most_one() -> None:
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(3), size=3))  # blank and two "digits", 3 frames
    padded = np.full((3, 11), -1e9)
    padded[:, :3] = log_probs
    strings = [[], [1], [2], [1, 1], [1, 2], [2, 1], [2, 2]]
    strings += [[a, b, c] for a in (1, 2) for b in (1, 2) for c in (1, 2)]
    total = sum(math.exp(label_log_prob(padded, s)) for s in strings)
    assert total == pytest.approx(1.0, abs=1e-6)  # 3 frames can emit at most 3 symbols


def test_beam_finds_the_string_greedy_misses() -> None:
    # Two frames: per frame "blank" 0.4, digit 1 0.35, digit 2 0.25. Greedy picks blank-blank
    # (""), P=0.16; but "1" has P = 0.35*0.35 + 2*0.4*0.35 = 0.4025: beam search sums paths.
    probs = np.full((2, 11), 1e-9)
    probs[:, B], probs[:, cls(1)], probs[:, cls(2)] = 0.4, 0.35, 0.25
    log_probs = np.log(probs / probs.sum(axis=1, keepdims=True))
    assert greedy_decode(log_probs).text == ""
    beam = beam_decode(log_probs)
    assert beam.text == "1"
    assert beam.confidence == pytest.approx(0.4025, rel=1e-3)


def test_beam_agrees_with_greedy_on_confident_frames() -> None:
    log_probs = frames(B, cls(3), B, cls(0), cls(0), B, cls(0), B, B)
    assert beam_decode(log_probs).text == greedy_decode(log_probs).text == "300"


def test_alignment_gives_each_digit_its_frames() -> None:
    log_probs = frames(B, cls(4), cls(4), B, B, cls(2), B)
    assert align(log_probs, [cls(4), cls(2)]) == [(1, 3), (5, 6)]
