"""The stages of a digit retrain as pure functions: typed inputs in, frozen results out.

None of these touches the database, MLflow or the file system; `trainer.pipeline` runs them in
order, records their results with `trainer.tracking` and writes the files. Each stage can be
called on its own with small tensors (the unit tests do).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from inkwell.model import DigitNet
from inkwell.store import Sample
from inkwell.training import Batch, EvalResult, TrainConfig, evaluate, fit
from trainer.buffer import BufferItems, ReplayBuffer
from trainer.gate import GateDecision, GateThresholds, decide
from trainer.hpo import TrialParams, TrialResult, search
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

REFERENCE_SIZE = 2000  # buffer images the out-of-distribution check compares against
PER_USER_EVAL = 200  # an earlier user's samples evaluated for backward transfer, at most
EWC_SAMPLES = 512

OnTrial = Callable[[int, TrialParams, TrialResult], None]


def tensors(samples: Sequence[Sample]) -> Batch:
    """Samples as an MNIST-shaped `(x, y)` batch (pixels scaled to [0, 1])."""
    if not samples:
        return torch.empty(0, 1, 28, 28), torch.empty(0, dtype=torch.long)
    images = np.stack([pixels_to_array(s.pixels) for s in samples])
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, torch.tensor([s.label for s in samples], dtype=torch.long)


def buffer_items(samples: Sequence[Sample]) -> BufferItems:
    """Samples as replay-buffer items, keyed by sample id."""
    if not samples:
        return BufferItems.empty()
    images = np.stack([pixels_to_array(s.pixels) for s in samples])
    return BufferItems(
        images, np.array([s.label for s in samples]), np.array([s.id for s in samples])
    )


# ---- validation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Parts:
    """Accepted samples split into train, validation and held-out parts."""

    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    holdout: tuple[Sample, ...]

    def ids(self) -> dict[str, list[int]]:
        """Sample ids per part."""
        return {
            "train": [x.id for x in self.train],
            "val": [x.id for x in self.val],
            "holdout": [x.id for x in self.holdout],
        }


def split_of(sample_id: int, seed: int, holdout: float, validation: float) -> str:
    """Deterministic train/val/holdout assignment: the same sample always lands in the same part."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < holdout:
        return "holdout"
    if u < holdout + validation:
        return "val"
    return "train"


def split_samples(
    samples: Sequence[Sample], *, seed: int, holdout: float, validation: float
) -> Parts:
    """`samples` split by `split_of`, each part in the input's order."""
    parts: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        parts[split_of(sample.id, seed, holdout, validation)].append(sample)
    return Parts(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["holdout"]))


@dataclass(frozen=True)
class Validated:
    """The validation stage: the report, the accepted samples and their split."""

    report: ValidationReport
    accepted: tuple[Sample, ...]
    parts: Parts
    history_rates: dict[str, float]  # earlier users' disagreement with stable
    seconds: float


def validate_samples(
    stable: DigitNet,
    reference_images: np.ndarray,
    samples: Sequence[Sample],
    history: Sequence[Sample],
    rules: ValidationRules,
    *,
    seed: int,
    holdout: float,
    validation: float,
) -> Validated:
    """Quarantine bad new samples (against stable and the lineage's history) and split the rest."""
    t0 = time.perf_counter()
    reference = DigitReference(stable, reference_images)
    history_rates = disagreement_rates(
        stable,
        [h.user_id for h in history],
        np.array([h.label for h in history], dtype=np.int64),
        np.stack([pixels_to_array(h.pixels) for h in history])
        if history
        else np.zeros((0, 28, 28), np.uint8),
    )
    report = validate(
        [Candidate(x.id, x.user_id, x.label, x.image, x.pixels) for x in samples],
        stable,
        reference,
        rules,
        known_pixel_hashes={pixel_hash(h.pixels) for h in history},
        other_users_rates=history_rates,
    )
    seconds = time.perf_counter() - t0
    passed = set(report.accepted)
    accepted = tuple(x for x in samples if x.id in passed)
    parts = split_samples(accepted, seed=seed, holdout=holdout, validation=validation)
    return Validated(report, accepted, parts, history_rates, seconds)


