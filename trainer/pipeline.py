"""One retrain, end to end: validate → tune → train with replay → gate → register → commit.

Order of side effects, chosen so that `kill -9` at any moment is harmless:
1. a `running` job row is inserted (at most one active job per model);
2. everything is computed: validation verdicts, HPO, the candidate, its evaluations, the gate
   decision and the candidate's replay buffer; weights and buffer are written to the job's
   folder and the whole plan is stored in the job row (`computed`);
3. the version is registered with all its tags and `complete=false`, then tagged
   `complete=true`, then (only if the gate passed) given the alias `canary`;
4. one database transaction marks the samples trained/quarantined, advances the watermark and
   closes the job.
A restart (`reconcile`) closes a `running` job whose owner is gone (nothing was published, its
samples are still pending, so the work is redone) and finishes a `computed` one from its plan
(registering it if step 3 never happened, completing the tags and alias otherwise). An owner is
gone when its lease ran out (see `trainer.state`) or, on the same host, its process no longer
exists. Files the plan names are written to a temporary file, fsynced and renamed before the job
is marked `computed`, so a computed job never points at a torn file. Publishing retries when
MLflow fails, and each attempt first looks the job's version up by its `inkwell.job_id` tag, so
a version is never registered twice.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections import defaultdict
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
from inkwell.training import Batch, EvalResult, TrainConfig, evaluate, fit
from trainer.buffer import BufferItems, ReplayBuffer, make_buffer, mnist_key
from trainer.files import atomic_write
from trainer.gate import GateDecision, GateThresholds, decide
from trainer.hpo import TrialParams, TrialResult, search
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from trainer.state import (
    COMPUTED,
    INTERRUPTED,
    RUNNING,
    JobView,
    TrainerState,
    lease_expired,
    process_alive,
)
from trainer.strategy import EWC, ReplayConfig, ReplayStrategy
from trainer.validation import (
    Candidate,
    DigitReference,
    ValidationReport,
    ValidationRules,
    disagreement_rates,
    pixel_hash,
    pixels_to_array,
    validate,
)

BUFFER_FILE = "replay_buffer.npz"
WEIGHTS_FILE = "candidate.pt"
log = logging.getLogger("inkwell.trainer")
GATE_REJECTED = "gate_rejected"
ALL_QUARANTINED = "quarantined"  # a job whose every new sample was quarantined
REFERENCE_SIZE = 2000
OLD_VALIDATION_SIZE = 1000
PER_USER_EVAL = 200


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


def _split_of(sample_id: int, seed: int, holdout: float, validation: float) -> str:
    """Deterministic train/val/holdout assignment: the same sample always lands in the same part."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < holdout:
        return "holdout"
    if u < holdout + validation:
        return "val"
    return "train"


def _tensors(samples: list[Sample]) -> Batch:
    if not samples:
        return torch.empty(0, 1, 28, 28), torch.empty(0, dtype=torch.long)
    images = np.stack([pixels_to_array(s.pixels) for s in samples])
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, torch.tensor([s.label for s in samples], dtype=torch.long)


