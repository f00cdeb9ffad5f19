"""Hyper-parameter search with Optuna: which of the five optimizers, and its learning rate.

The learning rate is searched as a scale of the optimizer's default peak rate
(`inkwell.optim.DEFAULT_LR`), so one log-uniform range fits all five. The search stops at
`trials` or `seconds`, whichever comes first; the first trial is always the configured default,
so even a budget of one trial yields a sensible result. Each trial is reported to `on_trial`
(the pipeline opens a nested MLflow run for it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from inkwell.optim import DEFAULT_LR

LR_SCALE_RANGE = (0.01, 0.5)


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space."""

    optimizer: str
    lr: float


@dataclass
class TrialResult:
    """What a trial's training produced: its objective and anything worth logging."""

    score: float
    metrics: dict[str, float] = field(default_factory=dict)
    artifact: Any = None  # e.g. the trained model, kept for the best trial


@dataclass
class SearchResult:
    """The best trial and every trial's params and score."""

    best: TrialParams
    best_result: TrialResult
    trials: list[tuple[TrialParams, float]]
    seconds: float


def search(
    objective: Callable[[TrialParams], TrialResult],
    *,
    optimizers: Sequence[str],
    default: TrialParams,
    trials: int,
    seconds: float,
    seed: int = 0,
    on_trial: Callable[[int, TrialParams, TrialResult], None] | None = None,
) -> SearchResult:
    """Maximise `objective` over optimizer and learning rate within the budget."""
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    scale = default.lr / DEFAULT_LR[default.optimizer]
    study.enqueue_trial({"optimizer": default.optimizer, "lr_scale": scale})
    best: tuple[TrialParams, TrialResult] | None = None
    history: list[tuple[TrialParams, float]] = []
    started = time.perf_counter()

    def run(trial: optuna.Trial) -> float:
        nonlocal best
        name = trial.suggest_categorical("optimizer", list(optimizers))
        lr_scale = trial.suggest_float(
            "lr_scale", min(LR_SCALE_RANGE[0], scale), max(LR_SCALE_RANGE[1], scale), log=True
        )
        params = TrialParams(optimizer=str(name), lr=DEFAULT_LR[str(name)] * lr_scale)
        result = objective(params)
        history.append((params, result.score))
        if best is None or result.score > best[1].score:
            best = (params, result)
        if on_trial is not None:
            on_trial(trial.number, params, result)
        return result.score

    study.optimize(run, n_trials=max(1, trials), timeout=seconds)
    if best is None:  # pragma: no cover - optimize always runs at least one trial
        raise RuntimeError("the search ran no trial")
    return SearchResult(best[0], best[1], history, time.perf_counter() - started)
