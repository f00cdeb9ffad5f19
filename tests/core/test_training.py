"""Model behaviour: a short real training run learns; training is deterministic with a seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inkwell.data import load_split
from inkwell.model import DigitNet, ModelConfig
from inkwell.train import split_tensors
from inkwell.training import HandwritingAugment, TrainConfig, augment_handwriting, evaluate, fit


def _subset(mnist_dir: Path, n_train: int, n_test: int) -> tuple:
    x, y = split_tensors(load_split("train", mnist_dir))
    tx, ty = split_tensors(load_split("test", mnist_dir))
    return (x[:n_train], y[:n_train]), (tx[:n_test], ty[:n_test])


def test_short_training_on_few_thousand_images_beats_90_percent(mnist_dir: Path) -> None:
    train, test = _subset(mnist_dir, 4000, 2000)
    torch.manual_seed(0)  # the initial weights, so the test does not depend on the order tests run
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


def _digits(mnist_dir: Path, n: int) -> torch.Tensor:
    return split_tensors(load_split("test", mnist_dir))[0][:n]


def test_handwriting_augmentation_is_seeded_and_keeps_the_ink(mnist_dir: Path) -> None:
    x = _digits(mnist_dir, 64)
    a = augment_handwriting(x, torch.Generator().manual_seed(3))
    b = augment_handwriting(x, torch.Generator().manual_seed(3))
    c = augment_handwriting(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    moved = (a - x).abs().flatten(1).sum(1)
    assert bool((moved > 1.0).all())  # every image is changed ...
    ink_ratio = a.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert float(ink_ratio.min()) > 0.25 and float(ink_ratio.max()) < 3.0  # ... none is lost


def test_handwriting_augmentation_makes_strokes_thicker_and_thinner(mnist_dir: Path) -> None:
    x = _digits(mnist_dir, 256)
    only_thickness = HandwritingAugment(
        rotation_deg=0, shear=0, scale=0, shift_px=0, elastic_px=0, style_probability=1.0
    )
    out = augment_handwriting(x, torch.Generator().manual_seed(0), only_thickness)
    ratio = out.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert float(ratio.max()) > 1.5 and float(ratio.min()) < 0.8
    none = HandwritingAugment(
        rotation_deg=0, shear=0, scale=0, shift_px=0, elastic_px=0, style_probability=0.0
    )
    unchanged = augment_handwriting(x, torch.Generator().manual_seed(0), none)
    torch.testing.assert_close(unchanged, x, atol=1e-5, rtol=0)


def test_unknown_augmentation_policy_is_refused_before_training(mnist_dir: Path) -> None:
    train, _ = _subset(mnist_dir, 64, 1)
    with pytest.raises(ValueError, match="handwriting"):
        fit(DigitNet(ModelConfig(width=4)), train, TrainConfig(augment_policy="elastic"))


def test_handwriting_policy_trains(mnist_dir: Path) -> None:
    train, test = _subset(mnist_dir, 3000, 1000)
    torch.manual_seed(0)
    model = DigitNet(ModelConfig(width=8))
    cfg = TrainConfig(epochs=2, batch_size=32, seed=1, augment_policy="handwriting")
    fit(model, train, cfg)
    assert evaluate(model, *test).accuracy > 0.8


@pytest.mark.parametrize("policy", ["affine", "handwriting"])
def test_fit_augments_with_the_configured_policy(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    import inkwell.training as training

    calls: list[str] = []
    for name in ("augment_batch", "augment_handwriting"):
        real = getattr(training, name)

        def spy(*args: object, _real=real, _name=name, **kwargs: object) -> torch.Tensor:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(training, name, spy)
    train, _ = _subset(mnist_dir, 128, 1)
    fit(DigitNet(ModelConfig(width=4)), train, TrainConfig(max_steps=2, augment_policy=policy))
    expected = "augment_handwriting" if policy == "handwriting" else "augment_batch"
    assert calls == [expected, expected]
