"""Evaluation metrics for amount reading (pure functions, strings and numbers only).

- string accuracy: the fraction of fields whose digit string is exactly right;
- character error rate (CER): total edit distance / total number of true digits;
- accuracy at review rate r: the lowest-confidence ``round(r * n)`` fields go to a human, and
  accuracy is measured on the fields the machine keeps (what a bank actually books);
- the model's own `needs_review` flag: how many it flagged and the accuracy of the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_REVIEW_RATES = (0.0, 0.05, 0.10)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def character_error_rate(truths: Sequence[str], predictions: Sequence[str]) -> float:
    """Sum of edit distances over the sum of true lengths (0 when nothing was expected)."""
    total = sum(len(t) for t in truths)
    errors = sum(edit_distance(t, p) for t, p in zip(truths, predictions, strict=True))
    if total == 0:
        return 0.0 if errors == 0 else float(errors)
    return errors / total


def accuracy_at_review_rate(
    truths: Sequence[str], predictions: Sequence[str], confidences: Sequence[float], rate: float
) -> float:
    """Accuracy on the fields kept after sending the `rate` least confident ones to review."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"review rate must be in [0, 1), got {rate}")
    n = len(truths)
    if n == 0:
        return 0.0
    order = sorted(range(n), key=lambda i: confidences[i])  # stable: ties keep input order
    kept = order[round(rate * n) :]
    if not kept:
        return 0.0
    return sum(truths[i] == predictions[i] for i in kept) / len(kept)


@dataclass
class EvalReport:
    """Everything `inkwell cheques eval` prints."""

    n: int
    string_accuracy: float
    cer: float
    accuracy_at_review: dict[float, float]
    flagged_rate: float  # fraction with needs_review = True
    accepted_accuracy: float  # accuracy of the fields not flagged
    unreadable: int = 0  # fields the reader refused (no ink, unreadable image)
    mistakes: list[tuple[str, str, str, float]] = field(default_factory=list)

    def to_metrics(self, prefix: str = "eval") -> dict[str, float]:
        metrics = {
            f"{prefix}_string_accuracy": self.string_accuracy,
            f"{prefix}_cer": self.cer,
            f"{prefix}_flagged_rate": self.flagged_rate,
            f"{prefix}_accepted_accuracy": self.accepted_accuracy,
            f"{prefix}_n": float(self.n),
        }
        for rate, acc in self.accuracy_at_review.items():
            metrics[f"{prefix}_accuracy_at_review_{round(100 * rate)}pct"] = acc
        return metrics


def evaluate_readings(
    names: Sequence[str],
    truths: Sequence[str],
    predictions: Sequence[str],
    confidences: Sequence[float],
    flags: Sequence[bool],
    *,
    review_rates: Sequence[float] = DEFAULT_REVIEW_RATES,
    unreadable: int = 0,
) -> EvalReport:
    """Compute the report from per-field truths, predictions, confidences and review flags."""
    n = len(truths)
    if not n == len(predictions) == len(confidences) == len(flags) == len(names):
        raise ValueError("names, truths, predictions, confidences and flags differ in length")
    correct = [t == p for t, p in zip(truths, predictions, strict=True)]
    accepted = [c for c, flag in zip(correct, flags, strict=True) if not flag]
    mistakes = [
        (names[i], truths[i], predictions[i], confidences[i]) for i in range(n) if not correct[i]
    ]
    return EvalReport(
        n=n,
        string_accuracy=sum(correct) / n if n else 0.0,
        cer=character_error_rate(truths, predictions),
        accuracy_at_review={
            rate: accuracy_at_review_rate(truths, predictions, confidences, rate)
            for rate in review_rates
        },
        flagged_rate=sum(flags) / n if n else 0.0,
        accepted_accuracy=sum(accepted) / len(accepted) if accepted else 0.0,
        unreadable=unreadable,
        mistakes=sorted(mistakes, key=lambda m: m[3]),
    )
