"""Pure analysis of a cheque-model canary: the services' cheque metrics in, a verdict out.

The cheque model (`inkwell-cheques`) is versioned apart from the digit model, so its canary is
judged on its own rollout: the canary service's cheque reads (labelled by the cheque model
version it served) against the stable service's. It reuses `router.analysis` (its `Sample`,
`VariantStats`, `Verdict` and the confidence check) and adds the cheque-only signals: the share
of reads flagged `needs_review`, and the share of later-reviewed readings whose amount was
exactly the reviewed one (delayed labels). No network, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from inkwell import contract
from inkwell.settings import CANARY, STABLE
from router import metrics as m
from router.analysis import (
    Check,
    Observation,
    Result,
    Sample,
    Status,
    Thresholds,
    VariantStats,
    Verdict,
    baseline,
    build_observation,
    check_confidence,
    check_errors,
    check_latency,
    wilson,
)

# Metric names the cheque analysis reads from the inference services (service/metrics.py).
CHEQUE_READS = contract.CHEQUE_READS
CHEQUE_CONFIDENCE = contract.CHEQUE_CONFIDENCE
# Readings scored by a later accepted review, by the variant/version that read them.
CHEQUE_REVIEWED = contract.CHEQUE_REVIEWED


@dataclass
class ChequeStats(VariantStats):
    """What one variant's cheque model version did: `requests` counts reads."""

    needs_review: float = 0.0

    @property
    def needs_review_rate(self) -> float | None:
        return self.needs_review / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class ChequeThresholds(Thresholds):
    """The digit thresholds plus the cheque-only margins (reads sent to review, exact amounts).

    The exact-amount check waits for `min_labels` reviewed readings of each side.
    """

    needs_review_margin: float = 0.1
    exact_amount_drop: float = 0.05


ChequeObservation = dict[tuple[str, str], ChequeStats]


def build_cheque_observation(samples: Iterable[Sample]) -> ChequeObservation:
    """Fold the services' cheque metric samples into per-variant/cheque-version stats."""
    obs: ChequeObservation = {}

    def stats(labels: Mapping[str, str]) -> ChequeStats | None:
        variant, version = labels.get("variant"), labels.get("model_version")
        if variant is None or version is None:
            return None
        return obs.setdefault((variant, version), ChequeStats())

    for s in samples:
        target = stats(s.labels)
        if target is None:
            continue
        if s.name == f"{CHEQUE_READS}_total":
            target.requests += s.value
            if s.labels.get("needs_review") == "true":
                target.needs_review += s.value
        elif s.name == f"{CHEQUE_CONFIDENCE}_sum":
            target.confidence_sum += s.value
        elif s.name == f"{CHEQUE_CONFIDENCE}_count":
            target.confidence_count += s.value
        elif s.name == f"{CHEQUE_REVIEWED}_total":
            if s.labels.get("exact") == "true":
                target.correct += s.value
            else:
                target.incorrect += s.value
    return obs


# The router's cheque-route series, read as the digit analysis reads its upstream series.
_AS_DIGIT_SERIES = {
    f"{m.CHEQUE_UPSTREAM_REQUESTS}_total": f"{m.UPSTREAM_REQUESTS}_total",
    f"{m.CHEQUE_UPSTREAM_LATENCY}_bucket": f"{m.UPSTREAM_LATENCY}_bucket",
}


def build_cheque_upstream(samples: Iterable[Sample]) -> Observation:
    """Fold the router's cheque-route requests (outcome, latency) per variant/cheque version."""
    return build_observation(
        Sample(_AS_DIGIT_SERIES[s.name], s.labels, s.value)
        for s in samples
        if s.name in _AS_DIGIT_SERIES
    )


