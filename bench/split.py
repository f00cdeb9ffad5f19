"""Class-incremental Split-MNIST: 5 tasks of 2 digits, one 10-way head, no task labels.

Three learners see the same stream (same class order, same seeds, same model, optimizer, batch
size and epochs): naive fine-tuning, Avalanche's `Replay` (the reference implementation of
experience replay, out of the box) and Inkwell's `ReplayStrategy` (class-balanced buffer,
replay mixed into every mini-batch, DER-style logit matching, augmentation). Each yields the
accuracy matrix R[t][i] (accuracy on task i's test digits after training task t), from which
average accuracy, backward transfer and forgetting are computed the usual way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from inkwell.model import DigitNet, ModelConfig
from inkwell.optim import build_optimizer
from inkwell.training import Batch, TrainConfig, evaluate, fit, seed_everything
from trainer.buffer import BufferItems, make_buffer, mnist_key
from trainer.strategy import ReplayConfig, ReplayStrategy, logits_for

PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
METHODS = ("naive", "avalanche_replay", "inkwell")


@dataclass
class Task:
    """One experience: its classes, training data (with MNIST indices) and test data."""

    classes: tuple[int, ...]
    train: Batch
    train_index: np.ndarray
    test: Batch


@dataclass
class SplitResult:
    """Accuracy matrix and summary numbers of one learner on one stream."""

    method: str
    buffer_size: int
    seed: int
    matrix: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def average_accuracy(self) -> float:
        """Mean accuracy over all tasks after the last one."""
        return float(np.mean(self.matrix[-1]))

    @property
    def backward_transfer(self) -> float:
        """Mean over earlier tasks of (final accuracy - accuracy right after learning it)."""
        r = np.asarray(self.matrix)
        t = r.shape[0]
        return float(np.mean([r[-1, i] - r[i, i] for i in range(t - 1)])) if t > 1 else 0.0

    @property
    def forgetting(self) -> float:
        """Mean over earlier tasks of (best earlier accuracy - final accuracy)."""
        r = np.asarray(self.matrix)
        t = r.shape[0]
        if t < 2:
            return 0.0
        return float(np.mean([r[: t - 1, i].max() - r[-1, i] for i in range(t - 1)]))


def make_tasks(train: Batch, test: Batch, pairs: Sequence[tuple[int, ...]] = PAIRS) -> list[Task]:
    """Split MNIST tensors into class-incremental tasks."""
    tasks = []
    for classes in pairs:
        mask_tr = torch.isin(train[1], torch.tensor(classes))
        mask_te = torch.isin(test[1], torch.tensor(classes))
        index = torch.nonzero(mask_tr).flatten().numpy()
        tasks.append(
            Task(
                tuple(classes),
                (train[0][mask_tr], train[1][mask_tr]),
                index,
                (test[0][mask_te], test[1][mask_te]),
            )
        )
    return tasks


@dataclass(frozen=True)
class BenchConfig:
    """Shared training budget (identical for every learner)."""

    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    width: int = 16
    der_alpha: float = 0.5
    replay_ratio: float = 0.5
    threads: int | None = None


def _row(model: DigitNet, tasks: Sequence[Task]) -> list[float]:
    return [evaluate(model, *task.test).accuracy for task in tasks]


def run_naive(tasks: Sequence[Task], cfg: BenchConfig, seed: int) -> SplitResult:
    """Plain fine-tuning on each task in turn (the lower bound)."""
    seed_everything(seed)
    model = DigitNet(ModelConfig(width=cfg.width))
    result = SplitResult("naive", 0, seed)
    started = time.perf_counter()
    for t, task in enumerate(tasks):
        train_cfg = _train_cfg(cfg, seed, t, augment=False)
        fit(model, task.train, train_cfg, eval_every_epoch=False)
        result.matrix.append(_row(model, tasks))
    result.seconds = time.perf_counter() - started
    return result


def _train_cfg(cfg: BenchConfig, seed: int, t: int, *, augment: bool) -> TrainConfig:
    return TrainConfig(
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=seed * 100 + t,
        augment=augment,
        weight_decay=0.0,
        label_smoothing=0.0,
        schedule="constant",
    )


def run_inkwell(
    tasks: Sequence[Task], cfg: BenchConfig, seed: int, buffer_size: int
) -> SplitResult:
    """Inkwell's replay strategy: class-balanced buffer, DER logits, augmentation."""
    seed_everything(seed)
    model = DigitNet(ModelConfig(width=cfg.width))
    buffer = make_buffer("class_balanced", buffer_size, seed=seed)
    strategy = ReplayStrategy(
        buffer, ReplayConfig(replay_ratio=cfg.replay_ratio, der_alpha=cfg.der_alpha)
    )
    result = SplitResult("inkwell", buffer_size, seed)
    started = time.perf_counter()
    for t, task in enumerate(tasks):
        fit(
            model,
            task.train,
            _train_cfg(cfg, seed, t, augment=True),
            hooks=strategy.hooks(),
            batch_source=strategy.batch_source,
            eval_every_epoch=False,
        )
        x, y = task.train
        images = (x.squeeze(1).numpy() * 255).round().astype(np.uint8)
        logits = logits_for(model, x).numpy()
        buffer.update(BufferItems(images, y.numpy(), mnist_key(task.train_index), logits))
        result.matrix.append(_row(model, tasks))
    result.seconds = time.perf_counter() - started
    return result


