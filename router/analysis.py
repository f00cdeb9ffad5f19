"""Pure canary analysis: metric samples in, a verdict out. No network, no clock.

Both metric sources (Prometheus's PromQL API and scraping `/metrics` directly) reduce a time
window to the same list of `Sample`s (increase of each counter/histogram series over the
window), so the comparison of the canary against the stable baseline is one piece of code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from inkwell import contract
from inkwell.settings import CANARY, STABLE
from router import metrics as m

# Metric names the analysis reads from the inference service (issue 3's `/metrics`).
SERVICE_CONFIDENCE = contract.PREDICTION_CONFIDENCE


@dataclass(frozen=True)
class Sample:
    """One series' increase over the window (or, for gauges, its current value)."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass
class VariantStats:
    """What one variant/version did during the window."""

    requests: float = 0.0
    errors: float = 0.0
    client_errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    confidence_sum: float = 0.0
    confidence_count: float = 0.0
    correct: float = 0.0
    incorrect: float = 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def client_error_rate(self) -> float | None:
        return self.client_errors / self.requests if self.requests > 0 else None

    @property
    def latency_count(self) -> float:
        return self.buckets.get(math.inf, 0.0)

    @property
    def p95(self) -> float | None:
        return quantile(0.95, self.buckets)

    @property
    def mean_confidence(self) -> float | None:
        if self.confidence_count <= 0:
            return None
        return self.confidence_sum / self.confidence_count

    @property
    def labelled(self) -> float:
        return self.correct + self.incorrect

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled > 0 else None


@dataclass
class Observation:
    """All variants' stats over one window, plus shadow agreement and breaker state."""

    stats: dict[tuple[str, str], VariantStats] = field(default_factory=dict)
    shadow: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # [agree, disagree]
    breaker_open: dict[str, bool] = field(default_factory=dict)

    def of(self, variant: str, version: str | None) -> VariantStats:
        return self.stats.get((variant, version or ""), VariantStats())

    def agreement(self, stable_version: str | None, canary_version: str) -> tuple[float, float]:
        agree, disagree = self.shadow.get((stable_version or "", canary_version), [0.0, 0.0])
        if stable_version is None:  # any baseline version
            agree = sum(v[0] for k, v in self.shadow.items() if k[1] == canary_version)
            disagree = sum(v[1] for k, v in self.shadow.items() if k[1] == canary_version)
        return agree, agree + disagree


def _le(value: str) -> float:
    return math.inf if value in ("+Inf", "Inf", "inf") else float(value)


