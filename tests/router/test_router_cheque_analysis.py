"""Cheque canary analysis: the services' real cheque metrics folded and judged per version."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from router.analysis import Result, Sample, Status
from router.cheque_analysis import (
    ChequeStats,
    ChequeThresholds,
    analyse_cheques,
    build_cheque_observation,
    build_cheque_upstream,
)
from router.metrics import RouterMetrics
from service.metrics import ServiceMetrics

T = ChequeThresholds(min_requests=20, needs_review_margin=0.1)


def reads(metrics: ServiceMetrics, version: str, n: int, flagged: int, confidence: float) -> None:
    for i in range(n):
        metrics.observe_cheque(version, confidence, needs_review=i < flagged)


def samples(*services: ServiceMetrics | RouterMetrics) -> list[Sample]:
    """What a scrape of the services' /metrics gives the analysis (all since start)."""
    out = []
    for service in services:
        text = service.exposition() if isinstance(service, RouterMetrics) else service.render()
        for family in text_string_to_metric_families(text.decode()):
            out += [Sample(s.name, s.labels, float(s.value)) for s in family.samples]
    return out


def verdict_for(canary: ServiceMetrics, stable: ServiceMetrics):
    obs = build_cheque_observation(samples(canary, stable))
    return analyse_cheques(obs, obs, stable_version="1", canary_version="2", thresholds=T)


def check(verdict, name):
    return next(c for c in verdict.checks if c.name == name)


def test_cheque_reads_are_folded_per_variant_and_cheque_version():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 40, flagged=10, confidence=0.8)
    reads(stable, "1", 60, flagged=6, confidence=0.9)
    obs = build_cheque_observation(samples(canary, stable))
    assert obs[("canary", "2")].requests == 40
    assert obs[("canary", "2")].needs_review_rate == 0.25
    assert obs[("stable", "1")].mean_confidence is not None
    assert abs(obs[("stable", "1")].mean_confidence - 0.9) < 1e-9


def test_healthy_cheque_canary_passes():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 100, flagged=10, confidence=0.9)
    reads(stable, "1", 300, flagged=30, confidence=0.9)
    verdict = verdict_for(canary, stable)
    assert verdict.result is Result.PASS, verdict.reason()


def test_cheque_canary_flagging_far_more_reads_for_review_fails():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 100, flagged=60, confidence=0.9)
    reads(stable, "1", 300, flagged=30, confidence=0.9)
    verdict = verdict_for(canary, stable)
    assert verdict.result is Result.FAIL
    assert check(verdict, "needs_review_rate").status is Status.FAIL
    assert "needs_review" in verdict.reason()


def test_less_confident_cheque_canary_fails():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 100, flagged=10, confidence=0.5)
    reads(stable, "1", 300, flagged=30, confidence=0.95)
    verdict = verdict_for(canary, stable)
    assert check(verdict, "mean_confidence").status is Status.FAIL


def test_cheque_canary_waits_below_the_minimum_reads():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 19, flagged=19, confidence=0.1)
    reads(stable, "1", 300, flagged=30, confidence=0.95)
    verdict = verdict_for(canary, stable)
    assert verdict.result is Result.INCONCLUSIVE
    assert check(verdict, "needs_review_rate").status is Status.NO_DATA


def test_a_digit_canary_serving_the_stable_cheque_version_is_not_the_cheque_canary():
    # the canary service falls back to inkwell-cheques@stable: its reads are stable's version
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "1", 100, flagged=90, confidence=0.2)
    reads(stable, "1", 300, flagged=30, confidence=0.95)
    verdict = verdict_for(canary, stable)
    assert verdict.result is Result.INCONCLUSIVE
    assert verdict.canary_requests == 0


def test_needs_review_rate_of_no_reads_is_unknown():
    assert ChequeStats().needs_review_rate is None


def reviews(metrics: ServiceMetrics, variant: str, version: str, n: int, exact: int) -> None:
    """`n` readings of `variant`/`version` reviewed (on whichever service took the upload)."""
    for i in range(n):
        metrics.cheque_reading_reviewed(variant, version, exact=i < exact)


def test_cheque_canary_whose_readings_reviews_correct_far_more_often_fails():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 100, flagged=10, confidence=0.9)
    reads(stable, "1", 300, flagged=30, confidence=0.9)
    reviews(stable, "canary", "2", 40, exact=24)  # reviews land on stable, scored to canary
    reviews(stable, "stable", "1", 100, exact=95)
    verdict = verdict_for(canary, stable)
    assert verdict.result is Result.FAIL
    assert check(verdict, "exact_amount_accuracy").status is Status.FAIL
    assert "exact amounts" in verdict.reason()


def test_cheque_canary_as_exact_as_stable_passes_the_review_check():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 100, flagged=10, confidence=0.9)
    reads(stable, "1", 300, flagged=30, confidence=0.9)
    reviews(stable, "canary", "2", 40, exact=37)
    reviews(stable, "stable", "1", 100, exact=95)
    verdict = verdict_for(canary, stable)
    assert check(verdict, "exact_amount_accuracy").status is Status.PASS
    assert verdict.result is Result.PASS, verdict.reason()


def test_a_few_wrong_reviewed_readings_are_not_evidence_yet():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 100, flagged=10, confidence=0.9)
    reads(stable, "1", 300, flagged=30, confidence=0.9)
    reviews(stable, "canary", "2", 19, exact=0)  # below min_labels
    reviews(stable, "stable", "1", 100, exact=95)
    verdict = verdict_for(canary, stable)
    assert check(verdict, "exact_amount_accuracy").status is Status.NO_DATA
    assert verdict.result is Result.PASS, verdict.reason()  # no reviews never hold it back


def test_three_wrong_readings_in_twenty_are_within_the_uncertainty():
    canary, stable = ServiceMetrics("canary"), ServiceMetrics("stable")
    reads(canary, "2", 100, flagged=10, confidence=0.9)
    reads(stable, "1", 300, flagged=30, confidence=0.9)
    reviews(stable, "canary", "2", 20, exact=17)  # 85 % < limit 90 %, but not for sure
    reviews(stable, "stable", "1", 100, exact=95)
    verdict = verdict_for(canary, stable)
    assert check(verdict, "exact_amount_accuracy").status is Status.NO_DATA
    assert verdict.result is not Result.FAIL


def cheque_requests(router: RouterMetrics, variant: str, version: str, n: int, seconds: float):
    for _ in range(n):
        router.observe_cheque_upstream(variant, version, "ok", "live", seconds)


def test_cheque_canary_slower_on_cheque_requests_fails_the_latency_check():
    canary, stable, router = ServiceMetrics("canary"), ServiceMetrics("stable"), RouterMetrics()
    reads(canary, "2", 100, flagged=10, confidence=0.9)
    reads(stable, "1", 300, flagged=30, confidence=0.9)
    cheque_requests(router, "canary", "2", 100, seconds=2.0)
    cheque_requests(router, "stable", "1", 300, seconds=0.1)
    router.observe_upstream("canary", "2", "ok", "live", 0.01)  # a fast digit request: not seen
    scraped = samples(canary, stable) + samples(router)
    obs, upstream = build_cheque_observation(scraped), build_cheque_upstream(scraped)
    verdict = analyse_cheques(
        obs,
        obs,
        stable_version="1",
        canary_version="2",
        thresholds=T,
        upstream=(upstream, upstream),
    )
    assert check(verdict, "p95_latency").status is Status.FAIL
    assert check(verdict, "error_rate").status is Status.PASS
    assert verdict.result is Result.FAIL
