"""The retrain's stage functions on tiny tensors: no database, no MLflow, no files."""

from __future__ import annotations

import numpy as np
import torch

from inkwell.model import DigitNet, ModelConfig
from inkwell.store import Sample
from inkwell.training import Batch, EvalResult
from trainer.buffer import BufferItems, make_buffer
from trainer.gate import GateThresholds
from trainer.hpo import TrialParams, TrialResult
from trainer.stages import (
    HpoBudget,
    Learner,
    LearnerConfig,
    candidate_memory,
    evaluate_candidate,
    per_user,
    split_samples,
    tensors,
    transfer,
    tune,
)

CONFIG = LearnerConfig(
    replay_ratio=0.5,
    distill_weight=0.0,
    distill_temperature=2.0,
    ewc_lambda=0.0,
    batch_size=8,
    epochs=1,
    min_steps=2,
    seed=0,
    augment_policy="affine",
)


def _model(seed: int = 0) -> DigitNet:
    torch.manual_seed(seed)
    return DigitNet(ModelConfig(width=4)).eval()


def _samples(n: int, user: str = "alice", first_id: int = 1) -> list[Sample]:
    rng = np.random.default_rng(first_id)
    return [
        Sample(
            id=first_id + i,
            user_id=user,
            label=i % 10,
            pixels=rng.integers(0, 256, 784, dtype=np.uint8).tobytes(),
        )
        for i in range(n)
    ]


def _batch(n: int, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.arange(n) % 10


def _learner(stable: DigitNet) -> Learner:
    buffer = make_buffer("reservoir", 16, seed=0)
    rng = np.random.default_rng(0)
    buffer.update(
        BufferItems(
            rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
            np.arange(16) % 10,
            -np.arange(16),
        )
    )
    return Learner.of(stable, buffer, CONFIG)


def test_samples_split_into_disjoint_parts_the_same_way_every_time() -> None:
    samples = _samples(60)

    parts = split_samples(samples, seed=3, holdout=0.2, validation=0.2)

    ids = parts.ids()
    assert sorted(ids["train"] + ids["val"] + ids["holdout"]) == [s.id for s in samples]
    assert ids["holdout"] and ids["val"] and ids["train"]
    assert split_samples(samples[::-1], seed=3, holdout=0.2, validation=0.2).ids() == {
        part: ids[part][::-1] for part in ids
    }


def test_samples_become_an_mnist_shaped_batch_scaled_to_one() -> None:
    x, y = tensors(_samples(3))

    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.tolist() == [0, 1, 2]
    assert tensors([])[0].shape == (0, 1, 28, 28)


def test_a_candidate_equal_to_stable_neither_forgets_nor_transfers() -> None:
    stable = _model()
    old = EvalResult(0.9, 0.3, [0.9] * 10, [], 10)

    moved = transfer(stable, stable, (old, old), [_batch(6, seed=1), _batch(5, seed=2)])

    assert moved == {"backward_transfer": 0.0, "forgetting": 0.0, "old_users": 2.0}


def test_only_drops_count_as_forgetting() -> None:
    stable = _model()
    before, worse = EvalResult(0.9, 0.3, [], [], 10), EvalResult(0.8, 0.4, [], [], 10)

    moved = transfer(stable, stable, (before, worse), [])

    assert abs(moved["forgetting"] - 0.1) < 1e-9
    assert abs(moved["backward_transfer"] + 0.1) < 1e-9


def test_earlier_users_are_evaluated_on_at_most_their_first_samples() -> None:
    history = _samples(5, "alice") + _samples(2, "bob", first_id=100)

    batches = per_user(history, limit=3)

    assert [len(y) for _, y in batches] == [3, 2]


def test_a_candidate_identical_to_stable_passes_the_gate() -> None:
    stable = _model()
    seen: list[float] = []

    def base(stable_old: EvalResult) -> float:
        seen.append(stable_old.accuracy)
        return stable_old.accuracy

    evaluation = evaluate_candidate(
        stable,
        stable,
        test=_batch(20),
        holdout=_batch(6, seed=1),
        new_train=_batch(4, seed=2),
        users=[],
        thresholds=GateThresholds(min_holdout=5),
        base_old_accuracy=base,
    )

    assert evaluation.decision.passed, evaluation.decision.reasons
    assert seen == [evaluation.stable_old.accuracy]
    assert evaluation.metrics["test_accuracy"] == evaluation.metrics["stable_test_accuracy"]
    assert evaluation.metrics["forgetting"] == 0.0


def test_training_changes_a_copy_and_never_stable() -> None:
    stable = _model()
    before = {k: v.clone() for k, v in stable.state_dict().items()}
    learner = _learner(stable)

    trained = learner.train(TrialParams("adam", 1e-2), _batch(8))
    untouched = learner.train(TrialParams("adam", 1e-2), _batch(0))

    assert all(torch.equal(before[k], v) for k, v in stable.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


def test_one_trial_trains_the_default_once_and_keeps_its_model() -> None:
    learner = _learner(_model())
    trials: list[tuple[int, TrialParams, TrialResult]] = []
    default = TrialParams("adam", 1e-3)

    tuned = tune(
        learner,
        _batch(8),
        _batch(0),
        _batch(10, seed=3),
        HpoBudget(default=default, optimizers=("adam",), trials=1, seconds=10, seed=0),
        lambda number, params, result: trials.append((number, params, result)),
    )

    assert tuned.best == default and tuned.model is not None and tuned.trials == 1
    assert [(n, p) for n, p, _ in trials] == [(0, default)]
    assert "new_val_accuracy" not in trials[0][2].metrics  # no validation samples
    assert tuned.record["best"] == {"optimizer": "adam", "lr": 1e-3}


def test_the_candidates_memory_adds_the_accepted_samples_and_leaves_stables_alone() -> None:
    learner = _learner(_model())
    accepted = _samples(4, first_id=500)

    memory = candidate_memory(learner.buffer, accepted)

    assert memory.seen == learner.buffer.seen + 4
    assert set(accepted_id for accepted_id in memory.items.keys.tolist() if accepted_id > 0) <= {
        500,
        501,
        502,
        503,
    }
    assert not (learner.buffer.items.keys > 0).any()