def build_observation(samples: Iterable[Sample]) -> Observation:
    """Fold metric samples (router and services) into per-variant/version stats."""
    obs = Observation()

    def stats(labels: Mapping[str, str]) -> VariantStats | None:
        variant = labels.get("variant")
        version = labels.get("model_version")
        if variant is None or version is None:
            return None
        return obs.stats.setdefault((variant, version), VariantStats())

    for s in samples:
        name = s.name
        if name == f"{m.UPSTREAM_REQUESTS}_total":
            if s.labels.get("mode") == m.OVERRIDE:
                continue  # testers' requests say nothing about what users get
            target = stats(s.labels)
            if target is not None:
                target.requests += s.value
                if s.labels.get("outcome") in m.FAILED_OUTCOMES:
                    target.errors += s.value
                elif s.labels.get("outcome") == m.CLIENT_ERROR:
                    target.client_errors += s.value
        elif name == f"{m.UPSTREAM_LATENCY}_bucket":
            target = stats(s.labels)
            if target is not None and "le" in s.labels:
                le = _le(s.labels["le"])
                target.buckets[le] = target.buckets.get(le, 0.0) + s.value
        elif name == f"{SERVICE_CONFIDENCE}_sum":
            target = stats(s.labels)
            if target is not None:
                target.confidence_sum += s.value
        elif name == f"{SERVICE_CONFIDENCE}_count":
            target = stats(s.labels)
            if target is not None:
                target.confidence_count += s.value
        elif name == f"{m.ONLINE_PREDICTIONS}_total":
            target = stats(s.labels)
            if target is not None:
                if s.labels.get("correct") == "true":
                    target.correct += s.value
                else:
                    target.incorrect += s.value
        elif name == f"{m.SHADOW_COMPARISONS}_total":
            key = (s.labels.get("stable_version", ""), s.labels.get("canary_version", ""))
            pair = obs.shadow.setdefault(key, [0.0, 0.0])
            pair[0 if s.labels.get("agree") == "true" else 1] += s.value
        elif name == m.CIRCUIT_OPEN:
            variant = s.labels.get("variant", "")
            obs.breaker_open[variant] = obs.breaker_open.get(variant, False) or s.value > 0
    return obs


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated like PromQL's
    `histogram_quantile` (linear within the bucket; the +Inf bucket returns its lower edge)."""
    if not buckets or math.inf not in buckets:
        return None
    edges = sorted(buckets)
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    previous_edge, previous_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if edge == math.inf:
                return previous_edge
            if count == previous_count:
                return edge
            return previous_edge + (edge - previous_edge) * (rank - previous_count) / (
                count - previous_count
            )
        previous_edge, previous_count = edge, count
    return previous_edge


def share_above(x: float, buckets: Mapping[float, float]) -> float:
    """How many observations of a cumulative histogram exceed `x` (linear within a bucket)."""
    total = buckets.get(math.inf, 0.0)
    previous_edge, previous_count = 0.0, 0.0
    for edge in sorted(buckets):
        count = buckets[edge]
        if edge >= x:
            if edge == math.inf:
                return total - previous_count
            fraction = (x - previous_edge) / (edge - previous_edge) if edge > previous_edge else 1
            return total - (previous_count + (count - previous_count) * fraction)
        previous_edge, previous_count = edge, count
    return 0.0


ONE_SIDED_95_Z = 1.645


def wilson(successes: float, n: float, z: float = ONE_SIDED_95_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (one-sided 95 % bounds with the default z)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# ---- the verdict ----------------------------------------------------------------------------


class Result(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no_data"


@dataclass(frozen=True)
class Thresholds:
    """How much worse than stable the canary may be (see RouterSettings for meanings)."""

    min_requests: int = 20
    max_error_rate: float = 0.05
    error_rate_margin: float = 0.02
    client_error_margin: float = 0.05
    latency_ratio: float = 1.5
    latency_margin_ms: float = 25.0
    max_p95_ms: float | None = None
    confidence_drop: float = 0.1
    min_agreement: float = 0.9
    min_shadow: int = 20
    accuracy_drop: float = 0.05
    min_labels: int = 20

    @classmethod
    def from_settings(cls, settings: Any) -> Thresholds:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    canary: float | None
    baseline: float | None
    limit: float | None
    detail: str


@dataclass(frozen=True)
class Verdict:
    result: Result
    checks: tuple[Check, ...]
    canary_requests: float

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.FAIL]

    def reason(self) -> str:
        """One line for a human: what failed, or why we wait."""
        if self.result is Result.FAIL:
            return "; ".join(c.detail for c in self.failures)
        if self.result is Result.INCONCLUSIVE:
            waiting = [c.detail for c in self.checks if c.status is Status.NO_DATA]
            return "waiting for data: " + "; ".join(waiting)
        return "all checks passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": str(self.result),
            "reason": self.reason(),
            "canary_requests": self.canary_requests,
            "checks": [{**asdict(c), "status": str(c.status)} for c in self.checks],
        }


def _fmt(value: float | None, scale: float = 100.0, unit: str = "%") -> str:
    return "n/a" if value is None else f"{value * scale:.1f}{unit}"


def _judge(bad_for_sure: bool, good: bool) -> Status:
    """Fail on evidence (a confidence bound past the limit), pass when the estimate is within
    it, and keep counting while the samples cannot tell (the estimate is past the limit by less
    than its uncertainty: one error in 30 requests must not roll a canary back)."""
    if bad_for_sure:
        return Status.FAIL
    return Status.PASS if good else Status.NO_DATA


def check_errors(canary: VariantStats, stable: VariantStats, t: Thresholds) -> Check:
    base = stable.error_rate or 0.0
    limit = base + t.error_rate_margin
    if base < t.max_error_rate:  # an absolute ceiling, unless stable itself is already above it
        limit = min(limit, t.max_error_rate)
    rate = canary.error_rate
    text = (
        f"canary error rate {_fmt(rate)} over {canary.requests:.0f} requests vs stable "
        f"{_fmt(stable.error_rate)} (limit {_fmt(limit)})"
    )
    if canary.requests < t.min_requests:
        return Check("error_rate", Status.NO_DATA, rate, stable.error_rate, limit, text)
    lower, _ = wilson(canary.errors, canary.requests)
    status = _judge(lower > limit, (rate or 0.0) <= limit)
    return Check("error_rate", status, rate, stable.error_rate, limit, text)


def check_client_errors(canary: VariantStats, stable: VariantStats, t: Thresholds) -> Check:
    """4xx answers are passed to the user, not retried: a canary that rejects far more
    requests than stable (new preprocessing refusing good images, a key misconfigured) is bad."""
    base = stable.client_error_rate or 0.0
    limit = min(1.0, base + t.client_error_margin)
    rate = canary.client_error_rate
    text = (
        f"canary 4xx rate {_fmt(rate)} vs stable {_fmt(stable.client_error_rate)} "
        f"(limit {_fmt(limit)})"
    )
    if canary.requests < t.min_requests:
        return Check(
            "client_error_rate", Status.NO_DATA, rate, stable.client_error_rate, limit, text
        )
    lower, _ = wilson(canary.client_errors, canary.requests)
    status = _judge(lower > limit, (rate or 0.0) <= limit)
    return Check("client_error_rate", status, rate, stable.client_error_rate, limit, text)


def check_latency(canary: VariantStats, stable: VariantStats, t: Thresholds) -> Check:
    c95, s95 = canary.p95, stable.p95
    limit: float | None = None
    if s95 is not None:
        limit = s95 * t.latency_ratio + t.latency_margin_ms / 1000
    if t.max_p95_ms is not None:
        ceiling = t.max_p95_ms / 1000
        limit = ceiling if limit is None else min(limit, ceiling)
    text = (
        f"canary p95 {_fmt(c95, 1000, ' ms')} vs stable {_fmt(s95, 1000, ' ms')} "
        f"(limit {_fmt(limit, 1000, ' ms')})"
    )
    baseline = stable.latency_count >= t.min_requests or t.max_p95_ms is not None
    enough = canary.latency_count >= t.min_requests and baseline
    if not enough or c95 is None or limit is None:
        return Check("p95_latency", Status.NO_DATA, c95, s95, limit, text)
    # p95 > limit means more than 5 % of requests are slower than the limit: the evidence is
    # the lower confidence bound of that share being above 5 %
    slow = share_above(limit, canary.buckets)
    lower, _ = wilson(slow, canary.latency_count)
    status = _judge(lower > 0.05, c95 <= limit)
    return Check("p95_latency", status, c95, s95, limit, text)


def check_confidence(canary: VariantStats, stable: VariantStats, t: Thresholds) -> Check:
    c, s = canary.mean_confidence, stable.mean_confidence
    limit = None if s is None else s - t.confidence_drop
    text = f"canary mean confidence {_fmt(c)} vs stable {_fmt(s)} (limit {_fmt(limit)})"
    if c is not None and math.isnan(c) and canary.confidence_count >= t.min_requests:
        text = "canary confidences are not numbers (the model outputs NaN)"
        return Check("mean_confidence", Status.FAIL, None, s, limit, text)
    if (
        c is None
        or limit is None
        or canary.confidence_count < t.min_requests
        or stable.confidence_count < t.min_requests
    ):
        return Check("mean_confidence", Status.NO_DATA, c, s, limit, text)
    return Check("mean_confidence", Status.FAIL if c < limit else Status.PASS, c, s, limit, text)


def check_agreement(agree: float, pairs: float, t: Thresholds) -> Check:
    rate = agree / pairs if pairs > 0 else None
    text = f"shadow agreement {_fmt(rate)} over {pairs:.0f} pairs (limit {_fmt(t.min_agreement)})"
    if pairs < t.min_shadow or rate is None:
        return Check("shadow_agreement", Status.NO_DATA, rate, None, t.min_agreement, text)
    _, upper = wilson(agree, pairs)
    status = _judge(upper < t.min_agreement, rate >= t.min_agreement)
    return Check("shadow_agreement", status, rate, None, t.min_agreement, text)


def check_accuracy(canary: VariantStats, stable: VariantStats, t: Thresholds) -> Check:
    c, s = canary.accuracy, stable.accuracy
    limit = None if s is None else s - t.accuracy_drop
    text = (
        f"canary online accuracy {_fmt(c)} over {canary.labelled:.0f} labels vs stable "
        f"{_fmt(s)} over {stable.labelled:.0f} (limit {_fmt(limit)})"
    )
    if (
        limit is None
        or stable.labelled < t.min_labels
        or c is None
        or canary.labelled < t.min_labels
    ):
        return Check("online_accuracy", Status.NO_DATA, c, s, limit, text)
    # The canary fails on evidence only: the one-sided 95 % upper bound of its accuracy is
    # below the limit. A point estimate would roll back one canary in eight that is exactly as
    # good as a 97 % stable at 20 labels (2 or more errors in 20).
    _, upper = wilson(canary.correct, canary.labelled)
    return Check("online_accuracy", _judge(upper < limit, c >= limit), c, s, limit, text)


def analyse(
    step: Observation,
    rollout: Observation,
    *,
    stable_version: str | None,
    canary_version: str,
    thresholds: Thresholds,
) -> Verdict:
    """Compare the canary against the stable baseline.

    `step` covers the current step (error rate, latency, confidence reflect the current load);
    `rollout` covers the whole rollout (shadow agreement and delayed labels accumulate slowly).
    The canary fails on clear evidence at any time; it passes only with enough traffic.
    """
    t = thresholds
    canary = step.of(CANARY, canary_version)
    stable = baseline(step, stable_version)
    if stable.requests < t.min_requests:
        # At high weights stable answers few requests in the step (none at 100 %): judge the
        # canary against what stable did over the whole rollout instead.
        stable = baseline(rollout, stable_version)
    checks = [
        check_errors(canary, stable, t),
        check_client_errors(canary, stable, t),
        check_latency(canary, stable, t),
        check_confidence(canary, stable, t),
        check_agreement(*rollout.agreement(stable_version, canary_version), t),
        check_accuracy(rollout.of(CANARY, canary_version), baseline(rollout, stable_version), t),
    ]
    if step.breaker_open.get(CANARY):
        checks.append(
            Check(
                "circuit_breaker",
                Status.FAIL,
                1.0,
                None,
                0.0,
                "the canary's circuit breaker is open (it kept failing)",
            )
        )
    if any(c.status is Status.FAIL for c in checks):
        result = Result.FAIL
    elif canary.requests < t.min_requests or any(
        c.status is Status.NO_DATA for c in checks if c.name in ("error_rate", "p95_latency")
    ):
        result = Result.INCONCLUSIVE
    else:
        result = Result.PASS
    return Verdict(result, tuple(checks), canary.requests)


def baseline(obs: Observation, stable_version: str | None) -> VariantStats:
    """The stable variant's stats: one version, or (None) everything stable answered."""
    if stable_version is not None:
        return obs.of(STABLE, stable_version)
    merged = VariantStats()
    for (variant, _), stats in obs.stats.items():
        if variant == STABLE:
            _merge(merged, stats)
    return merged


def _merge(into: VariantStats, other: VariantStats) -> None:
    into.requests += other.requests
    into.errors += other.errors
    into.client_errors += other.client_errors
    for le, count in other.buckets.items():
        into.buckets[le] = into.buckets.get(le, 0.0) + count
    into.confidence_sum += other.confidence_sum
    into.confidence_count += other.confidence_count
    into.correct += other.correct
    into.incorrect += other.incorrect
