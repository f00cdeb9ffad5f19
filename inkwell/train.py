"""Train the base digit model on MNIST, track the run in MLflow and register the version."""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from inkwell.data import Split, load_split
from inkwell.model import DigitNet, ModelConfig, count_parameters
from inkwell.registry import Registry, VersionInfo, save_digit_model
from inkwell.settings import CANARY, STABLE, CoreSettings
from inkwell.training import (
    EvalResult,
    TrainConfig,
    TrainHooks,
    evaluate,
    fit,
    images_to_tensor,
    seed_everything,
)

# The base recipe's peak learning rate: 4 one-cycle epochs need a higher peak than the
# optimizer study's 2-epoch defaults (Adam: 99.35 % at 0.003, 99.43-99.48 % at 0.004-0.006).
BASE_PEAK_LR: dict[str, float] = {"adam": 0.006}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def split_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST split as model-ready tensors."""
    return images_to_tensor(split.images), torch.from_numpy(split.labels.copy())


@dataclass
class TrainOutcome:
    """The result of `train_base_model`: the model, its test metrics and registry entry."""

    model: DigitNet
    evaluation: EvalResult | None
    run_id: str
    version: VersionInfo | None
    seconds: float


def train_base_model(
    cfg: TrainConfig,
    *,
    settings: CoreSettings | None = None,
    data_dir: Path | None = None,
    model_config: ModelConfig | None = None,
    hooks: TrainHooks | None = None,
    register: bool = True,
    threads: int | None = None,
    out_dir: Path | None = None,
) -> TrainOutcome:
    """Train DigitNet on MNIST train, evaluate on MNIST test, log everything and register it.

    The first registered version of the model gets alias `stable`; later ones get `canary`
    only when asked by the caller (the trainer's gate decides that, not this function).
    `out_dir` also saves `weights.pt` + `model.json` there (how the shipped model is made).
    """
    settings = settings or CoreSettings()
    if threads:
        torch.set_num_threads(threads)
    registry = Registry(settings)
    train_split = load_split("train", data_dir, settings)
    test_split = load_split("test", data_dir, settings)
    seed_everything(cfg.seed)  # weights initialisation is part of the seeded run
    model = DigitNet(model_config or ModelConfig())
    started = time.perf_counter()
    user_hooks = hooks or TrainHooks()

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        registry.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        if user_hooks.on_epoch is not None:
            user_hooks.on_epoch(epoch, metrics)

    with registry.start_run("base-train", tags={"inkwell.kind": "base"}) as run:
        registry.log_params(
            {
                **{f"train.{k}": v for k, v in asdict(cfg).items()},
                **{f"model.{k}": v for k, v in (model.config.to_dict()).items()},
                "model.parameters": count_parameters(model),
                "data.source": str(train_split.source),
                "data.train_size": len(train_split),
                "data.test_size": len(test_split),
                "torch.threads": torch.get_num_threads(),
                "host.machine": platform.machine(),
            }
        )
        registry.set_tags(
            {f"data.md5.{k}": v for k, v in {**train_split.md5, **test_split.md5}.items()}
        )
        result = fit(
            model,
            split_tensors(train_split),
            cfg,
            test=split_tensors(test_split),
            hooks=TrainHooks(on_step=user_hooks.on_step, on_epoch=on_epoch),
            eval_every_epoch=not cfg.dry_run,
        )
        evaluation = evaluate(model, *split_tensors(test_split))
        seconds = time.perf_counter() - started
        summary: dict[str, float] = {
            **evaluation.to_metrics("test"),
            "wall_seconds": seconds,
            "train_seconds": result.seconds,
            "peak_rss_bytes": float(peak_rss_bytes()),
            "optimizer_state_bytes": float(result.optimizer_state_bytes),
            "steps": float(result.steps),
        }
        registry.log_metrics(summary)
        registry.log_dict(
            {"confusion": evaluation.confusion, "per_class": evaluation.per_class},
            "evaluation/test.json",
        )
        version = None
        meta: dict[str, Any] = {
            "train": asdict(cfg),
            "test_accuracy": evaluation.accuracy,
            "data_md5": {**train_split.md5, **test_split.md5},
            "parent_version": None,
        }
        if out_dir is not None:
            save_digit_model(model, out_dir, meta)
        if register:
            existing_stable = registry.find_version(settings.model_name, STABLE)
            version = registry.register_digit_model(
                model,
                run.info.run_id,
                meta=meta,
                tags={"validation_status": "base", "test_accuracy": f"{evaluation.accuracy:.4f}"},
                aliases=(STABLE,) if existing_stable is None else (),
            )
    return TrainOutcome(model, evaluation, run.info.run_id, version, seconds)


__all__ = [
    "CANARY",
    "STABLE",
    "TrainOutcome",
    "peak_rss_bytes",
    "split_tensors",
    "train_base_model",
]
