"""The continual-learning strategy: replay mixing plus regularisation, plugged into `fit`.

The loop (`inkwell.training.fit`), the strategy (this module) and the memory
(`trainer.buffer`) are separate: the strategy hands `fit` a `batch_source` that appends replayed
items to every mini-batch of new data, and an `extra_loss` hook that adds
- distillation from a frozen teacher (the current stable model) on the replayed part, which
  keeps old behaviour where it matters without pinning the outputs on the new style;
- DER-style logit matching against logits stored in the buffer (Buzzega et al., 2020);
- an EWC penalty (Kirkpatrick et al., 2017) around the teacher's weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inkwell.training import Batch, TrainHooks
from trainer.buffer import ReplayBuffer


@dataclass(frozen=True)
class ReplayConfig:
    """How much to replay and how strongly to hold on to old knowledge."""

    replay_ratio: float = 0.5  # share of each mixed mini-batch taken from the buffer
    distill_weight: float = 0.0  # KL(student || teacher) on replayed items
    temperature: float = 2.0
    der_alpha: float = 0.0  # MSE to logits stored in the buffer
    ewc_lambda: float = 0.0

    def replay_count(self, n_new: int) -> int:
        """Replayed items to add to `n_new` new ones so they make up `replay_ratio`."""
        if self.replay_ratio <= 0:
            return 0
        return max(1, round(n_new * self.replay_ratio / (1.0 - self.replay_ratio)))


class EWC:
    """Diagonal-Fisher elastic weight consolidation around a reference model's weights."""

    def __init__(self, model: nn.Module, data: Batch, *, batch_size: int = 64) -> None:
        reference = copy.deepcopy(model).eval()
        self.anchor = {n: p.detach().clone() for n, p in reference.named_parameters()}
        self.fisher = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
        x, y = data
        batches = 0
        for start in range(0, x.shape[0], batch_size):
            reference.zero_grad(set_to_none=True)
            loss = F.cross_entropy(
                reference(x[start : start + batch_size]), y[start : start + batch_size]
            )
            loss.backward()
            for name, param in reference.named_parameters():
                if param.grad is not None:
                    self.fisher[name] += param.grad.detach() ** 2
            batches += 1
        for name in self.fisher:
            self.fisher[name] /= max(batches, 1)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for name, param in model.named_parameters():
            if name in self.fisher:
                total = total + (self.fisher[name] * (param - self.anchor[name]) ** 2).sum()
        return 0.5 * total


class ReplayStrategy:
    """Experience replay with optional distillation, DER logits and EWC, as `fit` hooks."""

    def __init__(
        self,
        buffer: ReplayBuffer,
        config: ReplayConfig,
        *,
        teacher: nn.Module | None = None,
        ewc: EWC | None = None,
    ) -> None:
        self.buffer = buffer
        self.config = config
        self.teacher = teacher.eval() if teacher is not None else None
        if self.teacher is not None:
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        self.ewc = ewc
        self._n_new = 0
        self._replay_logits: torch.Tensor | None = None
        self.replayed = 0

    def batch_source(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Append replayed items to a mini-batch of new data (new first, then replay)."""
        x_new, y_new = batch
        self._n_new = int(x_new.shape[0])
        replay = self.buffer.sample(self.config.replay_count(self._n_new), generator)
        self._replay_logits = None
        if not len(replay):
            return batch
        x_old, y_old = replay.tensors()
        if replay.logits is not None:
            self._replay_logits = torch.from_numpy(replay.logits)
        self.replayed += len(replay)
        return torch.cat([x_new, x_old]), torch.cat([y_new, y_old])

    def extra_loss(
        self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Distillation + DER + EWC terms for the batch built by `batch_source`."""
        loss = torch.zeros((), dtype=logits.dtype)
        old = slice(self._n_new, None)
        cfg = self.config
        if logits.shape[0] > self._n_new:
            if self.teacher is not None and cfg.distill_weight > 0:
                with torch.no_grad():
                    target = F.softmax(self.teacher(x[old]) / cfg.temperature, dim=1)
                student = F.log_softmax(logits[old] / cfg.temperature, dim=1)
                kl = F.kl_div(student, target, reduction="batchmean")
                loss = loss + cfg.distill_weight * cfg.temperature**2 * kl
            if self._replay_logits is not None and cfg.der_alpha > 0:
                loss = loss + cfg.der_alpha * F.mse_loss(logits[old], self._replay_logits)
        if self.ewc is not None and cfg.ewc_lambda > 0:
            loss = loss + cfg.ewc_lambda * self.ewc.penalty(model)
        return loss

    def hooks(self, base: TrainHooks | None = None) -> TrainHooks:
        """`base` hooks with this strategy's extra loss."""
        base = base or TrainHooks()
        return TrainHooks(on_step=base.on_step, on_epoch=base.on_epoch, extra_loss=self.extra_loss)


@torch.inference_mode()
def logits_for(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Raw logits in eval mode (what DER stores in the buffer)."""
    was_training = model.training
    model.eval()
    out = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10)
