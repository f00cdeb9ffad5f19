"""Pure training and evaluation: tensors in, numbers out. No MLflow, no files, no printing.

Callers observe progress through the `TrainHooks` callbacks (the CLI drives a progress bar, the
trainer logs to MLflow, the continual-learning strategy mixes in replay through `batch_source`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inkwell.optim import build_optimizer, optimizer_state_bytes, uses_momentum_cycling

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    optimizer: str = "adam"
    lr: float | None = None
    epochs: int = 5
    batch_size: int = 128
    seed: int = 0
    weight_decay: float = 5e-4
    augment: bool = True
    # "affine": small rotations, scale, shear and shifts. "handwriting": wider slant and rotation
    # and, on half of each batch, random stroke thickness and elastic distortion (how people's
    # handwriting differs from MNIST's writers; see `augment_handwriting`).
    augment_policy: str = "affine"
    label_smoothing: float = 0.05
    schedule: str = "onecycle"  # or "constant"
    dry_run: bool = False  # one batch only: a smoke test
    max_steps: int | None = None


@dataclass
class EvalResult:
    """Accuracy, mean loss, per-class accuracy and confusion matrix on a labelled set."""

    accuracy: float
    loss: float
    per_class: list[float]
    confusion: list[list[int]]
    n: int

    def to_metrics(self, prefix: str = "test") -> dict[str, float]:
        metrics = {f"{prefix}_accuracy": self.accuracy, f"{prefix}_loss": self.loss}
        for digit, acc in enumerate(self.per_class):
            metrics[f"{prefix}_accuracy_class_{digit}"] = acc
        return metrics


@dataclass
class TrainHooks:
    """Optional callbacks fired by `fit`."""

    on_step: Callable[[int, float], None] | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    # Extra loss term (e.g. distillation, EWC) given the model, inputs, logits and targets.
    extra_loss: (
        Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None
    ) = None


@dataclass
class TrainResult:
    """What a run produced besides the trained weights."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    optimizer_state_bytes: int = 0
    final: EvalResult | None = None


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) or float in [0, 1] → float32 (N, 1, 28, 28) in [0, 1]."""
    array = np.asarray(images)
    tensor = torch.from_numpy(np.array(array, copy=True))
    tensor = tensor.float() / 255.0 if array.dtype == np.uint8 else tensor.float()
    return tensor.reshape(-1, 1, 28, 28)


def _affine_theta(
    angle: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Per-image (N, 2, 3) sampling matrices for `F.affine_grid` (normalised coordinates)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [
            torch.stack([cos, -sin + shear, shift[:, 0]], dim=1),
            torch.stack([sin, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, strength: float = 1.0
) -> torch.Tensor:
    """Random per-sample affine (rotation, scale, shear, shift) like natural handwriting varies."""
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(10) * strength
    scale = 1 + u[:, 1] * 0.1 * strength
    shear = u[:, 2] * 0.15 * strength
    shift = u[:, 3:5] * (2.0 / 14.0) * strength  # ±2 px in normalised coordinates
    theta = _affine_theta(angle, scale, shear, shift)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


@dataclass(frozen=True)
class HandwritingAugment:
    """Ranges of `augment_handwriting`: uniform in ±range per image."""

    rotation_deg: float = 15.0
    shear: float = 0.35  # slant: x += shear * y
    scale: float = 0.1
    shift_px: float = 2.0
    thickness: float = 1.0  # blend towards a 3x3 dilation (+) or a 2x2 erosion (-)
    elastic_px: float = 12.0  # peak amplitude of the smoothed displacement field
    elastic_sigma: float = 3.0
    style_probability: float = 0.5  # share of images that also get thickness + elastic


AugmentPolicy = Literal["affine", "handwriting"]
AUGMENT_POLICIES: tuple[str, ...] = get_args(AugmentPolicy)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _smooth_noise(n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 28, 28, 2) uniform noise in [-1, 1] blurred by a separable Gaussian."""
    kernel = _gaussian_kernel(sigma)
    r = kernel.numel() // 2
    field = (torch.rand(n * 2, 1, 28, 28, generator=generator) * 2 - 1).contiguous()
    field = F.conv2d(F.pad(field, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))
    return field.reshape(n, 2, 28, 28).permute(0, 2, 3, 1)