def cheque_baseline(obs: ChequeObservation, stable_version: str | None) -> ChequeStats:
    """The stable variant's cheque stats: one version, or (None) every version stable served."""
    merged = ChequeStats()
    for (variant, version), stats in obs.items():
        if variant == STABLE and stable_version in (None, version):
            merged.requests += stats.requests
            merged.needs_review += stats.needs_review
            merged.confidence_sum += stats.confidence_sum
            merged.confidence_count += stats.confidence_count
            merged.correct += stats.correct
            merged.incorrect += stats.incorrect
    return merged


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def check_needs_review(canary: ChequeStats, stable: ChequeStats, t: ChequeThresholds) -> Check:
    """A canary that sends clearly more reads to human review than stable is worse, whatever
    its confidence says (each flagged read costs a reviewer's time)."""
    base = stable.needs_review_rate
    limit = None if base is None else min(1.0, base + t.needs_review_margin)
    rate = canary.needs_review_rate
    text = (
        f"canary needs_review rate {_pct(rate)} over {canary.requests:.0f} cheque reads vs "
        f"stable {_pct(base)} (limit {_pct(limit)})"
    )
    if limit is None or canary.requests < t.min_requests or stable.requests < t.min_requests:
        return Check("needs_review_rate", Status.NO_DATA, rate, base, limit, text)
    lower, _ = wilson(canary.needs_review, canary.requests)
    if lower > limit:
        status = Status.FAIL
    else:
        status = Status.PASS if (rate or 0.0) <= limit else Status.NO_DATA
    return Check("needs_review_rate", status, rate, base, limit, text)


def check_exact_amounts(canary: ChequeStats, stable: ChequeStats, t: ChequeThresholds) -> Check:
    """Reviews are the cheque reader's ground truth: a canary whose readings people corrected
    clearly more often than stable's is worse. Fails on evidence only (Wilson upper bound of the
    canary's exact share below stable's minus `exact_amount_drop`), after `min_labels` each."""
    c, s = canary.accuracy, stable.accuracy
    limit = None if s is None else max(0.0, s - t.exact_amount_drop)
    text = (
        f"canary exact amounts {_pct(c)} over {canary.labelled:.0f} reviewed readings vs stable "
        f"{_pct(s)} over {stable.labelled:.0f} (limit {_pct(limit)})"
    )
    if limit is None or c is None or min(canary.labelled, stable.labelled) < t.min_labels:
        return Check("exact_amount_accuracy", Status.NO_DATA, c, s, limit, text)
    _, upper = wilson(canary.correct, canary.labelled)
    within = Status.PASS if c >= limit else Status.NO_DATA  # no evidence either way: wait
    status = Status.FAIL if upper < limit else within
    return Check("exact_amount_accuracy", status, c, s, limit, text)


def analyse_cheques(
    step: ChequeObservation,
    rollout: ChequeObservation,
    *,
    stable_version: str | None,
    canary_version: str,
    thresholds: ChequeThresholds,
    upstream: tuple[Observation, Observation] | None = None,
) -> Verdict:
    """Compare the cheque canary with stable (windows as in `router.analysis.analyse`).

    Reviews arrive late, so exact amounts are judged over the whole `rollout` window.
    `upstream` (step, rollout) holds the router's cheque-route requests: the digit error-rate
    and latency checks, per cheque version; None leaves them out (no router metrics).
    """
    t = thresholds
    canary = step.get((CANARY, canary_version), ChequeStats())
    stable = cheque_baseline(step, stable_version)
    if stable.requests < t.min_requests:  # few stable reads at high weights: whole rollout
        stable = cheque_baseline(rollout, stable_version)
    reviewed_canary = rollout.get((CANARY, canary_version), ChequeStats())
    reviewed_stable = cheque_baseline(rollout, stable_version)
    checks = [
        check_confidence(canary, stable, t),
        check_needs_review(canary, stable, t),
        check_exact_amounts(reviewed_canary, reviewed_stable, t),
    ]
    if upstream is not None:
        checks += _upstream_checks(*upstream, stable_version, canary_version, t)
    # Like the digit analysis, missing delayed labels never hold a rollout back: only the
    # per-read checks must have data.
    waiting = [c for c in checks if c.name != "exact_amount_accuracy"]
    if any(c.status is Status.FAIL for c in checks):
        result = Result.FAIL
    elif canary.requests < t.min_requests or any(c.status is Status.NO_DATA for c in waiting):
        result = Result.INCONCLUSIVE
    else:
        result = Result.PASS
    return Verdict(result, tuple(checks), canary.requests)


def _upstream_checks(
    step: Observation,
    rollout: Observation,
    stable_version: str | None,
    canary_version: str,
    t: ChequeThresholds,
) -> tuple[Check, ...]:
    """5xx rate and tail latency of cheque-route requests, canary version against stable."""
    canary = step.of(CANARY, canary_version)
    stable = baseline(step, stable_version)
    if stable.requests < t.min_requests:
        stable = baseline(rollout, stable_version)
    return check_errors(canary, stable, t), check_latency(canary, stable, t)
