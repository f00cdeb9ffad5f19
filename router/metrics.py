"""The one module that defines the router's and rollout controller's Prometheus metrics.

Each `RouterMetrics` owns its registry (one per app), so several apps in one process (tests)
do not collide. Names are `inkwell_router_*` and `inkwell_rollout_*`; `variant` is stable or
canary and `model_version` the registry version that answered.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inkwell.settings import VARIANTS

REQUESTS = "inkwell_router_requests"
REQUEST_LATENCY = "inkwell_router_request_latency_seconds"
UPSTREAM_REQUESTS = "inkwell_router_upstream_requests"
UPSTREAM_LATENCY = "inkwell_router_upstream_latency_seconds"
FALLBACKS = "inkwell_router_fallbacks"
CIRCUIT_OPEN = "inkwell_router_circuit_open"
CIRCUIT_TRIPS = "inkwell_router_circuit_trips"
SHADOW_COMPARISONS = "inkwell_router_shadow_comparisons"
SHADOW_DROPPED = "inkwell_router_shadow_dropped"
ONLINE_PREDICTIONS = "inkwell_router_online_predictions"
CANARY_WEIGHT = "inkwell_router_canary_weight"
ROLLOUT_PHASE = "inkwell_rollout_phase"
ROLLOUT_STEP = "inkwell_rollout_step"
ROLLOUT_TRANSITIONS = "inkwell_rollout_transitions"
ROLLOUT_ANALYSES = "inkwell_rollout_analyses"
# `/v1/cheques/*` model-route requests, by the cheque model version (the cheque rollout's).
CHEQUE_UPSTREAM_REQUESTS = "inkwell_router_cheque_upstream_requests"
CHEQUE_UPSTREAM_LATENCY = "inkwell_router_cheque_upstream_latency_seconds"
# The cheque rollout's gauges: second gauges, so the digit series keep their names and labels.
CHEQUE_CANARY_WEIGHT = "inkwell_router_cheque_canary_weight"
CHEQUE_ROLLOUT_PHASE = "inkwell_rollout_cheque_phase"
CHEQUE_ROLLOUT_STEP = "inkwell_rollout_cheque_step"

# Upstream outcomes; the analysis counts all but `ok` and `client_error` as errors.
OK = "ok"
CLIENT_ERROR = "client_error"
ERROR = "error"  # 5xx answer
TIMEOUT = "timeout"
UNAVAILABLE = "unavailable"  # connection refused/reset
INVALID = "invalid"  # a 2xx prediction that is unusable (e.g. NaN confidence)
OUTCOMES = (OK, CLIENT_ERROR, ERROR, TIMEOUT, UNAVAILABLE, INVALID)
FAILED_OUTCOMES = (ERROR, TIMEOUT, UNAVAILABLE, INVALID)
LIVE = "live"
SHADOW = "shadow"
OVERRIDE = "override"  # a tester's X-Inkwell-Variant request: never part of the analysis

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)


class RouterMetrics:
    """All router and rollout metrics, in one registry served at `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            REQUESTS,
            "Client requests by route, answering variant, model version and status.",
            ["route", "variant", "model_version", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            REQUEST_LATENCY,
            "Client-facing latency through the router (including any fallback).",
            ["route", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            UPSTREAM_REQUESTS,
            "Requests the router sent to a model service, by outcome and mode (live, shadow "
            "copy, or override: a tester's request, left out of the analysis).",
            ["variant", "model_version", "outcome", "mode"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            UPSTREAM_LATENCY,
            "Latency of each model-route request sent to a service (timeouts included).",
            ["variant", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            FALLBACKS,
            "Canary failures answered by stable instead, by reason.",
            ["reason"],
            registry=r,
        )
        self.circuit_open = Gauge(
            CIRCUIT_OPEN,
            "1 while the breaker refuses traffic to the variant.",
            ["variant"],
            registry=r,
        )
        self.circuit_trips = Counter(
            CIRCUIT_TRIPS, "Times the breaker opened.", ["variant"], registry=r
        )
        self.shadow_comparisons = Counter(
            SHADOW_COMPARISONS,
            "Shadow copies answered by both variants, by whether the predictions agreed.",
            ["stable_version", "canary_version", "agree"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            SHADOW_DROPPED,
            "Shadow copies not compared (canary failed, or too many in flight).",
            ["reason"],
            registry=r,
        )
        # Cheque reads are kept out of the two series above: they are labelled by the cheque
        # model's version, whose numbers would mix with the digit model's of the same value.
        self.cheque_upstream_requests = Counter(
            CHEQUE_UPSTREAM_REQUESTS,
            "Cheque-route requests the router sent to a model service, by the cheque model "
            "version that served it, outcome and mode (as inkwell_router_upstream_requests).",
            ["variant", "model_version", "outcome", "mode"],
            registry=r,
        )
        self.cheque_upstream_latency = Histogram(
            CHEQUE_UPSTREAM_LATENCY,
            "Latency of each cheque-route request sent to a service, by cheque model version.",
            ["variant", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.online_predictions = Counter(
            ONLINE_PREDICTIONS,
            "Served predictions later labelled by an upload, by whether they were correct.",
            ["variant", "model_version", "correct"],
            registry=r,
        )
        self.canary_weight = Gauge(
            CANARY_WEIGHT, "Percent of users the canary answers.", registry=r
        )
        self.rollout_phase = Gauge(
            ROLLOUT_PHASE, "1 for the rollout's current phase.", ["phase"], registry=r
        )
        self.rollout_step = Gauge(
            ROLLOUT_STEP, "Index of the current rollout step (-1 when none).", registry=r
        )
        self.cheque_canary_weight = Gauge(
            CHEQUE_CANARY_WEIGHT, "Percent of users the cheque canary reads for.", registry=r
        )
        self.cheque_rollout_phase = Gauge(
            CHEQUE_ROLLOUT_PHASE,
            "1 for the cheque rollout's current phase (absent while it is off).",
            ["phase"],
            registry=r,
        )
        self.cheque_rollout_step = Gauge(
            CHEQUE_ROLLOUT_STEP,
            "Index of the cheque rollout's current step (-1 when none).",
            registry=r,
        )
        self.rollout_transitions = Counter(
            ROLLOUT_TRANSITIONS,
            "Rollout phase changes made by this replica.",
            ["to"],
            registry=r,
        )
        self.rollout_analyses = Counter(
            ROLLOUT_ANALYSES,
            "Canary analyses made by this replica, by result.",
            ["result"],
            registry=r,
        )
        for variant in VARIANTS:
            self.circuit_open.labels(variant).set(0)
        # labelled children by label values: `labels()` costs more than the increment itself
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_request(
        self, route: str, variant: str, version: str, status: int, seconds: float
    ) -> None:
        """One client request answered (or refused) by the router."""
        self._child(self.requests, route, variant, version, str(status)).inc()
        self._child(self.request_latency, route, variant).observe(seconds)

    def observe_upstream(
        self, variant: str, version: str, outcome: str, mode: str, seconds: float
    ) -> None:
        """One request sent to a model service (override requests: counted, not timed, so
        the latency the analysis reads is users' and shadow copies' only)."""
        self._child(self.upstream_requests, variant, version, outcome, mode).inc()
        if mode != OVERRIDE:
            self._child(self.upstream_latency, variant, version).observe(seconds)

    def observe_cheque_upstream(
        self, variant: str, version: str, outcome: str, mode: str, seconds: float
    ) -> None:
        """One cheque-route request sent to a model service (as `observe_upstream`)."""
        self._child(self.cheque_upstream_requests, variant, version, outcome, mode).inc()
        if mode != OVERRIDE:
            self._child(self.cheque_upstream_latency, variant, version).observe(seconds)

    def prime(self, variant: str, version: str) -> None:
        """Create a variant/version's series at zero so Prometheus sees them from the start
        (`increase()` misses the first increments of a series born between scrapes)."""
        for outcome in OUTCOMES:
            for mode in (LIVE, SHADOW, OVERRIDE):
                self.upstream_requests.labels(variant, version, outcome, mode)
        self.upstream_latency.labels(variant, version)
        for correct in ("true", "false"):
            self.online_predictions.labels(variant, version, correct)

    def prime_shadow(self, stable_version: str, canary_version: str) -> None:
        for agree in ("true", "false"):
            self.shadow_comparisons.labels(stable_version, canary_version, agree)

    def set_phase(self, phase: str, phases: tuple[str, ...]) -> None:
        for name in phases:
            self.rollout_phase.labels(name).set(1 if name == phase else 0)

    def set_cheque_rollout(
        self, phase: str, phases: tuple[str, ...], step: int, weight: float
    ) -> None:
        """The cheque rollout's phase, step and weight (the digit gauges are left alone)."""
        for name in phases:
            self.cheque_rollout_phase.labels(name).set(1 if name == phase else 0)
        self.cheque_rollout_step.set(step)
        self.cheque_canary_weight.set(weight)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
