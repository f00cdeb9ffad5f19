"""Everything a retrain job records in MLflow: runs, params, metrics, artifacts, run tags.

The digit pipeline and the cheque job call only these functions to describe a job, so what a
job's run holds is decided here (registering versions, tags on versions and aliases are
publishing, in the jobs themselves). `inkwell.registry.Registry` is still the one module that
talks to MLflow; this one decides what to say to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from inkwell.registry import Registry
from trainer.buffer import ReplayBuffer
from trainer.gate import GateDecision
from trainer.hpo import TrialParams, TrialResult
from trainer.plan import ALL_QUARANTINED
from trainer.settings import TrainerSettings
from trainer.stages import Tuned, Validated

RETRAIN_KIND = "retrain"
TRIAL_KIND = "hpo-trial"
JOB_ID_TAG = "inkwell.job_id"
log = logging.getLogger("inkwell.trainer")


@contextmanager
def retrain_run(registry: Registry, job_id: int) -> Iterator[str]:
    """The MLflow run of digit retrain `job_id`; yields its run id."""
    with registry.start_run(
        f"retrain-{job_id}", tags={"inkwell.kind": RETRAIN_KIND, JOB_ID_TAG: str(job_id)}
    ) as run:
        yield str(run.info.run_id)


def log_validation(
    registry: Registry,
    settings: TrainerSettings,
    *,
    trigger: str,
    parent_version: str,
    new_samples: int,
    watermark: int,
    buffer: ReplayBuffer,
    validated: Validated,
) -> None:
    """The job's inputs and settings as params, and the validation verdicts."""
    s = settings
    parts = validated.parts
    report = validated.report
    registry.log_params(
        {
            "trigger": trigger,
            "parent_version": parent_version,
            "samples.new": new_samples,
            "samples.accepted": len(validated.accepted),
            "samples.train": len(parts.train),
            "samples.val": len(parts.val),
            "samples.holdout": len(parts.holdout),
            "watermark": watermark,
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
            "validation_seconds": validated.seconds,
            "ood_threshold": report.ood_threshold,
        }
    )
    registry.log_dict(
        {
            "quarantined": {str(k): v for k, v in report.quarantined.items()},
            "counts": counts,
            "user_disagreement": report.user_disagreement,
            "baseline_disagreement": report.baseline_disagreement,
            "history_users": validated.history_rates,
        },
        "validation.json",
    )


def log_all_quarantined(registry: Registry, parent_version: str) -> None:
    """Mark the run of a job whose every sample was quarantined (no candidate)."""
    registry.set_tags({"parent_version": parent_version, "validation_status": ALL_QUARANTINED})


def log_trial(
    registry: Registry, job_id: int, number: int, params: TrialParams, result: TrialResult
) -> None:
    """One HPO trial as a run nested in the job's run."""
    with registry.start_run(
        f"retrain-{job_id}-trial-{number}",
        nested=True,
        tags={"inkwell.kind": TRIAL_KIND, JOB_ID_TAG: str(job_id)},
    ):
        registry.log_params({"optimizer": params.optimizer, "lr": params.lr})
        registry.log_metrics({"score": result.score, **result.metrics})


def log_search(registry: Registry, tuned: Tuned) -> None:
    """The search's winner (only when there was a search: a single trial logs nothing here)."""
    registry.log_params({"optimizer": tuned.best.optimizer, "lr": tuned.best.lr})
    registry.log_metrics({"hpo_seconds": tuned.seconds, "hpo_trials": tuned.trials})


def log_candidate(
    registry: Registry,
    *,
    parent_version: str,
    metrics: Mapping[str, float],
    decision: GateDecision,
    buffer_stats: Mapping[str, Any],
    hpo: Mapping[str, Any],
    samples: Mapping[str, Any],
) -> None:
    """The candidate's evaluation, the gate's verdict, its memory, the search and its samples."""
    registry.log_metrics(metrics)
    registry.log_dict(decision.to_dict(), "gate.json")
    registry.log_dict(dict(buffer_stats), "buffer_stats.json")
    registry.log_dict(dict(hpo), "hpo.json")
    registry.log_dict(dict(samples), "samples.json")
    registry.set_tags({"parent_version": parent_version, "validation_status": decision.status})


def log_cheque_job(
    registry: Registry,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    plan_json: str,
    gate: Mapping[str, Any],
) -> None:
    """A cheque job's settings, gate and calibration numbers, and its plan (in its open run)."""
    registry.log_params(params)
    registry.log_metrics(metrics)
    registry.log_dict({"plan": json.loads(plan_json), "gate": dict(gate)}, "job.json")


def close_run(registry: Registry, run_id: str | None, status: str) -> None:
    """Close a dead owner's MLflow run; with MLflow down it stays open (cosmetic only)."""
    try:
        if run_id and registry.run_status(run_id) == "RUNNING":
            registry.terminate_run(run_id, status)
    except Exception as exc:
        log.warning("could not close MLflow run %s: %s", run_id, exc)
