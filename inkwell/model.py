"""The digit classifier shared by trainer and service: a compact BatchNorm CNN."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from inkwell.data import MNIST_MEAN, MNIST_STD


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored with every registered version."""

    width: int = 16
    dropout: float = 0.1
    num_classes: int = 10
    # Convolutions at the full 28x28 resolution. They cost most of the compute: one trains
    # ~1.5x faster than two at the same accuracy. Versions registered before this field existed
    # used two (`from_dict` keeps loading them as such).
    stem_convs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        known.setdefault("stem_convs", 2)
        return cls(**known)


def _block(cin: int, cout: int, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitNet(nn.Module):
    """Input: (N, 1, 28, 28) floats in [0, 1], ink = 1. Output: (N, classes) logits."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        w = self.config.width
        stem = _block(1, w)
        for _ in range(self.config.stem_convs - 1):
            stem += _block(w, w)
        self.features = nn.Sequential(
            *stem,
            nn.MaxPool2d(2),  # 14x14
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 7x7
            *_block(2 * w, 4 * w, padding=0),  # 5x5
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(self.config.dropout), nn.Linear(4 * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - MNIST_MEAN) / MNIST_STD
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, used for out-of-distribution checks on uploads."""
        return self.features((x - MNIST_MEAN) / MNIST_STD)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