def _items(samples: list[Sample]) -> BufferItems:
    if not samples:
        return BufferItems.empty()
    images = np.stack([pixels_to_array(s.pixels) for s in samples])
    return BufferItems(
        images, np.array([s.label for s in samples]), np.array([s.id for s in samples])
    )


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
        chain: list[str] = []
        current: VersionInfo | None = info
        while current is not None and current.version not in chain:
            chain.append(current.version)
            parent = current.tags.get("parent_version", "")
            current = (
                self.registry.find_version(self.settings.model_name, parent)
                if parent.isdigit()
                else None
            )
        return chain

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

    def compute_job(self, trigger: str) -> tuple[JobView, dict[str, Any]]:
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
                self.registry.start_run(
                    f"retrain-{job.id}",
                    tags={"inkwell.kind": "retrain", "inkwell.job_id": str(job.id)},
                ) as run,
            ):
                self.state.set_phase(job.id, "validating", run_id=run.info.run_id)
                plan = self._compute(job, stable, lineage, samples, run.info.run_id, started)
                self.state.mark_computed(job.id, plan)
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
    ) -> dict[str, Any]:
        s = self.settings
        registry = self.registry
        buffer = self.buffer_for(stable.info)
        # -- validation
        t0 = time.perf_counter()
        reference_items = buffer.items.take(np.arange(min(len(buffer), REFERENCE_SIZE)))
        reference = DigitReference(stable.model, reference_items.images)
        history = self.state.lineage_samples(lineage)
        history_rates = disagreement_rates(
            stable.model,
            [h.user_id for h in history],
            np.array([h.label for h in history], dtype=np.int64),
            np.stack([pixels_to_array(h.pixels) for h in history])
            if history
            else np.zeros((0, 28, 28), np.uint8),
        )
        report = validate(
            [Candidate(x.id, x.user_id, x.label, x.image, x.pixels) for x in samples],
            stable.model,
            reference,
            ValidationRules(
                min_ink_pixels=s.min_ink_pixels,
                max_ink_fraction=s.max_ink_fraction,
                ood_distance_factor=s.ood_distance_factor,
                ood_max_entropy=s.ood_max_entropy,
                label_conflict_confidence=s.label_conflict_confidence,
                user_disagreement_floor=s.user_disagreement_floor,
                user_disagreement_factor=s.user_disagreement_factor,
                user_disagreement_min_samples=s.user_disagreement_min_samples,
            ),
            known_pixel_hashes={pixel_hash(h.pixels) for h in history},
            other_users_rates=history_rates,
        )
        validation_seconds = time.perf_counter() - t0
        accepted = [x for x in samples if x.id in set(report.accepted)]
        parts: dict[str, list[Sample]] = defaultdict(list)
        for sample in accepted:
            parts[_split_of(sample.id, s.seed, s.holdout_fraction, s.validation_fraction)].append(
                sample
            )
        registry.log_params(
            {
                "trigger": job.trigger,
                "parent_version": stable.info.version,
                "samples.new": len(samples),
                "samples.accepted": len(accepted),
                "samples.train": len(parts["train"]),
                "samples.val": len(parts["val"]),
                "samples.holdout": len(parts["holdout"]),
                "watermark": max(x.id for x in samples),
                "replay_ratio": s.replay_ratio,
                "distill_weight": s.distill_weight,
                "ewc_lambda": s.ewc_lambda,
                "augment_policy": s.augment_policy,
                "buffer.policy": buffer.policy,
                "buffer.capacity": buffer.max_size,
                "hpo.trials": s.hpo_trials,
                "hpo.seconds": s.hpo_seconds,
                "gate.max_old_drop_pp": s.gate_max_old_drop_pp,
                "gate.max_new_drop_pp": s.gate_max_new_drop_pp,
                "gate.max_class_drop_pp": s.gate_max_class_drop_pp,
            }
        )
        counts = report.counts()
        registry.log_metrics(
            {
                **{f"quarantined_{k}": float(v) for k, v in counts.items()},
                "quarantined_total": float(len(report.quarantined)),
                "validation_seconds": validation_seconds,
                "ood_threshold": report.ood_threshold,
            }
        )
        registry.log_dict(
            {
                "quarantined": {str(k): v for k, v in report.quarantined.items()},
                "counts": counts,
                "user_disagreement": report.user_disagreement,
                "baseline_disagreement": report.baseline_disagreement,
                "history_users": history_rates,
            },
            "validation.json",
        )
        if not accepted:
            # nothing left to learn from: a candidate would be the stable model again
            registry.set_tags(
                {"parent_version": stable.info.version, "validation_status": ALL_QUARANTINED}
            )
            return self._quarantine_plan(job, stable, run_id, samples, report, started)
        # -- train (HPO, then the candidate)
        self.state.set_phase(job.id, "tuning")
        train = _tensors(parts["train"] + ([] if s.hpo_trials > 1 else parts["val"]))
        val = _tensors(parts["val"])
        x_old, y_old = self.mnist("train")
        pick = torch.randperm(len(y_old), generator=torch.Generator().manual_seed(s.seed + 1))
        old_val = (x_old[pick[:OLD_VALIDATION_SIZE]], y_old[pick[:OLD_VALIDATION_SIZE]])
        candidate, best, hpo_record = self._train_candidate(
            stable.model, buffer, train, val, old_val, parts, job
        )
        # -- evaluate and gate
        self.state.set_phase(job.id, "gating")
        test = self.mnist("test")
        holdout = _tensors(parts["holdout"])
        ev: dict[str, EvalResult] = {
            "stable_old": evaluate(stable.model, *test),
            "candidate_old": evaluate(candidate, *test),
            "stable_new": evaluate(stable.model, *holdout),
            "candidate_new": evaluate(candidate, *holdout),
        }
        decision = decide(
            **ev,
            thresholds=GateThresholds(
                max_old_drop_pp=s.gate_max_old_drop_pp,
                max_new_drop_pp=s.gate_max_new_drop_pp,
                max_class_drop_pp=s.gate_max_class_drop_pp,
                min_holdout=s.gate_min_holdout,
                max_drift_pp=s.gate_max_drift_pp,
            ),
            base_old_accuracy=self._base_accuracy(lineage, stable, ev["stable_old"]),
        )
        transfer = self._transfer(stable.model, candidate, history, ev)
        new_train = _tensors(parts["train"] + parts["val"])
        metrics: dict[str, float] = {
            **ev["candidate_old"].to_metrics("test"),
            "stable_test_accuracy": ev["stable_old"].accuracy,
            "holdout_accuracy": ev["candidate_new"].accuracy,
            "stable_holdout_accuracy": ev["stable_new"].accuracy,
            "new_train_accuracy": evaluate(candidate, *new_train).accuracy,
            **transfer,
        }
        # -- the candidate's memory: the stable buffer plus every accepted new sample
        candidate_buffer = copy.deepcopy(buffer)
        candidate_buffer.update(_items(accepted))
        buffer_stats = candidate_buffer.stats()
        folder = self.settings.state_dir / "jobs" / str(job.id)
        save_weights(candidate, folder / WEIGHTS_FILE)
        candidate_buffer.save(folder / BUFFER_FILE)
        wall = time.perf_counter() - started
        metrics.update(
            {
                "buffer_size": float(buffer_stats["size"]),
                "buffer_from_users": float(buffer_stats["from_users"]),
                "buffer_seen": float(buffer_stats["seen"]),
                "compute_seconds": wall,
                "peak_rss_bytes": float(peak_rss_bytes()),
            }
        )
        registry.log_metrics(metrics)
        registry.log_dict(decision.to_dict(), "gate.json")
        registry.log_dict(buffer_stats, "buffer_stats.json")
        registry.log_dict(hpo_record, "hpo.json")
        registry.log_dict(
            {
                "watermark": max(x.id for x in samples),
                "train": [x.id for x in parts["train"]],
                "val": [x.id for x in parts["val"]],
                "holdout": [x.id for x in parts["holdout"]],
                "quarantined": {str(k): v for k, v in report.quarantined.items()},
            },
            "samples.json",
        )
        registry.set_tags(
            {"parent_version": stable.info.version, "validation_status": decision.status}
        )
        return self._plan(
            job, stable, run_id, samples, report, parts, decision, best, buffer_stats, metrics
        )

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

    def _train_candidate(
        self,
        stable_model: DigitNet,
        buffer: ReplayBuffer,
        train: Batch,
        val: Batch,
        old_val: Batch,
        parts: dict[str, list[Sample]],
        job: JobView,
    ) -> tuple[DigitNet, TrialParams, dict[str, Any]]:
        s = self.settings
        teacher = copy.deepcopy(stable_model).eval()
        ewc = None
        if s.ewc_lambda > 0:
            ewc = EWC(teacher, buffer.sample(512, torch.Generator().manual_seed(s.seed)).tensors())

        def train_with(params: TrialParams, data: Batch) -> DigitNet:
            model = copy.deepcopy(stable_model)
            strategy = ReplayStrategy(
                buffer,
                ReplayConfig(
                    replay_ratio=s.replay_ratio,
                    distill_weight=s.distill_weight,
                    temperature=s.distill_temperature,
                    ewc_lambda=s.ewc_lambda,
                ),
                teacher=teacher,
                ewc=ewc,
            )
            n = max(1, data[0].shape[0])
            steps_per_epoch = math.ceil(n / s.batch_size)
            epochs = max(s.epochs, math.ceil(s.min_steps / steps_per_epoch))
            cfg = TrainConfig(
                optimizer=params.optimizer,
                lr=params.lr,
                epochs=epochs,
                batch_size=s.batch_size,
                seed=s.seed,
                weight_decay=0.0,
                augment=True,
                augment_policy=s.augment_policy,
            )
            if data[0].shape[0]:
                fit(
                    model,
                    data,
                    cfg,
                    hooks=strategy.hooks(),
                    batch_source=strategy.batch_source,
                    eval_every_epoch=False,
                )
            return model.eval()

        def objective(params: TrialParams) -> TrialResult:
            t0 = time.perf_counter()
            model = train_with(params, train)
            old = evaluate(model, *old_val).accuracy
            new = evaluate(model, *val).accuracy if val[1].numel() else None
            score = old if new is None else 0.5 * (old + new)
            trial_metrics = {"old_val_accuracy": old, "seconds": time.perf_counter() - t0}
            if new is not None:
                trial_metrics["new_val_accuracy"] = new
            return TrialResult(score, trial_metrics, model)

        def log_trial(number: int, params: TrialParams, result: TrialResult) -> None:
            with self.registry.start_run(
                f"retrain-{job.id}-trial-{number}",
                nested=True,
                tags={"inkwell.kind": "hpo-trial", "inkwell.job_id": str(job.id)},
            ):
                self.registry.log_params({"optimizer": params.optimizer, "lr": params.lr})
                self.registry.log_metrics({"score": result.score, **result.metrics})

        default = TrialParams(s.default_optimizer, s.default_lr)
        if s.hpo_trials <= 1:
            result = objective(default)
            log_trial(0, default, result)
            single = {
                "trials": [{**asdict(default), "score": result.score}],
                "best": asdict(default),
            }
            return result.artifact, default, single
        found = search(
            objective,
            optimizers=s.optimizers,
            default=default,
            trials=s.hpo_trials,
            seconds=s.hpo_seconds,
            seed=s.seed,
            on_trial=log_trial,
        )
        self.registry.log_params({"optimizer": found.best.optimizer, "lr": found.best.lr})
        self.registry.log_metrics({"hpo_seconds": found.seconds, "hpo_trials": len(found.trials)})
        record: dict[str, Any] = {
            "trials": [{**asdict(p), "score": score} for p, score in found.trials],
            "best": asdict(found.best),
            "seconds": found.seconds,
        }
        self.state.set_phase(job.id, "training")
        # refit the winner on train + val so no accepted training sample is wasted
        full = _tensors(parts["train"] + parts["val"])
        return train_with(found.best, full), found.best, record

    def _transfer(
        self,
        stable_model: DigitNet,
        candidate: DigitNet,
        history: list[Sample],
        ev: dict[str, EvalResult],
    ) -> dict[str, float]:
        """Backward transfer and forgetting over old tasks: MNIST and each earlier user."""
        by_user: dict[str, list[Sample]] = defaultdict(list)
        for sample in history:
            if len(by_user[sample.user_id]) < PER_USER_EVAL:
                by_user[sample.user_id].append(sample)
        pairs = [(ev["stable_old"].accuracy, ev["candidate_old"].accuracy)]
        for user_samples in by_user.values():
            data = _tensors(user_samples)
            pairs.append(
                (evaluate(stable_model, *data).accuracy, evaluate(candidate, *data).accuracy)
            )
        deltas = [after - before for before, after in pairs]
        return {
            "backward_transfer": float(np.mean(deltas)),
            "forgetting": float(np.mean([max(0.0, -d) for d in deltas])),
            "old_users": float(len(by_user)),
        }

    def _plan(
        self,
        job: JobView,
        stable: LoadedDigitModel,
        run_id: str,
        samples: list[Sample],
        report: ValidationReport,
        parts: dict[str, list[Sample]],
        decision: GateDecision,
        best: TrialParams,
        buffer_stats: dict[str, Any],
        metrics: dict[str, float],
    ) -> dict[str, Any]:
        """Everything needed to publish and commit the job without recomputing anything."""
        watermark = max(x.id for x in samples)
        trained = [x.id for part in ("train", "val", "holdout") for x in parts[part]]
        counts = report.counts()
        tags = {
            **decision.tags(),
            "parent_version": stable.info.version,
            "watermark": str(watermark),
            "inkwell.job_id": str(job.id),
            "trigger": job.trigger,
            "optimizer": best.optimizer,
            "lr": f"{best.lr:.6g}",
            "samples.trained": str(len(parts["train"]) + len(parts["val"])),
            "samples.holdout": str(len(parts["holdout"])),
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
        quarantined = {str(k): v for k, v in report.quarantined.items()}
        if not decision.passed:
            for sample_id in trained:
                quarantined[str(sample_id)] = GATE_REJECTED
        folder = self.settings.state_dir / "jobs" / str(job.id)
        return {
            "job_id": job.id,
            "run_id": run_id,
            "parent_version": stable.info.version,
            "model_config": stable.model.config.to_dict(),
            "weights": str(folder / WEIGHTS_FILE),
            "buffer": str(folder / BUFFER_FILE),
            "passed": decision.passed,
            "reasons": decision.reasons,
            "tags": tags,
            "meta": {
                "parent_version": stable.info.version,
                "watermark": watermark,
                "sample_ids": {p: [x.id for x in parts[p]] for p in ("train", "val", "holdout")},
                "quarantined": {str(k): v for k, v in report.quarantined.items()},
                "gate": decision.to_dict(),
                "buffer": buffer_stats,
                "optimizer": best.optimizer,
                "lr": best.lr,
                "test_accuracy": metrics["test_accuracy"],
            },
            "trained": trained if decision.passed else [],
            "quarantined": quarantined,
            "watermark": watermark,
            "counts": counts,
            "metrics": metrics,
        }

    def _quarantine_plan(
        self,
        job: JobView,
        stable: LoadedDigitModel,
        run_id: str,
        samples: list[Sample],
        report: ValidationReport,
        started: float,
    ) -> dict[str, Any]:
        """The plan of a job whose every new sample was quarantined: no candidate, no version."""
        counts = report.counts()
        return {
            "job_id": job.id,
            "run_id": run_id,
            "parent_version": stable.info.version,
            "no_candidate": True,
            "passed": False,
            "reasons": [
                f"all {len(samples)} new samples were quarantined "
                f"({', '.join(f'{k}: {v}' for k, v in counts.items() if v)}); "
                "nothing was trained and no version registered"
            ],
            "trained": [],
            "quarantined": {str(k): v for k, v in report.quarantined.items()},
            "watermark": max(x.id for x in samples),
            "counts": counts,
            "metrics": {"compute_seconds": time.perf_counter() - started},
        }

    # ---- publishing ------------------------------------------------------------------------
    def _find_published(self, job_id: int) -> VersionInfo | None:
        """The version a job registered, if any; a registry error raises (never 'none')."""
        for info in self.registry.list_versions(self.settings.model_name):
            if info.tags.get("inkwell.job_id") == str(job_id) and "complete" in info.tags:
                return info
        return None

    def _publish(self, job: JobView, plan: dict[str, Any]) -> RetrainOutcome:
        """Register (if not yet), complete, alias and commit a computed job. Idempotent.

        MLflow failures are retried with a growing pause; when every attempt fails the job
        stays `computed` and the worker's next poll (`reconcile`) publishes it.
        """
        if plan.get("no_candidate"):
            return self._commit_quarantined(job, plan)
        s = self.settings
        with self.state.heartbeat(job.id):
            for attempt in range(1, s.publish_attempts + 1):
                try:
                    return self._publish_once(job, plan)
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

    def _publish_once(self, job: JobView, plan: dict[str, Any]) -> RetrainOutcome:
        self.state.set_phase(job.id, "registering")
        name = self.settings.model_name
        info = self._find_published(job.id)
        if info is None:
            model = DigitNet(ModelConfig.from_dict(plan["model_config"]))
            model.load_state_dict(
                torch.load(plan["weights"], map_location="cpu", weights_only=True)
            )
            info = self.registry.register_digit_model(
                model,
                plan["run_id"],
                meta=plan["meta"],
                tags={**plan["tags"], "complete": "false"},
                extra_files={BUFFER_FILE: Path(plan["buffer"])},
            )
        self.registry.set_version_tags(name, info.version, {"complete": "true"})
        if plan["passed"]:
            self.registry.set_alias(name, CANARY, info.version)
        cache = self.settings.state_dir / "buffers" / f"{name}-v{info.version}.npz"
        atomic_write(cache, Path(plan["buffer"]).read_bytes())
        self.state.commit_job(
            job.id,
            version=info.version,
            outcome="passed" if plan["passed"] else "rejected",
            trained=plan["trained"],
            quarantined={int(k): v for k, v in plan["quarantined"].items()},
            watermark=int(plan["watermark"]),
        )
        shutil.rmtree(Path(plan["weights"]).parent, ignore_errors=True)
        status = "passed" if plan["passed"] else "rejected"
        self._count(plan, status, info.version)
        return RetrainOutcome(
            job_id=job.id,
            status=status,
            version=info.version,
            parent_version=plan["parent_version"],
            run_id=plan["run_id"],
            seconds=float(plan["metrics"].get("compute_seconds", 0.0)),
            quarantined={k: int(v) for k, v in plan["counts"].items() if v},
            reasons=list(plan["reasons"]),
            metrics={k: float(v) for k, v in plan["metrics"].items()},
        )

    def _commit_quarantined(self, job: JobView, plan: dict[str, Any]) -> RetrainOutcome:
        self.state.commit_job(
            job.id,
            version=None,
            outcome=ALL_QUARANTINED,
            trained=[],
            quarantined={int(k): v for k, v in plan["quarantined"].items()},
            watermark=int(plan["watermark"]),
        )
        self._count(plan, ALL_QUARANTINED, None)
        log.warning("retrain job %s: %s", job.id, plan["reasons"][0])
        return RetrainOutcome(
            job_id=job.id,
            status=ALL_QUARANTINED,
            version=None,
            parent_version=plan["parent_version"],
            run_id=plan["run_id"],
            seconds=float(plan["metrics"]["compute_seconds"]),
            quarantined={k: int(v) for k, v in plan["counts"].items() if v},
            reasons=list(plan["reasons"]),
        )

    def _count(self, plan: dict[str, Any], status: str, version: str | None) -> None:
        """Metrics of a committed job; without a version (all quarantined) only the counts."""
        m = self.metrics
        m.retrains.labels(outcome=status).inc()
        for reason, count in plan["counts"].items():
            if count:
                m.quarantined.labels(reason=reason).inc(count)
        m.watermark.set(self.state.watermark())
        if version is None:
            return
        if status == "rejected":
            m.quarantined.labels(reason=GATE_REJECTED).inc(
                sum(1 for r in plan["quarantined"].values() if r == GATE_REJECTED)
            )
        m.trained.inc(len(plan["trained"]))
        m.seconds.observe(float(plan["metrics"].get("compute_seconds", 0.0)))
        m.last_version.set(float(version))
        m.buffer_size.set(float(plan["metrics"].get("buffer_size", 0.0)))
        m.old_accuracy.labels(dataset="mnist_test").set(plan["metrics"]["test_accuracy"])
        m.old_accuracy.labels(dataset="holdout").set(plan["metrics"]["holdout_accuracy"])

    # ---- crash recovery --------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Finish or close jobs left behind by a process that died; returns what was done."""
        done: list[str] = []
        job = self.state.active_job()
        if job is None or not self._owner_gone(job) or not self.state.claim(job):
            return done
        if job.status == RUNNING:
            self.state.end_job(job.id, INTERRUPTED, error=f"owner {job.owner} gone mid-retrain")
            self._close_run(job.run_id, "KILLED")
            self.metrics.retrains.labels(outcome="failed").inc()
            done.append(f"job {job.id}: interrupted in phase {job.phase}; samples still pending")
        elif job.status == COMPUTED and job.plan is not None:
            outcome = self._publish(job, job.plan)
            self._close_run(job.run_id, "FINISHED")
            done.append(f"job {job.id}: finished as version {outcome.version} ({outcome.status})")
        return done

    def _close_run(self, run_id: str | None, status: str) -> None:
        """Close a dead owner's MLflow run; with MLflow down it stays open (cosmetic only)."""
        try:
            if run_id and self.registry.run_status(run_id) == "RUNNING":
                self.registry.terminate_run(run_id, status)
        except Exception as exc:
            log.warning("could not close MLflow run %s: %s", run_id, exc)

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
