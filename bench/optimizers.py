"""The report's optimizer study: the same model and budget under SGD, SGD+momentum, Adagrad,
RMSProp and Adam; accuracy, steps/seconds to a target accuracy, optimizer-state memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inkwell.model import DigitNet, ModelConfig
from inkwell.optim import DEFAULT_LR, OPTIMIZERS
from inkwell.training import Batch, TrainConfig, TrainHooks, evaluate, fit


@dataclass
class OptimizerRun:
    """Curves and summary numbers of one optimizer under the shared budget."""

    name: str
    lr: float
    final_accuracy: float = 0.0
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    train_seconds: float = 0.0
    state_bytes: int = 0
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    accuracy_curve: list[tuple[int, float]] = field(default_factory=list)


def run_optimizer(
    name: str,
    train: Batch,
    test: Batch,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    eval_every: int,
    target: float,
    lr: float | None = None,
    width: int = 16,
    on_step: Callable[[int, float], None] | None = None,
) -> OptimizerRun:
    """Train a fresh DigitNet with optimizer `name`; evaluate every `eval_every` steps."""
    model = DigitNet(ModelConfig(width=width))
    record = OptimizerRun(name=name, lr=lr if lr is not None else DEFAULT_LR[name])
    eval_seconds = 0.0
    started = time.perf_counter()

    def step_hook(step: int, loss: float) -> None:
        nonlocal eval_seconds
        record.loss_curve.append((step, loss))
        if on_step is not None:
            on_step(step, loss)
        if step % eval_every == 0:
            t0 = time.perf_counter()
            accuracy = evaluate(model, *test).accuracy
            eval_seconds += time.perf_counter() - t0
            record.accuracy_curve.append((step, accuracy))
            if record.steps_to_target is None and accuracy >= target:
                record.steps_to_target = step
                record.seconds_to_target = time.perf_counter() - started - eval_seconds

    cfg = TrainConfig(optimizer=name, lr=record.lr, epochs=epochs, batch_size=batch_size, seed=seed)
    result = fit(model, train, cfg, hooks=TrainHooks(on_step=step_hook), eval_every_epoch=False)
    final = evaluate(model, *test).accuracy
    record.final_accuracy = final
    if not record.accuracy_curve or record.accuracy_curve[-1][0] != result.steps:
        record.accuracy_curve.append((result.steps, final))
        if record.steps_to_target is None and final >= target:
            record.steps_to_target = result.steps
            record.seconds_to_target = time.perf_counter() - started - eval_seconds
    record.train_seconds = result.seconds - eval_seconds
    record.state_bytes = result.optimizer_state_bytes
    return record


def plot_runs(runs: list[OptimizerRun], path: Path, target: float) -> Path:
    """Save loss and accuracy versus step, one line per optimizer, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        steps = [s for s, _ in run.loss_curve]
        losses = torch.tensor([v for _, v in run.loss_curve])
        window = 25
        if losses.numel() >= window:
            kernel = torch.ones(window) / window
            smooth = torch.nn.functional.conv1d(
                losses.view(1, 1, -1), kernel.view(1, 1, -1)
            ).flatten()
            ax_loss.plot(steps[window - 1 :], smooth.tolist(), label=run.name)
        else:
            ax_loss.plot(steps, losses.tolist(), label=run.name)
        ax_acc.plot(
            [s for s, _ in run.accuracy_curve],
            [100 * a for _, a in run.accuracy_curve],
            marker="o",
            markersize=3,
            label=run.name,
        )
    ax_loss.set(xlabel="step", ylabel="training loss (25-step mean)", yscale="log")
    ax_loss.set_title("Training loss")
    ax_acc.axhline(100 * target, color="grey", linestyle="--", linewidth=1)
    ax_acc.set(xlabel="step", ylabel="MNIST test accuracy (%)", ylim=(90, 100))
    ax_acc.set_title("Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["OPTIMIZERS", "OptimizerRun", "plot_runs", "run_optimizer"]
