"""The cheque-reader retrain job: reviewed fields in, a gated `inkwell-cheques` version out.

When `cheque_min_new_fields` accepted reviewed fields wait past the watermark, the job
fine-tunes `inkwell-cheques@stable` on the reviewed fields (new ones plus the most recent
earlier ones, up to `cheque_replay_max`: the replay of earlier reviewed fields) mixed with
synthetic replay in every batch (`MixedStream`), recalibrates the confidence and review
threshold on the held-out reviewed fields, gates the candidate against stable and registers it,
alias `canary` only when it passes.

Invariant: a field is held out when the hash of its image digest says so, so the held-out set
never changes between jobs and is never trained on. The job's plan is written atomically before
training; a restarted worker finds it, trains again from the same plan (same seed, same rows)
and registers at most one version per job (versions carry a `cheque_job` tag).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from inkwell.cheques.finetune import FinetuneConfig, RealField, finetune_reader, real_batches
from inkwell.cheques.pools import DigitPool, load_pool
from inkwell.cheques.reader import ChequeReader, to_gray
from inkwell.cheques.stream import FieldBatch
from inkwell.cheques.synth import synth_config
from inkwell.cheques.train import validation_batches, validation_metrics
from inkwell.registry import Registry, VersionInfo
from inkwell.settings import CANARY, STABLE
from inkwell.store import ACCEPTED, ChequeSample, SampleStore
from trainer import tracking
from trainer.files import atomic_write
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

SYNTHETIC_TEST_SEED = 2026  # the gate's synthetic MNIST-test amounts: fixed, so cacheable
JOB_TAG = "cheque_job"


def held_out(content_sha256: str, fraction: float) -> bool:
    """Whether a reviewed field belongs to the held-out set (stable across jobs)."""
    bucket = int(hashlib.sha256(f"holdout:{content_sha256}".encode()).hexdigest()[:8], 16)
    return bucket < fraction * 0x1_0000_0000


@dataclass(frozen=True)
class ChequeJobPlan:
    """What one cheque job trains on and from; written before training, read on restart."""

    job_id: str
    parent_version: str
    watermark: int  # highest reviewed-field id this job covers
    previous_watermark: int
    train_ids: tuple[int, ...]
    holdout_ids: tuple[int, ...]
    steps: int
    seed: int

    def to_json(self) -> str:
        """The plan as JSON."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChequeJobPlan:
        """A plan read back from `to_json`."""
        data = json.loads(text)
        data["train_ids"] = tuple(data["train_ids"])
        data["holdout_ids"] = tuple(data["holdout_ids"])
        return cls(**data)


@dataclass
class ChequeGate:
    """The gate's verdict: candidate vs stable on held-out reviewed and synthetic test fields."""

    passed: bool
    reasons: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ChequeJobOutcome:
    """What one cheque job did."""

    job_id: str
    version: str | None
    status: str  # passed | rejected
    gate: ChequeGate
    seconds: float
    plan: ChequeJobPlan


