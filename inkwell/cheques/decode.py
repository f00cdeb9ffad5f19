"""CTC decoding: per-frame log-probabilities → digit string, character spans and confidences.

- `greedy_decode`: best class per frame, repeats merged, blanks dropped (fast, the default).
- `beam_decode`: CTC prefix beam search, which sums over alignments (slightly more accurate
  when frames are ambiguous); the winning string is then force-aligned (Viterbi) to get spans.
- `label_log_prob`: log P(label | image) summed over all alignments (CTC forward algorithm);
  its exponential is the string confidence the review threshold is calibrated on.

Inputs are ``(T, 11)`` arrays of log-probabilities with the blank at class 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from inkwell.cheques.model import ALPHABET, BLANK

_NEG_INF = -1e30


@dataclass(frozen=True)
class DecodedChar:
    """One recognised digit: its frames ``[start, end)`` and confidence in [0, 1]."""

    digit: str
    confidence: float
    frame_start: int
    frame_end: int


@dataclass(frozen=True)
class Decoded:
    """A decoded string, its characters and log P(string | image)."""

    text: str
    chars: tuple[DecodedChar, ...]
    log_prob: float

    @property
    def confidence(self) -> float:
        return math.exp(self.log_prob)


def _logsumexp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    high = np.maximum(a, b)
    return np.asarray(high + np.log1p(np.exp(-np.abs(a - b))), dtype=np.float64)


def _shift(values: np.ndarray, k: int) -> np.ndarray:
    """`values` moved right by `k` places, padded with log(0), same length."""
    out = np.full_like(values, _NEG_INF)
    if k < values.size:
        out[k:] = values[: values.size - k]
    return out


def label_log_prob(log_probs: np.ndarray, label: list[int]) -> float:
    """log P(label | frames) by the CTC forward algorithm (label: class indices, no blanks)."""
    t_max = log_probs.shape[0]
    ext = np.full(2 * len(label) + 1, BLANK, dtype=np.int64)
    ext[1::2] = label
    s = ext.size
    if t_max == 0:
        return 0.0 if not label else _NEG_INF
    # a skip from s-2 to s is allowed when s is a symbol different from the one at s-2
    can_skip = np.zeros(s, dtype=bool)
    can_skip[2:] = (ext[2:] != BLANK) & (ext[2:] != ext[:-2])
    alpha = np.full(s, _NEG_INF)
    alpha[0] = log_probs[0, ext[0]]
    if s > 1:
        alpha[1] = log_probs[0, ext[1]]
    for t in range(1, t_max):
        skip = np.where(can_skip, _shift(alpha, 2), _NEG_INF)
        alpha = _logsumexp(_logsumexp(alpha, _shift(alpha, 1)), skip) + log_probs[t, ext]
    final = alpha[-1] if s == 1 else float(_logsumexp(alpha[-1:], alpha[-2:-1])[0])
    return float(max(final, _NEG_INF))


def align(log_probs: np.ndarray, label: list[int]) -> list[tuple[int, int]]:
    """Viterbi forced alignment: the frames ``[start, end)`` each label symbol occupies."""
    t_max = log_probs.shape[0]
    if not label:
        return []
    ext = np.full(2 * len(label) + 1, BLANK, dtype=np.int64)
    ext[1::2] = label
    s = ext.size
    if t_max < len(label):
        raise ValueError("fewer frames than symbols: the label cannot be aligned")
    can_skip = np.zeros(s, dtype=bool)
    can_skip[2:] = (ext[2:] != BLANK) & (ext[2:] != ext[:-2])
    score = np.full(s, _NEG_INF)
    score[0] = log_probs[0, ext[0]]
    score[1] = log_probs[0, ext[1]]
    back = np.zeros((t_max, s), dtype=np.int64)
    for t in range(1, t_max):
        candidates = np.stack(
            [score, _shift(score, 1), np.where(can_skip, _shift(score, 2), _NEG_INF)]
        )
        choice = candidates.argmax(axis=0)
        back[t] = np.arange(s) - choice
        score = candidates[choice, np.arange(s)] + log_probs[t, ext]
    state = s - 1 if s == 1 or score[-1] >= score[-2] else s - 2
    path = np.empty(t_max, dtype=np.int64)
    for t in range(t_max - 1, -1, -1):
        path[t] = state
        state = back[t, state]
    spans: list[tuple[int, int]] = []
    for k in range(len(label)):
        frames = np.flatnonzero(path == 2 * k + 1)
        spans.append((int(frames[0]), int(frames[-1]) + 1))
    return spans


def _chars(
    log_probs: np.ndarray, label: list[int], spans: list[tuple[int, int]]
) -> tuple[DecodedChar, ...]:
    return tuple(
        DecodedChar(
            digit=ALPHABET[c - 1],
            confidence=float(np.exp(log_probs[start:end, c].max())),
            frame_start=start,
            frame_end=end,
        )
        for c, (start, end) in zip(label, spans, strict=True)
    )


def greedy_decode(log_probs: np.ndarray) -> Decoded:
    """Best path decoding: argmax per frame, merge repeats, drop blanks."""
    best = log_probs.argmax(axis=1)
    label: list[int] = []
    spans: list[tuple[int, int]] = []
    previous = BLANK
    for t, c in enumerate(best.tolist()):
        if c != BLANK and c == previous:
            spans[-1] = (spans[-1][0], t + 1)
        elif c != BLANK:
            label.append(c)
            spans.append((t, t + 1))
        previous = c
    text = "".join(ALPHABET[c - 1] for c in label)
    return Decoded(text, _chars(log_probs, label, spans), label_log_prob(log_probs, label))


def _add(
    beams: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], blank: float, sym: float
) -> None:
    entry = beams.setdefault(prefix, [_NEG_INF, _NEG_INF])
    entry[0] = float(np.logaddexp(entry[0], blank))
    entry[1] = float(np.logaddexp(entry[1], sym))


def beam_decode(log_probs: np.ndarray, beam_width: int = 8) -> Decoded:
    """CTC prefix beam search (probabilities summed over alignments of each prefix)."""
    # prefix → (log P ending in blank, log P ending in its last symbol)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, _NEG_INF)}
    for t in range(log_probs.shape[0]):
        frame = log_probs[t]
        top = np.argsort(frame)[::-1][: min(beam_width, frame.size)]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (p_blank, p_sym) in beams.items():
            total = float(np.logaddexp(p_blank, p_sym))
            for c in top.tolist():
                p = float(frame[c])
                if c == BLANK:
                    _add(nxt, prefix, total + p, _NEG_INF)
                    continue
                extended = (*prefix, c)
                if prefix and prefix[-1] == c:
                    _add(nxt, extended, _NEG_INF, p_blank + p)  # a repeat needs a blank between
                    _add(nxt, prefix, _NEG_INF, p_sym + p)  # the same symbol continues
                else:
                    _add(nxt, extended, _NEG_INF, total + p)
        ranked = sorted(nxt.items(), key=lambda kv: -float(np.logaddexp(kv[1][0], kv[1][1])))
        beams = {k: (v[0], v[1]) for k, v in ranked[:beam_width]}
    best = max(beams.items(), key=lambda kv: float(np.logaddexp(kv[1][0], kv[1][1])))[0]
    label = list(best)
    spans = align(log_probs, label) if label else []
    text = "".join(ALPHABET[c - 1] for c in label)
    return Decoded(text, _chars(log_probs, label, spans), label_log_prob(log_probs, label))


DECODERS = {"greedy": greedy_decode, "beam": beam_decode}
