"""The five optimizers of the report, built by name with their hyper-parameters.

torch is imported where it is used, so the CLI can list and check optimizer names (and answer
`--help` or a usage error) without paying for torch's import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("sgd", "sgdm", "adagrad", "rmsprop", "adam")

# Learning rates that work for DigitNet with a one-cycle schedule (peak lr).
DEFAULT_LR: dict[str, float] = {
    "sgd": 0.2,
    "sgdm": 0.05,
    "adagrad": 0.03,
    "rmsprop": 0.002,
    "adam": 0.003,
}


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    lr: float | None = None,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Build `sgd`, `sgdm` (SGD + Nesterov-free momentum), `adagrad`, `rmsprop` or `adam`."""
    import torch

    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[key] if lr is None else lr
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=weight_decay)
    if key == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if key == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if key == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def uses_momentum_cycling(optimizer: torch.optim.Optimizer) -> bool:
    """Whether OneCycleLR may cycle momentum/betas for this optimizer."""
    defaults = optimizer.defaults
    return "betas" in defaults or float(defaults.get("momentum", 0.0) or 0.0) > 0.0


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state tensors (momentum buffers, moments)."""
    import torch

    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total