def augment_handwriting(
    x: torch.Tensor, generator: torch.Generator, ranges: HandwritingAugment | None = None
) -> torch.Tensor:
    """Random per-image handwriting variation (Simard et al., 2003: affine + elastic).

    Every image gets a random slant, rotation, scale and shift; `style_probability` of them also
    get a random stroke thickness and a smooth elastic displacement. One `grid_sample` does the
    geometry, so the cost is a few milliseconds per 128-image batch.
    """
    cfg = ranges or HandwritingAugment()
    n = x.shape[0]
    u = torch.rand(n, 6, generator=generator) * 2 - 1
    styled = (torch.rand(n, generator=generator) < cfg.style_probability).float()
    angle = u[:, 0] * math.radians(cfg.rotation_deg)
    scale = 1 + u[:, 1] * cfg.scale
    shear = u[:, 2] * cfg.shear
    shift = u[:, 3:5] * (cfg.shift_px / 14.0)
    theta = _affine_theta(angle, scale, shear, shift)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if cfg.elastic_px > 0:
        amplitude = torch.rand(n, generator=generator) * cfg.elastic_px * styled
        field = _smooth_noise(n, cfg.elastic_sigma, generator)
        grid = grid + field * (amplitude * (2.0 / 28.0)).view(n, 1, 1, 1)
    if cfg.thickness > 0:
        t = (u[:, 5] * cfg.thickness * styled).view(n, 1, 1, 1)
        thicker = F.max_pool2d(x, 3, stride=1, padding=1)
        thinner = F.pad(-F.max_pool2d(-x, 2, stride=1), (0, 1, 0, 1))
        x = torch.where(
            t > 0, x + t.clamp(min=0) * (thicker - x), x - t.clamp(max=0) * (thinner - x)
        )
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    """One epoch of shuffled mini-batches."""
    order = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


@torch.inference_mode()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Class probabilities for (N, 1, 28, 28) inputs, in eval mode."""
    was_training = model.training
    model.eval()
    outs = [
        F.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, x.shape[0], batch_size)
    ]
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, 10)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int = 10
) -> EvalResult:
    """Accuracy, loss, per-class accuracy and confusion matrix of `model` on (x, y)."""
    probs = predict_proba(model, x)
    if y.numel() == 0:
        return EvalResult(0.0, 0.0, [0.0] * num_classes, [[0] * num_classes] * num_classes, 0)
    pred = probs.argmax(dim=1)
    loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y).item())
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    totals = confusion.sum(dim=1).clamp_min(1)
    per_class = (confusion.diag().float() / totals.float()).tolist()
    accuracy = float((pred == y).float().mean().item())
    return EvalResult(accuracy, loss, per_class, confusion.tolist(), int(y.numel()))


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.schedule == "constant" or total_steps < 2:
        return None
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=total_steps,
        pct_start=0.2,
        cycle_momentum=uses_momentum_cycling(optimizer),
        div_factor=10.0,
        final_div_factor=100.0,
    )


def fit(
    model: nn.Module,
    train: Batch,
    cfg: TrainConfig,
    *,
    test: Batch | None = None,
    hooks: TrainHooks | None = None,
    batch_source: Callable[[Batch, torch.Generator], Batch] | None = None,
    eval_every_epoch: bool = True,
) -> TrainResult:
    """Train `model` in place on `train` with `cfg`; evaluate on `test` after each epoch.

    `batch_source` may replace each mini-batch (the replay strategy mixes in old samples).
    """
    hooks = hooks or TrainHooks()
    if cfg.augment_policy not in AUGMENT_POLICIES:
        raise ValueError(
            f"Unknown augmentation policy {cfg.augment_policy!r}; use one of {AUGMENT_POLICIES}."
        )
    model.to(memory_format=torch.channels_last)
    generator = seed_everything(cfg.seed)
    x, y = train
    optimizer = build_optimizer(
        cfg.optimizer, model.parameters(), cfg.lr, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = max(1, math.ceil(x.shape[0] / cfg.batch_size))
    total = 1 if cfg.dry_run else steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    scheduler = _scheduler(optimizer, cfg, total)
    result = TrainResult()
    started = time.perf_counter()
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        running, seen = 0.0, 0
        for xb, yb in shuffled_batches(x, y, cfg.batch_size, generator):
            if batch_source is not None:
                xb, yb = batch_source((xb, yb), generator)
            if cfg.augment:
                if cfg.augment_policy == "handwriting":
                    xb = augment_handwriting(xb, generator)
                else:
                    xb = augment_batch(xb, generator)
            # channels_last is ~1.4x faster for these convolutions on CPU.
            xb = xb.contiguous(memory_format=torch.channels_last)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            if hooks.extra_loss is not None:
                loss = loss + hooks.extra_loss(model, xb, logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            running += float(loss.item()) * yb.shape[0]
            seen += yb.shape[0]
            if hooks.on_step is not None:
                hooks.on_step(step, float(loss.item()))
            if step >= total:
                break
        metrics: dict[str, float] = {
            "epoch": float(epoch),
            "train_loss": running / max(seen, 1),
            "seconds": time.perf_counter() - started,
            "step": float(step),
        }
        if test is not None and (eval_every_epoch or step >= total or epoch == cfg.epochs):
            evaluation = evaluate(model, *test)
            result.final = evaluation
            metrics.update({"test_accuracy": evaluation.accuracy, "test_loss": evaluation.loss})
        result.history.append(metrics)
        if hooks.on_epoch is not None:
            hooks.on_epoch(epoch, metrics)
        if step >= total:
            break
    result.steps = step
    result.seconds = time.perf_counter() - started
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    return result


def state_dict_cpu(model: nn.Module) -> dict[str, Any]:
    """A detached CPU copy of the model's weights."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