def run_avalanche_replay(
    tasks: Sequence[Task], cfg: BenchConfig, seed: int, buffer_size: int
) -> SplitResult:
    """Avalanche's `Replay` strategy with its defaults, same model/optimizer/budget."""
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import (
        _make_taskaware_tensor_classification_dataset as tensor_dataset,
    )
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Replay

    seed_everything(seed)
    model = DigitNet(ModelConfig(width=cfg.width))
    x_train = torch.cat([task.train[0] for task in tasks])
    y_train = torch.cat([task.train[1] for task in tasks])
    x_test = torch.cat([task.test[0] for task in tasks])
    y_test = torch.cat([task.test[1] for task in tasks])
    order = [c for task in tasks for c in task.classes]
    benchmark = nc_benchmark(
        tensor_dataset(x_train, y_train),
        tensor_dataset(x_test, y_test),
        n_experiences=len(tasks),
        task_labels=False,
        fixed_class_order=order,
        seed=seed,
    )
    strategy = Replay(
        model=model,
        optimizer=build_optimizer(cfg.optimizer, model.parameters(), cfg.lr),
        criterion=torch.nn.CrossEntropyLoss(),
        mem_size=buffer_size,
        train_mb_size=cfg.batch_size,
        train_epochs=cfg.epochs,
        eval_mb_size=1000,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
    )
    result = SplitResult("avalanche_replay", buffer_size, seed)
    started = time.perf_counter()
    for experience in benchmark.train_stream:
        strategy.train(experience, num_workers=0)
        result.matrix.append(_row(model, tasks))
    result.seconds = time.perf_counter() - started
    return result


def run_split_mnist(
    train: Batch,
    test: Batch,
    *,
    methods: Sequence[str],
    buffers: Sequence[int],
    seeds: Sequence[int],
    cfg: BenchConfig,
    on_result: Callable[[SplitResult], None] | None = None,
) -> list[SplitResult]:
    """Run every requested learner x buffer x seed on the same task stream."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tasks = make_tasks(train, test)
    results: list[SplitResult] = []
    for seed in seeds:
        runs: list[Callable[[], SplitResult]] = []
        if "naive" in methods:
            runs.append(lambda seed=seed: run_naive(tasks, cfg, seed))  # type: ignore[misc]
        for size in buffers:
            if "inkwell" in methods:
                runs.append(lambda s=size, seed=seed: run_inkwell(tasks, cfg, seed, s))  # type: ignore[misc]
            if "avalanche_replay" in methods:
                runs.append(lambda s=size, seed=seed: run_avalanche_replay(tasks, cfg, seed, s))  # type: ignore[misc]
        for run in runs:
            result = run()
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