class ChequeRetrainer:
    """Plans, trains, gates and registers cheque-reader versions from reviewed fields."""

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        store: SampleStore | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or SampleStore(settings.resolved_database_url)
        self.registry = registry or Registry(settings)
        self.lock = threading.Lock()
        self._pools: dict[str, DigitPool] = {}
        self._synthetic_test: list[FieldBatch] | None = None
        self._synthetic: dict[str, float] = {}  # version → synthetic test accuracy
        self._bases: dict[str, ChequeReader] = {}  # version → the lineage's base, as loaded

    # ---- persisted state ---------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.settings.state_dir / "cheques" / "state.json"

    def _state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            return {"watermark": 0, "plan": None}
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state

    def _save_state(self, watermark: int, plan: ChequeJobPlan | None) -> None:
        payload = {"watermark": watermark, "plan": plan.to_json() if plan else None}
        atomic_write(self.state_file, json.dumps(payload).encode())

    @property
    def watermark(self) -> int:
        """The highest reviewed-field id a finished cheque job covered."""
        return int(self._state()["watermark"])

    def pending_ids(self) -> list[int]:
        """Accepted reviewed fields past the watermark, oldest first."""
        with self.store.session() as session:
            rows = session.execute(
                select(ChequeSample.id)
                .where(ChequeSample.state == ACCEPTED, ChequeSample.id > self.watermark)
                .order_by(ChequeSample.id)
            )
            return [int(r[0]) for r in rows]

    def due(self) -> bool:
        """Whether enough new reviewed fields wait for a job."""
        return len(self.pending_ids()) >= self.settings.cheque_min_new_fields

    # ---- the job -----------------------------------------------------------------------------
    def plan(self) -> ChequeJobPlan:
        """Decide the rows of a new job: every accepted field up to now, split by hash."""
        stable = self.registry.get_version(self.settings.cheque_model_name, STABLE)
        fraction = self.settings.cheque_holdout_fraction
        with self.store.session() as session:
            rows = session.execute(
                select(ChequeSample.id, ChequeSample.content_sha256)
                .where(ChequeSample.state == ACCEPTED)
                .order_by(ChequeSample.id)
            ).all()
        train = [int(i) for i, digest in rows if not held_out(digest, fraction)]
        holdout = [int(i) for i, digest in rows if held_out(digest, fraction)]
        previous = self.watermark
        return ChequeJobPlan(
            job_id=f"cheques-{previous}-{rows[-1][0] if rows else previous}",
            parent_version=stable.version,
            watermark=int(rows[-1][0]) if rows else previous,
            previous_watermark=previous,
            # replay: the newest `cheque_replay_max` reviewed fields (all new ones among them)
            train_ids=tuple(train[-self.settings.cheque_replay_max :]),
            holdout_ids=tuple(holdout),
            steps=self.settings.cheque_steps,
            seed=self.settings.seed + previous,
        )

    def run_once(self) -> ChequeJobOutcome | None:
        """Resume an interrupted job, else start one when due; None when there is nothing."""
        with self.lock:
            state = self._state()
            if state["plan"]:
                plan = ChequeJobPlan.from_json(state["plan"])
                log.warning("resuming cheque job %s", plan.job_id)
            elif self.due():
                plan = self.plan()
                self._save_state(plan.previous_watermark, plan)
            else:
                return None
            outcome = self._run(plan)
            self._save_state(plan.watermark, None)
            return outcome

    def _fields(self, ids: tuple[int, ...]) -> list[RealField]:
        if not ids:
            return []
        with self.store.session() as session:
            rows = session.execute(
                select(ChequeSample.image, ChequeSample.amount).where(ChequeSample.id.in_(ids))
            ).all()
        return [(to_gray(bytes(image)), str(amount)) for image, amount in rows]

    def _pool(self, split: str) -> DigitPool:
        if split not in self._pools:
            self._pools[split] = load_pool(split, self.settings.data_dir, self.settings)
        return self._pools[split]

    def synthetic_test(self) -> list[FieldBatch]:
        """The gate's synthetic MNIST-test amounts (seeded; rendered once per process)."""
        if self._synthetic_test is None:
            self._synthetic_test = validation_batches(
                self._pool("test"),
                self.settings.cheque_synthetic_test_fields,
                SYNTHETIC_TEST_SEED,
                synth_config("classic"),
            )
        return self._synthetic_test

    def _finetune_config(self, plan: ChequeJobPlan) -> FinetuneConfig:
        s = self.settings
        return FinetuneConfig(
            steps=plan.steps,
            batch_size=s.cheque_batch_size,
            lr=s.cheque_lr,
            distill_weight=s.cheque_distill_weight,
            seed=plan.seed,
            review_rate=s.cheque_review_rate,
            eval_every=0,
            threads=s.threads,
        )

    def synthetic_accuracy(self, reader: ChequeReader) -> float:
        """A registered reader's accuracy on the synthetic test (once per version)."""
        version = reader.version
        if version is not None and version in self._synthetic:
            return self._synthetic[version]
        accuracy = validation_metrics(reader.model, self.synthetic_test())["val_string_accuracy"]
        if version is not None:
            self._synthetic[version] = accuracy
        return accuracy

    def base_of(self, stable: ChequeReader) -> ChequeReader:
        """The version stable's lineage started from (`parent_version` tags), loaded once."""
        if stable.info is None:
            return stable
        root = self.registry.lineage(stable.info)[-1]
        if root == stable.version:
            return stable
        # Registered versions never change, and the base is only read (teacher, synthetic
        # accuracy): load it once per worker, not once per job.
        if root not in self._bases:
            self._bases[root] = ChequeReader.load(root, registry=self.registry)
        return self._bases[root]

    def gate(
        self,
        stable: ChequeReader,
        candidate: ChequeReader,
        holdout: list[FieldBatch],
        n: int,
        *,
        base: ChequeReader | None = None,
    ) -> ChequeGate:
        """Candidate ≥ stable on held-out reviewed exact amounts; synthetic drop within limit,
        against stable and against the lineage's `base` (forgetting must not add up)."""
        s = self.settings
        reasons: list[str] = []
        stable_synth = self.synthetic_accuracy(stable)
        cand_synth = validation_metrics(candidate.model, self.synthetic_test())[
            "val_string_accuracy"
        ]
        metrics = {"stable_synthetic_accuracy": stable_synth}
        metrics["candidate_synthetic_accuracy"] = cand_synth
        metrics["holdout_fields"] = float(n)
        if n < s.cheque_min_holdout:
            reasons.append(
                f"only {n} held-out reviewed fields (need {s.cheque_min_holdout}): "
                "the gate cannot judge real-field accuracy yet"
            )
        else:
            stable_real = validation_metrics(stable.model, holdout)["val_string_accuracy"]
            cand_real = validation_metrics(candidate.model, holdout)["val_string_accuracy"]
            metrics["stable_holdout_accuracy"] = stable_real
            metrics["candidate_holdout_accuracy"] = cand_real
            if cand_real < stable_real:
                reasons.append(
                    f"held-out reviewed accuracy {100 * cand_real:.2f} % < stable's "
                    f"{100 * stable_real:.2f} %"
                )
        drop_pp = 100 * (stable_synth - cand_synth)
        metrics["synthetic_drop_pp"] = drop_pp
        if drop_pp > s.cheque_max_synthetic_drop_pp:
            reasons.append(
                f"synthetic test accuracy dropped {drop_pp:.2f} pp "
                f"(limit {s.cheque_max_synthetic_drop_pp} pp)"
            )
        limit = s.cheque_max_base_synthetic_drop_pp
        if base is not None and limit is not None:
            base_synth = self.synthetic_accuracy(base)
            base_drop = 100 * (base_synth - cand_synth)
            metrics["base_synthetic_accuracy"] = base_synth
            metrics["base_synthetic_drop_pp"] = base_drop
            if base_drop > limit:
                reasons.append(
                    f"synthetic test accuracy is {base_drop:.2f} pp below the base version "
                    f"v{base.version}'s ({100 * base_synth:.2f} %), limit {limit} pp"
                )
        return ChequeGate(not reasons, reasons, metrics)

    def _published(self, job_id: str) -> VersionInfo | None:
        for info in self.registry.list_versions(self.settings.cheque_model_name):
            if info.tags.get(JOB_TAG) == job_id:
                return info
        return None

    def _run(self, plan: ChequeJobPlan) -> ChequeJobOutcome:
        started = time.perf_counter()
        name = self.settings.cheque_model_name
        stable = ChequeReader.load(plan.parent_version, registry=self.registry)
        holdout_fields = self._fields(plan.holdout_ids)
        holdout = real_batches(holdout_fields)
        cfg = self._finetune_config(plan)
        base = self.base_of(stable)
        teacher = base if self.settings.cheque_distill_from == "base" else stable
        tuned = finetune_reader(
            stable,
            self._fields(plan.train_ids),
            holdout_fields,
            self._pool("train"),
            cfg,
            teacher=teacher,
        )
        verdict = self.gate(stable, tuned.reader, holdout, len(holdout_fields), base=base)
        status = "passed" if verdict.passed else "rejected"
        existing = self._published(plan.job_id)
        if existing is not None:  # registered before a crash: never twice
            return ChequeJobOutcome(
                plan.job_id, existing.version, status, verdict, time.perf_counter() - started, plan
            )
        meta = {**tuned.reader.meta, "gate": {"status": status, "reasons": verdict.reasons}}
        tuned.reader.meta = meta
        params = {
            "job_id": plan.job_id,
            "parent_version": plan.parent_version,
            "data_watermark": plan.watermark,
            "train_fields": len(plan.train_ids),
            "holdout_fields": len(plan.holdout_ids),
            "steps": plan.steps,
            "seed": plan.seed,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "real_fraction": cfg.real_fraction,
            "distill_weight": cfg.distill_weight,
            "distill_temperature": cfg.distill_temperature,
            "freeze_norm_stats": cfg.freeze_norm_stats,
        }
        tags = {
            JOB_TAG: plan.job_id,
            "gate_status": status,
            "parent_version": plan.parent_version,
            "data_watermark": str(plan.watermark),
            "source": "cheque-retrain",
        }
        with self.registry.start_run(f"cheque-retrain-{plan.job_id}", tags=tags) as run:
            tracking.log_cheque_job(
                self.registry,
                params=params,
                metrics={
                    **verdict.metrics,
                    "temperature": tuned.calibration.temperature,
                    "review_threshold": tuned.calibration.review_threshold,
                    **tuned.calibration_report.to_metrics("holdout_calibrated"),
                    "train_seconds": tuned.seconds,
                },
                plan_json=plan.to_json(),
                gate=meta["gate"],
            )
            with tempfile.TemporaryDirectory() as tmp:
                files = tuned.reader.save(Path(tmp))
                info = self.registry.register_files(
                    name,
                    run.info.run_id,
                    files,
                    meta,
                    tags=tags,
                    aliases=(CANARY,) if verdict.passed else (),
                )
        seconds = time.perf_counter() - started
        log.info(
            "cheque job %s: version %s %s in %.1f s", plan.job_id, info.version, status, seconds
        )
        return ChequeJobOutcome(plan.job_id, info.version, status, verdict, seconds, plan)
