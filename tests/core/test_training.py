"""Model behaviour: a short real training run learns; training is deterministic with a seed."""

from __future__ import annotations

from pathlib import Path

import torch

from inkwell.data import load_split
from inkwell.model import DigitNet, ModelConfig
from inkwell.train import split_tensors
from inkwell.training import TrainConfig, evaluate, fit


def _subset(mnist_dir: Path, n_train: int, n_test: int) -> tuple:
    x, y = split_tensors(load_split("train", mnist_dir))
    tx, ty = split_tensors(load_split("test", mnist_dir))
    return (x[:n_train], y[:n_train]), (tx[:n_test], ty[:n_test])


def test_short_training_on_few_thousand_images_beats_90_percent(mnist_dir: Path) -> None:
    train, test = _subset(mnist_dir, 4000, 2000)
    model = DigitNet(ModelConfig(width=8))
    fit(model, train, TrainConfig(epochs=2, batch_size=32, seed=1, optimizer="adam"))
    result = evaluate(model, *test)
    assert result.accuracy > 0.90, result.accuracy
    assert sum(map(sum, result.confusion)) == 2000


def test_training_with_same_seed_gives_identical_weights(mnist_dir: Path) -> None:
    train, _ = _subset(mnist_dir, 512, 10)
    weights = []
    for attempt in range(2):
        torch.manual_seed(0)
        model = DigitNet(ModelConfig(width=4))
        torch.manual_seed(attempt)  # global RNG state before fit must not matter
        fit(model, train, TrainConfig(epochs=1, batch_size=64, seed=7, max_steps=4))
        weights.append(model.head[1].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_dry_run_trains_exactly_one_batch(mnist_dir: Path) -> None:
    train, test = _subset(mnist_dir, 1000, 100)
    result = fit(DigitNet(ModelConfig(width=4)), train, TrainConfig(dry_run=True), test=test)
    assert result.steps == 1
    assert len(result.history) == 1


def test_evaluate_reports_per_class_accuracy_and_confusion() -> None:
    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 10)
            logits[:, 3] = 5.0
            return logits

    x = torch.zeros(4, 1, 28, 28)
    y = torch.tensor([3, 3, 1, 2])
    result = evaluate(Constant(), x, y)
    assert result.accuracy == 0.5
    assert result.per_class[3] == 1.0 and result.per_class[1] == 0.0
    assert result.confusion[1][3] == 1 and result.confusion[3][3] == 2