# ---- training -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnerConfig:
    """How a candidate is trained from stable (from `TrainerSettings`)."""

    replay_ratio: float
    distill_weight: float
    distill_temperature: float
    ewc_lambda: float
    batch_size: int
    epochs: int
    min_steps: int
    seed: int
    augment_policy: str


@dataclass(frozen=True)
class Learner:
    """Stable's copy to learn from, the replay buffer, and the frozen teacher for distillation."""

    stable: DigitNet
    buffer: ReplayBuffer
    teacher: DigitNet
    ewc: EWC | None
    config: LearnerConfig

    @classmethod
    def of(cls, stable: DigitNet, buffer: ReplayBuffer, config: LearnerConfig) -> Learner:
        """A learner over `stable` (never modified) and `buffer` (read-only here)."""
        teacher = copy.deepcopy(stable).eval()
        ewc = None
        if config.ewc_lambda > 0:
            generator = torch.Generator().manual_seed(config.seed)
            ewc = EWC(teacher, buffer.sample(EWC_SAMPLES, generator).tensors())
        return cls(stable, buffer, teacher, ewc, config)

    def train(self, params: TrialParams, data: Batch) -> DigitNet:
        """A copy of stable trained on `data` with replay (stable itself when `data` is empty)."""
        c = self.config
        model = copy.deepcopy(self.stable)
        strategy = ReplayStrategy(
            self.buffer,
            ReplayConfig(
                replay_ratio=c.replay_ratio,
                distill_weight=c.distill_weight,
                temperature=c.distill_temperature,
                ewc_lambda=c.ewc_lambda,
            ),
            teacher=self.teacher,
            ewc=self.ewc,
        )
        steps_per_epoch = math.ceil(max(1, data[0].shape[0]) / c.batch_size)
        cfg = TrainConfig(
            optimizer=params.optimizer,
            lr=params.lr,
            epochs=max(c.epochs, math.ceil(c.min_steps / steps_per_epoch)),
            batch_size=c.batch_size,
            seed=c.seed,
            weight_decay=0.0,
            augment=True,
            augment_policy=c.augment_policy,
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


@dataclass(frozen=True)
class HpoBudget:
    """The search's budget and space (from `TrainerSettings`)."""

    default: TrialParams
    optimizers: tuple[str, ...]
    trials: int
    seconds: float
    seed: int


@dataclass(frozen=True)
class Tuned:
    """The tuning stage: the winning params, every trial, and (single trial) its model."""

    best: TrialParams
    record: dict[str, Any]  # trials, best, seconds: the `hpo.json` artifact
    trials: int
    seconds: float
    model: DigitNet | None  # trained on train + val already; None: refit the winner


def tune(
    learner: Learner,
    train: Batch,
    val: Batch,
    old_val: Batch,
    budget: HpoBudget,
    on_trial: OnTrial,
) -> Tuned:
    """Pick optimizer and learning rate by the mean of old (MNIST) and new validation accuracy.

    With one trial (or none) there is nothing to choose: the default is trained once on `train`
    (which then holds the validation samples too) and that model is the candidate.
    """

    def objective(params: TrialParams) -> TrialResult:
        t0 = time.perf_counter()
        model = learner.train(params, train)
        old = evaluate(model, *old_val).accuracy
        new = evaluate(model, *val).accuracy if val[1].numel() else None
        score = old if new is None else 0.5 * (old + new)
        trial_metrics = {"old_val_accuracy": old, "seconds": time.perf_counter() - t0}
        if new is not None:
            trial_metrics["new_val_accuracy"] = new
        return TrialResult(score, trial_metrics, model)

    if budget.trials <= 1:
        result = objective(budget.default)
        on_trial(0, budget.default, result)
        record: dict[str, Any] = {
            "trials": [{**asdict(budget.default), "score": result.score}],
            "best": asdict(budget.default),
        }
        return Tuned(budget.default, record, 1, 0.0, result.artifact)
    found = search(
        objective,
        optimizers=budget.optimizers,
        default=budget.default,
        trials=budget.trials,
        seconds=budget.seconds,
        seed=budget.seed,
        on_trial=on_trial,
    )
    record = {
        "trials": [{**asdict(p), "score": score} for p, score in found.trials],
        "best": asdict(found.best),
        "seconds": found.seconds,
    }
    return Tuned(found.best, record, len(found.trials), found.seconds, None)


# ---- evaluation and gate --------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """The gating stage: the four evaluations, the gate's decision and the candidate's metrics."""

    stable_old: EvalResult
    candidate_old: EvalResult
    stable_new: EvalResult
    candidate_new: EvalResult
    decision: GateDecision
    metrics: dict[str, float]


def per_user(history: Sequence[Sample], limit: int = PER_USER_EVAL) -> list[Batch]:
    """Each earlier user's first `limit` samples as a batch (one old task per user)."""
    by_user: dict[str, list[Sample]] = defaultdict(list)
    for sample in history:
        if len(by_user[sample.user_id]) < limit:
            by_user[sample.user_id].append(sample)
    return [tensors(user_samples) for user_samples in by_user.values()]


def transfer(
    stable: DigitNet,
    candidate: DigitNet,
    old: tuple[EvalResult, EvalResult],
    users: Sequence[Batch],
) -> dict[str, float]:
    """Backward transfer and forgetting over old tasks: MNIST (`old`, stable's then the
    candidate's evaluation) and each earlier user."""
    pairs = [(old[0].accuracy, old[1].accuracy)]
    for data in users:
        pairs.append((evaluate(stable, *data).accuracy, evaluate(candidate, *data).accuracy))
    deltas = [after - before for before, after in pairs]
    return {
        "backward_transfer": float(np.mean(deltas)),
        "forgetting": float(np.mean([max(0.0, -d) for d in deltas])),
        "old_users": float(len(users)),
    }


def evaluate_candidate(
    stable: DigitNet,
    candidate: DigitNet,
    *,
    test: Batch,
    holdout: Batch,
    new_train: Batch,
    users: Sequence[Batch],
    thresholds: GateThresholds,
    base_old_accuracy: Callable[[EvalResult], float],
) -> Evaluation:
    """Evaluate stable and candidate on old (MNIST test) and new (held-out) data and gate.

    `base_old_accuracy` gives the MNIST test accuracy of the lineage's base version from stable's
    evaluation (the same number when stable is the base), so no evaluation is repeated.
    """
    stable_old = evaluate(stable, *test)
    candidate_old = evaluate(candidate, *test)
    stable_new = evaluate(stable, *holdout)
    candidate_new = evaluate(candidate, *holdout)
    decision = decide(
        stable_old=stable_old,
        candidate_old=candidate_old,
        stable_new=stable_new,
        candidate_new=candidate_new,
        thresholds=thresholds,
        base_old_accuracy=base_old_accuracy(stable_old),
    )
    moved = transfer(stable, candidate, (stable_old, candidate_old), users)
    metrics: dict[str, float] = {
        **candidate_old.to_metrics("test"),
        "stable_test_accuracy": stable_old.accuracy,
        "holdout_accuracy": candidate_new.accuracy,
        "stable_holdout_accuracy": stable_new.accuracy,
        "new_train_accuracy": evaluate(candidate, *new_train).accuracy,
        **moved,
    }
    return Evaluation(stable_old, candidate_old, stable_new, candidate_new, decision, metrics)


def candidate_memory(buffer: ReplayBuffer, accepted: Sequence[Sample]) -> ReplayBuffer:
    """The candidate's replay buffer: stable's plus every accepted new sample (`buffer` kept)."""
    memory = copy.deepcopy(buffer)
    memory.update(buffer_items(accepted))
    return memory
