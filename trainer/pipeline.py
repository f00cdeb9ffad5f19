"""One retrain, end to end: validate → tune → train with replay → gate → register → commit.

Order of side effects, chosen so that `kill -9` at any moment is harmless:
1. a `running` job row is inserted (at most one active job per model);
2. everything is computed: validation verdicts, HPO, the candidate, its evaluations, the gate
   decision and the candidate's replay buffer; weights and buffer are written to the job's
   folder and the whole plan (`trainer.plan.JobPlan`) is stored in the job row (`computed`);
3. the version is registered with all its tags and `complete=false`, then tagged
   `complete=true`, then (only if the gate passed) given the alias `canary`;
4. one database transaction marks the samples trained/quarantined, advances the watermark and
   closes the job.
A restart (`reconcile`) closes a `running` job whose owner is gone (nothing was published, its
samples are still pending, so the work is redone) and finishes a `computed` one from its plan
(registering it if step 3 never happened, completing the tags and alias otherwise); a computed
job whose plan cannot be read is closed the same way as a running one, so it is planned again.
An owner is gone when its lease ran out (see `trainer.state`) or, on the same host, its process
no longer exists. Files the plan names are written to a temporary file, fsynced and renamed
before the job is marked `computed`, so a computed job never points at a torn file. Publishing
retries when MLflow fails, and each attempt first looks the job's version up by its
`inkwell.job_id` tag, so a version is never registered twice.

The computing itself is `trainer.stages` (pure functions on tensors); what the job's MLflow run
records is `trainer.tracking`; this module orders them and owns the side effects.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inkwell.data import load_split
from inkwell.errors import (
    ConflictError,
    DataError,
    DiskFullError,
    InkwellError,
    NothingToTrainError,
    RegistryUnavailableError,
)
from inkwell.model import DigitNet, ModelConfig
from inkwell.registry import LoadedDigitModel, Registry, VersionInfo
from inkwell.settings import CANARY, STABLE
from inkwell.store import Sample, SampleStore
from inkwell.train import peak_rss_bytes, split_tensors
from inkwell.training import Batch, EvalResult, evaluate
from trainer import tracking
from trainer.buffer import BufferItems, ReplayBuffer, make_buffer, mnist_key
from trainer.files import atomic_write
from trainer.gate import GateThresholds
from trainer.hpo import TrialParams, TrialResult
from trainer.metrics import TrainerMetrics
from trainer.plan import ALL_QUARANTINED, CandidatePlan, JobPlan, UnreadablePlanError
from trainer.settings import TrainerSettings
from trainer.stages import (
    REFERENCE_SIZE,
    Evaluation,
    HpoBudget,
    Learner,
    LearnerConfig,
    Parts,
    Tuned,
    Validated,
    candidate_memory,
    evaluate_candidate,
    per_user,
    tensors,
    tune,
    validate_samples,
)
from trainer.state import (
    COMPUTED,
    INTERRUPTED,
    RUNNING,
    JobView,
    TrainerState,
    lease_expired,
    process_alive,
)
from trainer.validation import ValidationRules

BUFFER_FILE = "replay_buffer.npz"
WEIGHTS_FILE = "candidate.pt"
log = logging.getLogger("inkwell.trainer")
GATE_REJECTED = "gate_rejected"
OLD_VALIDATION_SIZE = 1000


@dataclass
class RetrainOutcome:
    """What one retrain produced."""

    job_id: int
    status: str  # passed | rejected | quarantined (every new sample; nothing was trained)
    version: str | None
    parent_version: str | None
    run_id: str | None
    seconds: float
    quarantined: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class Retrainer:
    """Runs retrains for one model name and reconciles interrupted ones."""

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        store: SampleStore | None = None,
        registry: Registry | None = None,
        metrics: TrainerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or SampleStore.open(settings)
        self.registry = registry or Registry(settings)
        self.state = TrainerState(
            self.store, settings.model_name, lease_seconds=settings.lease_seconds
        )
        self.metrics = metrics or TrainerMetrics()
        self.lock = threading.Lock()
        self._mnist: dict[str, Batch] = {}
        self._base_accuracies: dict[str, float] = {}
        if settings.threads:
            torch.set_num_threads(settings.threads)

    # ---- inputs ----------------------------------------------------------------------------
    def mnist(self, split: str) -> Batch:
        """MNIST `train`/`test` as tensors, loaded once."""
        if split not in self._mnist:
            self._mnist[split] = split_tensors(load_split(split, settings=self.settings))
        return self._mnist[split]

    def lineage(self, info: VersionInfo) -> list[str]:
        """The version and its ancestors via `parent_version` tags, newest first."""
        return self.registry.lineage(info)

    def buffer_for(self, info: VersionInfo) -> ReplayBuffer:
        """The replay buffer recorded with a version (or, for the base model, built from MNIST)."""
        cache = self.settings.state_dir / "buffers" / f"{info.name}-v{info.version}.npz"
        buffer: ReplayBuffer | None = None
        if cache.is_file():
            try:
                buffer = ReplayBuffer.load(cache)
            except DataError:
                cache.unlink()
        if buffer is None and info.tags.get("buffer.policy"):
            folder = self.registry.download(info)
            try:
                if (folder / BUFFER_FILE).is_file():
                    buffer = ReplayBuffer.load(folder / BUFFER_FILE)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        if buffer is None:
            x, y = self.mnist("train")
            buffer = make_buffer(
                self.settings.buffer_policy, self.settings.buffer_capacity, seed=self.settings.seed
            )
            # MNIST enters as one experience of `capacity` random images rather than 60,000
            # items, so users' samples later compete with it on equal terms.
            pick = np.random.default_rng(self.settings.seed).permutation(len(y))[: buffer.max_size]
            images = (x[pick].squeeze(1).numpy() * 255).round().astype(np.uint8)
            buffer.update(BufferItems(images, y[pick].numpy(), mnist_key(pick)))
        if buffer.policy != self.settings.buffer_policy:
            converted = make_buffer(
                self.settings.buffer_policy, self.settings.buffer_capacity, seed=self.settings.seed
            )
            converted.update(buffer.items)
            buffer = converted
        elif buffer.max_size != self.settings.buffer_capacity:
            buffer.resize(self.settings.buffer_capacity)
        buffer.save(cache)
        return buffer

    # ---- the retrain -----------------------------------------------------------------------
    def retrain(self, trigger: str = "manual") -> RetrainOutcome:
        """Run one retrain now. ConflictError if one is already running."""
        if not self.lock.acquire(blocking=False):
            raise ConflictError("A retrain is already running in this worker; wait for it.")
        try:
            self.metrics.running.set(1)
            return self._retrain(trigger)
        finally:
            self.metrics.running.set(0)
            self.lock.release()

    def _retrain(self, trigger: str) -> RetrainOutcome:
        job, plan = self.compute_job(trigger)
        return self._publish(self.state.job(job.id) or job, plan)

    def compute_job(self, trigger: str) -> tuple[JobView, JobPlan]:
        """Steps 1-2: start a job and compute everything; returns it `computed` (not published)."""
        started = time.perf_counter()
        self.reconcile()
        stable = self.registry.load_digit_model(STABLE)
        lineage = self.lineage(stable.info)
        snapshot = self.store.max_id()
        # one job learns at most `max_samples_per_job`, oldest first; the watermark moves only
        # past those, so the rest stay accepted for the next job
        samples = self.state.new_samples(
            snapshot,
            lineage,
            limit=self.settings.max_samples_per_job,
            max_image_bytes=self.settings.max_image_bytes_per_job,
        )
        if not samples:
            self.metrics.retrains.labels(outcome="skipped").inc()
            raise NothingToTrainError(
                "No accepted samples are waiting for a retrain. Upload labelled samples "
                "(POST /v1/samples) first."
            )
        job = self.state.begin_job(trigger, stable.info.version)
        try:
            with (
                self.state.heartbeat(job.id),
                tracking.retrain_run(self.registry, job.id) as run_id,
            ):
                self.state.set_phase(job.id, "validating", run_id=run_id)
                plan = self._compute(job, stable, lineage, samples, run_id, started)
                self.state.mark_computed(job.id, plan.to_json())
        except BaseException as exc:
            current = self.state.job(job.id)
            ours = current is not None and current.owner == self.state.owner
            if ours and current is not None and current.status == RUNNING:
                self.state.end_job(job.id, "failed", error=f"{type(exc).__name__}: {exc}")
                self.metrics.retrains.labels(outcome="failed").inc()
            raise
        return self.state.job(job.id) or job, plan

    def _compute(
        self,
        job: JobView,
        stable: LoadedDigitModel,
        lineage: list[str],
        samples: list[Sample],
        run_id: str,
        started: float,
    ) -> JobPlan:
        """Run the stages in order, record them, write the candidate's files; the job's plan."""
        s = self.settings
        buffer = self.buffer_for(stable.info)
        reference = buffer.items.take(np.arange(min(len(buffer), REFERENCE_SIZE))).images
        history = self.state.lineage_samples(lineage)
        validated = validate_samples(
            stable.model,
            reference,
            samples,
            history,
            self._rules(),
            seed=s.seed,
            holdout=s.holdout_fraction,
            validation=s.validation_fraction,
        )
        tracking.log_validation(
            self.registry,
            s,
            trigger=job.trigger,
            parent_version=stable.info.version,
            new_samples=len(samples),
            watermark=max(x.id for x in samples),
            buffer=buffer,
            validated=validated,
        )
        if not validated.accepted:
            # nothing left to learn from: a candidate would be the stable model again
            tracking.log_all_quarantined(self.registry, stable.info.version)
            return self._quarantine_plan(job, stable, run_id, samples, validated, started)
        self.state.set_phase(job.id, "tuning")
        candidate, tuned = self._train(job.id, stable.model, buffer, validated.parts)
        self.state.set_phase(job.id, "gating")
        parts = validated.parts
        evaluation = evaluate_candidate(
            stable.model,
            candidate,
            test=self.mnist("test"),
            holdout=tensors(parts.holdout),
            new_train=tensors(parts.train + parts.val),
            users=per_user(history),
            thresholds=self._thresholds(),
            base_old_accuracy=lambda stable_old: self._base_accuracy(lineage, stable, stable_old),
        )
        memory = candidate_memory(buffer, validated.accepted)
        buffer_stats = memory.stats()
        folder = self._job_folder(job.id)
        save_weights(candidate, folder / WEIGHTS_FILE)
        memory.save(folder / BUFFER_FILE)
        metrics = {
            **evaluation.metrics,
            "buffer_size": float(buffer_stats["size"]),
            "buffer_from_users": float(buffer_stats["from_users"]),
            "buffer_seen": float(buffer_stats["seen"]),
            "compute_seconds": time.perf_counter() - started,
            "peak_rss_bytes": float(peak_rss_bytes()),
        }
        tracking.log_candidate(
            self.registry,
            parent_version=stable.info.version,
            metrics=metrics,
            decision=evaluation.decision,
            buffer_stats=buffer_stats,
            hpo=tuned.record,
            samples={
                "watermark": max(x.id for x in samples),
                **parts.ids(),
                "quarantined": {str(k): v for k, v in validated.report.quarantined.items()},
            },
        )
        return self._plan(
            job, stable, run_id, samples, validated, evaluation, tuned.best, buffer_stats, metrics
        )

    def _rules(self) -> ValidationRules:
        s = self.settings
        return ValidationRules(
            min_ink_pixels=s.min_ink_pixels,
            max_ink_fraction=s.max_ink_fraction,
            ood_distance_factor=s.ood_distance_factor,
            ood_max_entropy=s.ood_max_entropy,
            label_conflict_confidence=s.label_conflict_confidence,
            user_disagreement_floor=s.user_disagreement_floor,
            user_disagreement_factor=s.user_disagreement_factor,
            user_disagreement_min_samples=s.user_disagreement_min_samples,
        )

    def _thresholds(self) -> GateThresholds:
        s = self.settings
        return GateThresholds(
            max_old_drop_pp=s.gate_max_old_drop_pp,
            max_new_drop_pp=s.gate_max_new_drop_pp,
            max_class_drop_pp=s.gate_max_class_drop_pp,
            min_holdout=s.gate_min_holdout,
            max_drift_pp=s.gate_max_drift_pp,
        )

    def _job_folder(self, job_id: int) -> Path:
        return self.settings.state_dir / "jobs" / str(job_id)

    def _base_accuracy(
        self, lineage: list[str], stable: LoadedDigitModel, stable_old: EvalResult
    ) -> float:
        """MNIST test accuracy of the version the lineage started from (evaluated once)."""
        root = lineage[-1]
        if root == stable.info.version:
            return stable_old.accuracy
        if root not in self._base_accuracies:
            model = self.registry.load_digit_model(root).model
            self._base_accuracies[root] = evaluate(model, *self.mnist("test")).accuracy
        return self._base_accuracies[root]

    def _train(
        self, job_id: int, stable_model: DigitNet, buffer: ReplayBuffer, parts: Parts
    ) -> tuple[DigitNet, Tuned]:
        """Tune on train (scored on val and old MNIST), then refit the winner on train + val."""
        s = self.settings
        train = tensors(parts.train + (() if s.hpo_trials > 1 else parts.val))
        val = tensors(parts.val)
        x_old, y_old = self.mnist("train")
        pick = torch.randperm(len(y_old), generator=torch.Generator().manual_seed(s.seed + 1))
        old_val = (x_old[pick[:OLD_VALIDATION_SIZE]], y_old[pick[:OLD_VALIDATION_SIZE]])
        learner = Learner.of(
            stable_model,
            buffer,
            LearnerConfig(
                replay_ratio=s.replay_ratio,
                distill_weight=s.distill_weight,
                distill_temperature=s.distill_temperature,
                ewc_lambda=s.ewc_lambda,
                batch_size=s.batch_size,
                epochs=s.epochs,
                min_steps=s.min_steps,
                seed=s.seed,
                augment_policy=s.augment_policy,
            ),
        )
        budget = HpoBudget(
            default=TrialParams(s.default_optimizer, s.default_lr),
            optimizers=tuple(s.optimizers),
            trials=s.hpo_trials,
            seconds=s.hpo_seconds,
            seed=s.seed,
        )

        def on_trial(number: int, params: TrialParams, result: TrialResult) -> None:
            tracking.log_trial(self.registry, job_id, number, params, result)

        tuned = tune(learner, train, val, old_val, budget, on_trial)
        if tuned.model is not None:  # one trial, already trained on train + val
            return tuned.model, tuned
        tracking.log_search(self.registry, tuned)
        self.state.set_phase(job_id, "training")
        # refit the winner on train + val so no accepted training sample is wasted
        return learner.train(tuned.best, tensors(parts.train + parts.val)), tuned

    def _plan(
        self,
        job: JobView,
        stable: LoadedDigitModel,
        run_id: str,
        samples: list[Sample],
        validated: Validated,
        evaluation: Evaluation,
        best: TrialParams,
        buffer_stats: dict[str, Any],
        metrics: dict[str, float],
    ) -> JobPlan:
        """Everything needed to publish and commit the job without recomputing anything."""
        report, parts, decision = validated.report, validated.parts, evaluation.decision
        watermark = max(x.id for x in samples)
        trained = [x.id for x in parts.train + parts.val + parts.holdout]
        counts = report.counts()
        tags = {
            **decision.tags(),
            "parent_version": stable.info.version,
            "watermark": str(watermark),
            tracking.JOB_ID_TAG: str(job.id),
            "trigger": job.trigger,
            "optimizer": best.optimizer,
            "lr": f"{best.lr:.6g}",
            "samples.trained": str(len(parts.train) + len(parts.val)),
            "samples.holdout": str(len(parts.holdout)),
            "samples.quarantined": str(len(report.quarantined)),
            **{f"quarantine.{k}": str(v) for k, v in counts.items() if v},
            **{f"buffer.{k}": str(v) for k, v in buffer_stats.items() if k != "per_class"},
            "test_accuracy": f"{metrics['test_accuracy']:.4f}",
            "holdout_accuracy": f"{metrics['holdout_accuracy']:.4f}",
            "forgetting": f"{metrics['forgetting']:.6f}",
            "backward_transfer": f"{metrics['backward_transfer']:.6f}",
            "compute_seconds": f"{metrics['compute_seconds']:.1f}",
            "peak_rss_bytes": str(int(metrics["peak_rss_bytes"])),
        }
        quarantined = dict(report.quarantined)
        if not decision.passed:
            for sample_id in trained:
                quarantined[sample_id] = GATE_REJECTED
        folder = self._job_folder(job.id)
        return JobPlan(
            job_id=job.id,
            run_id=run_id,
            parent_version=stable.info.version,
            passed=decision.passed,
            reasons=tuple(decision.reasons),
            trained=tuple(trained) if decision.passed else (),
            quarantined=quarantined,
            watermark=watermark,
            counts=counts,
            metrics=metrics,
            candidate=CandidatePlan(
                model_config=stable.model.config.to_dict(),
                weights=folder / WEIGHTS_FILE,
                buffer=folder / BUFFER_FILE,
                tags=tags,
                meta={
                    "parent_version": stable.info.version,
                    "watermark": watermark,
                    "sample_ids": parts.ids(),
                    "quarantined": {str(k): v for k, v in report.quarantined.items()},
                    "gate": decision.to_dict(),
                    "buffer": buffer_stats,
                    "optimizer": best.optimizer,
                    "lr": best.lr,
                    "test_accuracy": metrics["test_accuracy"],
                },
            ),
        )

    def _quarantine_plan(
        self,
        job: JobView,
        stable: LoadedDigitModel,
        run_id: str,
        samples: list[Sample],
        validated: Validated,
        started: float,
    ) -> JobPlan:
        """The plan of a job whose every new sample was quarantined: no candidate, no version."""
        counts = validated.report.counts()
        return JobPlan(
            job_id=job.id,
            run_id=run_id,
            parent_version=stable.info.version,
            passed=False,
            reasons=(
                f"all {len(samples)} new samples were quarantined "
                f"({', '.join(f'{k}: {v}' for k, v in counts.items() if v)}); "
                "nothing was trained and no version registered",
            ),
            trained=(),
            quarantined=dict(validated.report.quarantined),
            watermark=max(x.id for x in samples),
            counts=counts,
            metrics={"compute_seconds": time.perf_counter() - started},
            candidate=None,
        )

    # ---- publishing ------------------------------------------------------------------------
    def _find_published(self, job_id: int) -> VersionInfo | None:
        """The version a job registered, if any; a registry error raises (never 'none')."""
        for info in self.registry.list_versions(self.settings.model_name):
            if info.tags.get(tracking.JOB_ID_TAG) == str(job_id) and "complete" in info.tags:
                return info
        return None

    def _publish(self, job: JobView, plan: JobPlan) -> RetrainOutcome:
        """Register (if not yet), complete, alias and commit a computed job. Idempotent.

        MLflow failures are retried with a growing pause; when every attempt fails the job
        stays `computed` and the worker's next poll (`reconcile`) publishes it.
        """
        if plan.candidate is None:
            return self._commit_quarantined(job, plan)
        s = self.settings
        with self.state.heartbeat(job.id):
            for attempt in range(1, s.publish_attempts + 1):
                try:
                    return self._publish_once(job, plan, plan.candidate)
                except Exception as exc:  # MLflow down, slow or answering 5xx
                    if isinstance(exc, InkwellError) and not isinstance(
                        exc, RegistryUnavailableError
                    ):
                        raise  # a lost lease or a broken plan: retrying cannot help
                    full = disk_full_error(exc)
                    if full is not None:  # retrying at once cannot free space
                        self.metrics.publish_failures.labels(reason="disk_full").inc()
                        log.error("job %s: publishing failed, disk full: %s", job.id, full)
                        raise DiskFullError(
                            f"No space left on device while publishing retrain job {job.id} "
                            f"({full}). The job stays computed and is published at the next "
                            "poll once space is freed: free space under INKWELL_HOME "
                            f"({s.home}: the trainer's state and the embedded MLflow "
                            "artifacts) or on the MLflow server's artifact store."
                        ) from exc
                    if attempt == s.publish_attempts:
                        self.metrics.publish_failures.labels(reason="registry_unavailable").inc()
                        raise RegistryUnavailableError(
                            f"Publishing retrain job {job.id} failed {attempt} times ({exc}); "
                            "the job stays computed and is published at the next poll. Check "
                            "that MLflow at INKWELL_TRACKING_URI answers."
                        ) from exc
                    pause = s.publish_backoff_seconds * 2 ** (attempt - 1)
                    log.warning(
                        "job %s: publishing failed (%s); attempt %d/%d in %.1f s",
                        job.id,
                        exc,
                        attempt + 1,
                        s.publish_attempts,
                        pause,
                    )
                    time.sleep(pause)
        raise AssertionError("unreachable")

    def _publish_once(
        self, job: JobView, plan: JobPlan, candidate: CandidatePlan
    ) -> RetrainOutcome:
        self.state.set_phase(job.id, "registering")
        name = self.settings.model_name
        info = self._find_published(job.id)
        if info is None:
            model = DigitNet(ModelConfig.from_dict(candidate.model_config))
            model.load_state_dict(
                torch.load(candidate.weights, map_location="cpu", weights_only=True)
            )
            info = self.registry.register_digit_model(
                model,
                plan.run_id,
                meta=candidate.meta,
                tags={**candidate.tags, "complete": "false"},
                extra_files={BUFFER_FILE: candidate.buffer},
            )
        self.registry.set_version_tags(name, info.version, {"complete": "true"})
        if plan.passed:
            self.registry.set_alias(name, CANARY, info.version)
        cache = self.settings.state_dir / "buffers" / f"{name}-v{info.version}.npz"
        atomic_write(cache, candidate.buffer.read_bytes())
        self.state.commit_job(
            job.id,
            version=info.version,
            outcome=plan.outcome,
            trained=list(plan.trained),
            quarantined=dict(plan.quarantined),
            watermark=plan.watermark,
        )
        shutil.rmtree(candidate.weights.parent, ignore_errors=True)
        self._count(plan, info.version)
        return RetrainOutcome(
            job_id=job.id,
            status=plan.outcome,
            version=info.version,
            parent_version=plan.parent_version,
            run_id=plan.run_id,
            seconds=plan.metrics.get("compute_seconds", 0.0),
            quarantined={k: v for k, v in plan.counts.items() if v},
            reasons=list(plan.reasons),
            metrics=dict(plan.metrics),
        )

    def _commit_quarantined(self, job: JobView, plan: JobPlan) -> RetrainOutcome:
        self.state.commit_job(
            job.id,
            version=None,
            outcome=ALL_QUARANTINED,
            trained=[],
            quarantined=dict(plan.quarantined),
            watermark=plan.watermark,
        )
        self._count(plan, None)
        log.warning("retrain job %s: %s", job.id, plan.reasons[0])
        return RetrainOutcome(
            job_id=job.id,
            status=ALL_QUARANTINED,
            version=None,
            parent_version=plan.parent_version,
            run_id=plan.run_id,
            seconds=plan.metrics["compute_seconds"],
            quarantined={k: v for k, v in plan.counts.items() if v},
            reasons=list(plan.reasons),
        )

    def _count(self, plan: JobPlan, version: str | None) -> None:
        """Metrics of a committed job; without a version (all quarantined) only the counts."""
        m = self.metrics
        m.retrains.labels(outcome=plan.outcome).inc()
        for reason, count in plan.counts.items():
            if count:
                m.quarantined.labels(reason=reason).inc(count)
        m.watermark.set(self.state.watermark())
        if version is None:
            return
        if not plan.passed:
            m.quarantined.labels(reason=GATE_REJECTED).inc(
                sum(1 for r in plan.quarantined.values() if r == GATE_REJECTED)
            )
        m.trained.inc(len(plan.trained))
        m.seconds.observe(plan.metrics.get("compute_seconds", 0.0))
        m.last_version.set(float(version))
        m.buffer_size.set(plan.metrics.get("buffer_size", 0.0))
        m.old_accuracy.labels(dataset="mnist_test").set(plan.metrics["test_accuracy"])
        m.old_accuracy.labels(dataset="holdout").set(plan.metrics["holdout_accuracy"])

    # ---- crash recovery --------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Finish or close jobs left behind by a process that died; returns what was done."""
        done: list[str] = []
        job = self.state.active_job()
        if job is None or not self._owner_gone(job) or not self.state.claim(job):
            return done
        if job.status == RUNNING:
            self._abandon(job, f"owner {job.owner} gone mid-retrain")
            done.append(f"job {job.id}: interrupted in phase {job.phase}; samples still pending")
        elif job.status == COMPUTED:
            try:
                plan = JobPlan.from_json(job.plan or "")
            except UnreadablePlanError as exc:
                # nothing of it was committed: its samples are still pending, so closing it
                # lets the next retrain plan them again (a version it may already have
                # registered is left as it is; the next job registers its own)
                self._abandon(job, f"its computed plan cannot be read: {exc}")
                shutil.rmtree(self._job_folder(job.id), ignore_errors=True)
                log.error("retrain job %s: plan unreadable (%s); re-planning", job.id, exc)
                done.append(f"job {job.id}: plan unreadable ({exc}); samples still pending")
                return done
            outcome = self._publish(job, plan)
            tracking.close_run(self.registry, job.run_id, "FINISHED")
            done.append(f"job {job.id}: finished as version {outcome.version} ({outcome.status})")
        return done

    def _abandon(self, job: JobView, why: str) -> None:
        """Close a claimed job unpublished: its samples stay pending for the next retrain."""
        self.state.end_job(job.id, INTERRUPTED, error=why)
        tracking.close_run(self.registry, job.run_id, "KILLED")
        self.metrics.retrains.labels(outcome="failed").inc()

    def _owner_gone(self, job: JobView) -> bool:
        """Whether an active job may be taken over: nobody is working on it any more."""
        if job.pid == os.getpid() and job.host == socket.gethostname():
            # this process: busy only while this worker runs it (else a leftover, e.g. a
            # publish that failed, or another instance's job in the same process)
            return not (job.owner == self.state.owner and self.lock.locked())
        if not process_alive(job.host, job.pid):
            return True
        return lease_expired(job, self.settings.lease_seconds)


def disk_full_error(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT `OSError` behind `exc` (MLflow wraps some), if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return current
        current = current.__cause__ or current.__context__
    return None


def save_weights(model: DigitNet, path: Path) -> Path:
    """Write a model's `state_dict` atomically: temp file, fsync, rename, fsync the folder."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda fh: torch.save(state, fh))
