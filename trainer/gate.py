"""The gate: may a candidate become `canary`? Pure comparison of evaluations against thresholds.

A candidate passes when, compared with the current `stable` model,
- its accuracy on the MNIST test set drops by at most `max_old_drop_pp` percentage points;
- its accuracy on the held-out part of the new users' samples drops by at most
  `max_new_drop_pp` (0: must not fall) — skipped, with a note, when fewer than `min_holdout`
  samples were held out;
- no digit class on the MNIST test set drops by more than `max_class_drop_pp`;
- its MNIST test accuracy is at most `max_drift_pp` below the base version its lineage started
  from, so small drops cannot add up over a chain of promoted canaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inkwell.training import EvalResult

PASSED = "passed"
REJECTED = "rejected"


@dataclass(frozen=True)
class GateThresholds:
    """Allowed drops in percentage points (from `TrainerSettings`)."""

    max_old_drop_pp: float = 0.3
    max_new_drop_pp: float = 0.0
    max_class_drop_pp: float = 1.0
    min_holdout: int = 5
    max_drift_pp: float | None = 0.3


@dataclass
class GateDecision:
    """The verdict, every reason for a rejection, and the numbers it rests on."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return PASSED if self.passed else REJECTED

    def tags(self) -> dict[str, str]:
        """Version tags recording the decision (`validation_status` and its reasons)."""
        return {
            "validation_status": self.status,
            "validation_reasons": "; ".join(self.reasons) or "all checks passed",
            "validation_notes": "; ".join(self.notes) or "-",
            **{f"gate.{k}": f"{v:.6g}" for k, v in self.metrics.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reasons": self.reasons,
            "notes": self.notes,
            "metrics": self.metrics,
        }


def _pp(value: float) -> float:
    return 100.0 * value


def decide(
    *,
    stable_old: EvalResult,
    candidate_old: EvalResult,
    stable_new: EvalResult,
    candidate_new: EvalResult,
    thresholds: GateThresholds,
    base_old_accuracy: float | None = None,
) -> GateDecision:
    """Compare candidate and stable on old (MNIST test) and new (held-out uploads) data, and
    the candidate with the lineage's base version (`base_old_accuracy`) when given."""
    decision = GateDecision(passed=True)
    if base_old_accuracy is not None:
        drift = _pp(base_old_accuracy - candidate_old.accuracy)
        decision.metrics["base_old_accuracy"] = base_old_accuracy
        decision.metrics["drift_pp"] = drift
        if thresholds.max_drift_pp is not None and drift > thresholds.max_drift_pp:
            decision.reasons.append(
                f"MNIST test accuracy is {drift:.2f} pp below the base version's "
                f"({_pp(base_old_accuracy):.2f} %), limit {thresholds.max_drift_pp:g} pp"
            )
    old_drop = _pp(stable_old.accuracy - candidate_old.accuracy)
    decision.metrics.update(
        {
            "stable_old_accuracy": stable_old.accuracy,
            "candidate_old_accuracy": candidate_old.accuracy,
            "old_drop_pp": old_drop,
        }
    )
    if old_drop > thresholds.max_old_drop_pp:
        decision.reasons.append(
            f"MNIST test accuracy fell {old_drop:.2f} pp "
            f"({_pp(stable_old.accuracy):.2f} -> {_pp(candidate_old.accuracy):.2f} %), "
            f"limit {thresholds.max_old_drop_pp:g} pp"
        )
    worst_class, worst_drop = -1, float("-inf")
    for digit, (before, after) in enumerate(
        zip(stable_old.per_class, candidate_old.per_class, strict=True)
    ):
        drop = _pp(before - after)
        if drop > worst_drop:
            worst_class, worst_drop = digit, drop
        if drop > thresholds.max_class_drop_pp:
            decision.reasons.append(
                f"digit {digit} accuracy fell {drop:.2f} pp, limit "
                f"{thresholds.max_class_drop_pp:g} pp"
            )
    decision.metrics["worst_class"] = float(worst_class)
    decision.metrics["worst_class_drop_pp"] = worst_drop
    decision.metrics["holdout_size"] = float(candidate_new.n)
    if candidate_new.n < thresholds.min_holdout:
        decision.notes.append(
            f"only {candidate_new.n} held-out new samples (< {thresholds.min_holdout}): "
            "new-sample check skipped"
        )
    else:
        new_drop = _pp(stable_new.accuracy - candidate_new.accuracy)
        decision.metrics.update(
            {
                "stable_new_accuracy": stable_new.accuracy,
                "candidate_new_accuracy": candidate_new.accuracy,
                "new_drop_pp": new_drop,
            }
        )
        if new_drop > thresholds.max_new_drop_pp:
            decision.reasons.append(
                f"held-out new-sample accuracy fell {new_drop:.2f} pp "
                f"({_pp(stable_new.accuracy):.2f} -> {_pp(candidate_new.accuracy):.2f} %), "
                f"limit {thresholds.max_new_drop_pp:g} pp"
            )
    decision.passed = not decision.reasons
    return decision
