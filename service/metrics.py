"""Every Prometheus metric the service exports, in one place (prefix `inkwell_service_`).

Each app gets its own `CollectorRegistry`, so several apps in one test process never clash.
Labels: `variant` (stable|canary) and `model_version` (the registry version that answered).

With several worker processes on one port (`inkwell service --workers N`) a scrape reaches one
of them, so the values live in prometheus_client's multiprocess files instead (the directory
in `PROMETHEUS_MULTIPROC_DIR`, fresh for each service run) and every scrape renders the sum over
the workers. Gauges then say how to combine workers: `ready` is the lowest of the live workers
(1 only when every one has a model), the `*_model_info` gauges the highest (a version served by
any live worker is 1; a swapped-out version is set to 0, since multiprocess files cannot drop a
series). Process and platform metrics are per process and left out in that mode.
"""

from __future__ import annotations

import collections
import contextlib
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from inkwell import contract

# Metric names (counters without the `_total` they are exposed with); the names other
# components read are in `inkwell.contract`, monitoring/build.py reads these too.
REQUESTS = "inkwell_service_requests"
REQUEST_DURATION = "inkwell_service_request_duration_seconds"
PREDICTIONS = "inkwell_service_predictions"
BATCH_SIZE = "inkwell_service_batch_size"
SAMPLES_ACCEPTED = "inkwell_service_samples_accepted"
SAMPLES_REJECTED = "inkwell_service_samples_rejected"
CHEQUE_SAMPLES = "inkwell_service_cheque_samples"
CHEQUE_SAMPLES_REJECTED = "inkwell_service_cheque_samples_rejected"
MODEL_RELOADS = "inkwell_service_model_reloads"
MODEL_LOAD_FAILURES = "inkwell_service_model_load_failures"
REQUESTS_SHED = "inkwell_service_requests_shed"
CHEQUE_MODEL_INFO = "inkwell_service_cheque_model_info"
LATENCY_BUCKETS = (
    0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
NO_VERSION = "none"
SHED_REASONS = ("in_flight", "queue_full", "deadline")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess metrics directory of this service run, if it has several workers."""
    return os.environ.get(MULTIPROC_ENV) or None


def forget_dead_workers(directory: str) -> None:
    """Drop the live-gauge files of workers that exited (crashed ones included)."""
    for path in os.scandir(directory):
        if not path.name.startswith("gauge_live"):
            continue
        pid = int(path.name.rsplit("_", 1)[-1].split(".", 1)[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:  # pragma: no cover - alive, another user's
            continue


class ServiceMetrics:
    """The service's metrics, registered in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        labels = ("route", "method", "status", "variant", "model_version")
        self.requests = Counter(
            REQUESTS,
            "HTTP requests by route, status, variant and model version.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            REQUEST_DURATION,
            "HTTP request latency by route, status, variant and model version.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            PREDICTIONS,
            "Predicted digits.",
            ("digit", "variant", "model_version"),
            registry=self.registry,
        )
        self.confidence = Histogram(
            contract.PREDICTION_CONFIDENCE,
            "Probability of the predicted digit.",
            ("variant", "model_version"),
            buckets=CONFIDENCE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Images per model forward pass (micro-batching at work).",
            ("variant",),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.samples_accepted = Counter(
            SAMPLES_ACCEPTED,
            "Labelled samples stored (created=false: duplicate or idempotent replay).",
            ("variant", "created"),
            registry=self.registry,
        )
        self.samples_rejected = Counter(
            SAMPLES_REJECTED,
            "Labelled sample uploads rejected, by reason (the error code).",
            ("variant", "reason"),
            registry=self.registry,
        )
        self.cheque_samples = Counter(
            CHEQUE_SAMPLES,
            "Reviewed cheque fields by outcome: accepted, quarantined, or repeat (duplicate or "
            "idempotent replay).",
            ("variant", "outcome"),
            registry=self.registry,
        )
        self.cheque_samples_rejected = Counter(
            CHEQUE_SAMPLES_REJECTED,
            "Reviewed cheque uploads rejected, by reason (the error code).",
            ("variant", "reason"),
            registry=self.registry,
        )
        self.reloads = Counter(
            MODEL_RELOADS,
            "Models loaded and swapped in (the first load included).",
            ("variant", "model_version"),
            registry=self.registry,
        )
        self.load_failures = Counter(
            MODEL_LOAD_FAILURES,
            "Failed attempts to resolve or load the model, by reason.",
            ("variant", "reason"),
            registry=self.registry,
        )
        self.model_info = Gauge(
            contract.MODEL_INFO,
            "1 for the model version being served.",
            ("variant", "model_name", "model_version"),
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            contract.READY,
            "1 when a model is loaded and predictions can be served.",
            ("variant",),
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.ready.labels(variant).set(0)
        self.shed = Counter(
            REQUESTS_SHED,
            "Requests refused with 503 to stay responsive, by reason: in_flight (over "
            "MAX_IN_FLIGHT), queue_full (over MAX_QUEUED_IMAGES), deadline (queued too long).",
            ("variant", "reason"),
            registry=self.registry,
        )
        for reason in SHED_REASONS:  # from zero, so rate() sees the first burst
            self.shed.labels(variant, reason)
        self.cheque_reads = Counter(
            f"{contract.CHEQUE_READS}_total",
            "Cheque amounts read, by whether they were flagged for human review.",
            ("variant", "model_version", "needs_review"),
            registry=self.registry,
        )
        self.cheque_reviewed = Counter(
            contract.CHEQUE_REVIEWED,
            "Readings later reviewed (an accepted cheque upload naming their reading_id), by the "
            "variant and cheque model version that read them (not this process's) and whether "
            "the amount read was exactly the reviewed one: the cheque canary's online accuracy.",
            ("variant", "model_version", "exact"),
            registry=self.registry,
        )
        self.cheque_confidence = Histogram(
            contract.CHEQUE_CONFIDENCE,
            "Calibrated confidence of each cheque amount read.",
            ("variant", "model_version"),
            buckets=CONFIDENCE_BUCKETS,
            registry=self.registry,
        )
        self.cheque_model_info = Gauge(
            CHEQUE_MODEL_INFO,
            "1 for the cheque model version being served.",
            ("variant", "model_name", "model_version"),
            registry=self.registry,
            multiprocess_mode="livemax",
        )

    def observe_request(
        self, route: str, method: str, status: int, model_version: str | None, seconds: float
    ) -> None:
        labels = (route, method, str(status), self.variant, model_version or NO_VERSION)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_predictions(
        self, digits: list[int], confidences: list[float], version: str
    ) -> None:
        if len(digits) != len(confidences):
            raise ValueError("one confidence per predicted digit")
        # One label look-up per digit seen and one for the histogram, not two per image: a
        # 256-image batch is counted in a tenth of the time.
        for digit, count in collections.Counter(digits).items():
            self.predictions.labels(str(digit), self.variant, version).inc(count)
        histogram = self.confidence.labels(self.variant, version)
        for confidence in confidences:
            histogram.observe(confidence)

    def observe_batch(self, size: int) -> None:
        self.batch_size.labels(self.variant).observe(size)

    def request_shed(self, reason: str) -> None:
        self.shed.labels(self.variant, reason).inc()

    def sample_accepted(self, created: bool) -> None:
        self.samples_accepted.labels(self.variant, str(created).lower()).inc()

    def sample_rejected(self, reason: str) -> None:
        self.samples_rejected.labels(self.variant, reason).inc()

    def cheque_sample(self, outcome: str) -> None:
        self.cheque_samples.labels(self.variant, outcome).inc()

    def cheque_reading_reviewed(self, variant: str, version: str, exact: bool) -> None:
        """A reviewed upload labelled an earlier reading (of any variant) right or wrong."""
        self.cheque_reviewed.labels(variant, version, str(exact).lower()).inc()

    def cheque_sample_rejected(self, reason: str) -> None:
        self.cheque_samples_rejected.labels(self.variant, reason).inc()

    def model_swapped(self, name: str, old: str | None, new: str) -> None:
        self.reloads.labels(self.variant, new).inc()
        # The new version's prediction series exist from zero before its first answer: a
        # counter first scraped after a burst would start at the burst's count, and rate()
        # (the canary analysis, the dashboards) would never see those predictions.
        self.confidence.labels(self.variant, new)
        for digit in range(10):
            self.predictions.labels(str(digit), self.variant, new)
        if old is not None and old != new:
            self._retire(self.model_info, name, old)
        self.model_info.labels(self.variant, name, new).set(1)
        self.ready.labels(self.variant).set(1)

    def observe_cheque(self, version: str, confidence: float, needs_review: bool) -> None:
        self.cheque_reads.labels(self.variant, version, str(needs_review).lower()).inc()
        self.cheque_confidence.labels(self.variant, version).observe(confidence)

    def cheque_model_swapped(self, name: str, old: str | None, new: str) -> None:
        if old is not None and old != new:
            self._retire(self.cheque_model_info, name, old)
        self.cheque_model_info.labels(self.variant, name, new).set(1)

    def load_failed(self, reason: str) -> None:
        self.load_failures.labels(self.variant, reason).inc()

    def _retire(self, info: Gauge, name: str, old: str) -> None:
        """The swapped-out version's info series: removed, or 0 in multiprocess files."""
        if self.multiprocess_dir is not None:
            info.labels(self.variant, name, old).set(0)
            return
        with contextlib.suppress(KeyError):
            info.remove(self.variant, name, old)

    def render(self) -> bytes:
        """The exposition text: this process's registry, or the sum over all workers."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        forget_dead_workers(self.multiprocess_dir)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=self.multiprocess_dir)
        return generate_latest(combined)

    def worker_exited(self) -> None:
        """Retire this worker's live gauges (its counters keep counting in the sum)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)
