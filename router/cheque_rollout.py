"""The cheque model's own rollout: the digit state machine, judged on cheque metrics.

The cheque model (`inkwell-cheques`) is versioned apart from the digit model, so its `canary`
alias gets an independent rollout (own state row keyed by the model name, own steps, own
verdicts) rather than a joint one: a digit canary must not be promoted or rolled back because
of the cheque reader, nor the other way round. Everything but the verdict is
`RolloutController`; the verdict is `router.cheque_analysis.analyse_cheques` over the services'
cheque metrics (reads, confidence, needs_review, labelled by the cheque model version).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields

from router.analysis import Sample, Thresholds, Verdict
from router.cheque_analysis import (
    ChequeThresholds,
    analyse_cheques,
    build_cheque_observation,
    build_cheque_upstream,
)
from router.controller import AliasRegistry, RolloutController, ServedVersions
from router.metrics import RouterMetrics
from router.proxy import Backend
from router.settings import RouterSettings
from router.sources import MetricSource
from router.state import RolloutState, RolloutStore


def cheque_thresholds(settings: RouterSettings, needs_review_margin: float) -> ChequeThresholds:
    """The router's canary thresholds plus the cheque-only needs_review margin."""
    shared = {f.name: getattr(settings, f.name) for f in fields(Thresholds)}
    return ChequeThresholds(**shared, needs_review_margin=needs_review_margin)


class ChequeServed:
    """`ServedVersions` for cheques: the cheque version each service's readiness reports."""

    def __init__(self, backends: Callable[[str], Backend]) -> None:
        self.backends = backends

    def served_version(self, variant: str) -> str | None:
        return self.backends(variant).cheque_version


class ChequeRolloutController(RolloutController):
    """Drives the cheque model's rollout (`served` reports the cheque version per variant)."""

    def __init__(
        self,
        settings: RouterSettings,
        store: RolloutStore,
        aliases: AliasRegistry,
        source: MetricSource,
        served: ServedVersions,
        *,
        model_name: str = "inkwell-cheques",
        needs_review_margin: float = 0.1,
        on_state: Callable[[RolloutState], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Its own RouterMetrics: the phase/weight gauges and primed series of the digit
        # rollout must not be overwritten with the cheque rollout's.
        metrics = RouterMetrics()
        super().__init__(
            settings,
            store,
            aliases,
            source,
            metrics,
            served,
            on_state=on_state,
            clock=clock,
            model_name=model_name,
        )
        self.cheque_thresholds = cheque_thresholds(settings, needs_review_margin)

    def judge(
        self, step_samples: list[Sample], rollout_samples: list[Sample], canary_version: str
    ) -> Verdict:
        """Compare the canary's cheque reads (and the router's cheque requests) with stable's."""
        return analyse_cheques(
            build_cheque_observation(step_samples),
            build_cheque_observation(rollout_samples),
            stable_version=None,
            canary_version=canary_version,
            thresholds=self.cheque_thresholds,
            upstream=(build_cheque_upstream(step_samples), build_cheque_upstream(rollout_samples)),
        )
