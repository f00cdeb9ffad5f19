"""Calibration of the string confidence and of the review threshold, on a validation split.

The confidence of a reading is P(decoded string | image) under the CTC model with its logits
divided by a temperature. Raw network probabilities are over-confident; the temperature is
chosen on synthetic validation fields (MNIST train digits held out from training, never the
test split) to minimise the log-loss of "confidence" against "the reading was right", so that
a confidence of 0.9 means about 9 in 10 such readings are correct on that data. The
`needs_review` threshold is then the confidence quantile that sends the target fraction of
validation fields (e.g. 5 %) to a human.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from inkwell.cheques.model import ALPHABET

TEMPERATURE_GRID = tuple(float(t) for t in np.round(np.arange(0.5, 4.01, 0.1), 2))


@dataclass(frozen=True)
class Calibration:
    """What is stored with a model version: temperature and review threshold, with evidence."""

    temperature: float
    review_threshold: float
    target_review_rate: float
    val_size: int
    val_accuracy: float
    val_accepted_accuracy: float  # accuracy of validation fields not sent to review
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in self.__dict__.items()}


def sequence_confidences(
    logits: Sequence[np.ndarray], texts: Sequence[str], temperature: float = 1.0
) -> np.ndarray:
    """P(text_i | logits_i / temperature) for each field (CTC forward, batched in torch)."""
    if not logits:
        return np.zeros(0)
    frames = [lg.shape[0] for lg in logits]
    padded = np.zeros((max(frames), len(logits), logits[0].shape[1]), np.float32)
    for i, lg in enumerate(logits):
        padded[: lg.shape[0], i] = lg
    log_probs = F.log_softmax(torch.from_numpy(padded) / temperature, dim=-1)
    targets = torch.tensor([ALPHABET.index(c) + 1 for t in texts for c in t], dtype=torch.long)
    nll = F.ctc_loss(
        log_probs,
        targets,
        torch.tensor(frames),
        torch.tensor([len(t) for t in texts]),
        reduction="none",
        zero_infinity=False,
    )
    return torch.exp(-nll).clamp(0.0, 1.0).numpy().astype(np.float64)


def _log_loss(confidence: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(confidence, 1e-6, 1 - 1e-6)
    return float(-np.mean(correct * np.log(p) + (1 - correct) * np.log(1 - p)))


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    if confidence.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            gap = abs(float(correct[members].mean()) - float(confidence[members].mean()))
            error += gap * members.sum() / confidence.size
    return float(error)


def fit_temperature(
    logits: Sequence[np.ndarray],
    texts: Sequence[str],
    correct: np.ndarray,
    grid: Sequence[float] = TEMPERATURE_GRID,
) -> float:
    """The temperature on `grid` whose confidences best predict correctness (log-loss)."""
    losses = [_log_loss(sequence_confidences(logits, texts, t), correct) for t in grid]
    return float(grid[int(np.argmin(losses))])


MIN_AUTO_ACCEPT_CONFIDENCE = 0.5


def review_threshold(confidences: np.ndarray, rate: float) -> float:
    """The confidence below which about `rate` of these fields fall (0 when rate is 0)."""
    if rate <= 0 or confidences.size == 0:
        return 0.0
    return float(np.quantile(confidences, rate))


def calibrate(
    logits: Sequence[np.ndarray], texts: Sequence[str], truths: Sequence[str], review_rate: float
) -> Calibration:
    """Fit the temperature and the review threshold on validation readings."""
    correct = np.array([t == p for t, p in zip(truths, texts, strict=True)], dtype=np.float64)
    raw = sequence_confidences(logits, texts, 1.0)
    temperature = fit_temperature(logits, texts, correct)
    calibrated = sequence_confidences(logits, texts, temperature)
    # never auto-accept an amount the model itself thinks more likely wrong than right, however
    # low the validation quantile falls (a weak model's quantile can be ~0)
    threshold = max(review_threshold(calibrated, review_rate), MIN_AUTO_ACCEPT_CONFIDENCE)
    kept = calibrated >= threshold
    return Calibration(
        temperature=temperature,
        review_threshold=threshold,
        target_review_rate=review_rate,
        val_size=len(texts),
        val_accuracy=float(correct.mean()) if correct.size else 0.0,
        val_accepted_accuracy=float(correct[kept].mean()) if kept.any() else 0.0,
        ece_before=expected_calibration_error(raw, correct),
        ece_after=expected_calibration_error(calibrated, correct),
    )
