"""The trainer's Prometheus metrics (the only module that defines them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Metric names (counters without the `_total` they are exposed with); monitoring/build.py
# reads them, so this module imports nothing heavy at import time.
RETRAINS = "inkwell_trainer_retrains"
QUARANTINED = "inkwell_trainer_quarantined_samples"
TRAINED = "inkwell_trainer_trained_samples"
RETRAIN_SECONDS = "inkwell_trainer_retrain_seconds"
PENDING = "inkwell_trainer_pending_samples"
WATERMARK = "inkwell_trainer_watermark"
RUNNING = "inkwell_trainer_retrain_running"
LAST_VERSION = "inkwell_trainer_last_candidate_version"
BUFFER_SIZE = "inkwell_trainer_buffer_size"
CANDIDATE_ACCURACY = "inkwell_trainer_candidate_accuracy"
PUBLISH_FAILURE_COUNT = "inkwell_trainer_publish_failures"

PUBLISH_FAILURES = ("registry_unavailable", "disk_full")


class TrainerMetrics:
    """`inkwell_trainer_*` metrics on their own registry (one per worker)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # here, not at the top: importing the validation rules loads torch
        from trainer.validation import REASONS

        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.retrains = Counter(
            RETRAINS,
            "Retrains by outcome (passed, rejected, quarantined = every new sample was, failed, "
            "skipped).",
            ["outcome"],
            registry=r,
        )
        self.quarantined = Counter(
            QUARANTINED,
            "Samples quarantined by data validation or a rejected candidate, by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_failures = Counter(
            PUBLISH_FAILURE_COUNT,
            "Publishes that gave up, by reason (registry_unavailable: MLflow down or failing; "
            "disk_full: no space left writing artifacts). The job stays computed.",
            ["reason"],
            registry=r,
        )
        self.trained = Counter(TRAINED, "New samples used by retrains.", registry=r)
        self.seconds = Histogram(
            RETRAIN_SECONDS,
            "Wall time of a retrain, start to commit.",
            buckets=(5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800),
            registry=r,
        )
        self.pending = Gauge(PENDING, "Accepted samples waiting for a retrain.", registry=r)
        self.watermark = Gauge(WATERMARK, "Highest sample id processed by a retrain.", registry=r)
        self.running = Gauge(RUNNING, "1 while a retrain is running.", registry=r)
        self.last_version = Gauge(
            LAST_VERSION,
            "Registry version of the last candidate (passed or rejected).",
            registry=r,
        )
        self.buffer_size = Gauge(BUFFER_SIZE, "Items in the latest replay buffer.", registry=r)
        self.old_accuracy = Gauge(
            CANDIDATE_ACCURACY,
            "Accuracy of the last candidate by evaluation set (mnist_test, holdout).",
            ["dataset"],
            registry=r,
        )
        for reason in (*REASONS, "gate_rejected"):
            self.quarantined.labels(reason=reason)
        for outcome in ("passed", "rejected", "failed", "skipped"):
            self.retrains.labels(outcome=outcome)
        for reason in PUBLISH_FAILURES:
            self.publish_failures.labels(reason=reason)

    def render(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)
