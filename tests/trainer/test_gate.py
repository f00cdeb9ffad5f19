"""The gate compares candidate and stable on MNIST test, held-out uploads and per class."""

from __future__ import annotations

import copy

import torch

from inkwell.model import DigitNet
from inkwell.training import EvalResult, evaluate, images_to_tensor
from tests.trainer.conftest import TINY, MnistArrays
from trainer.gate import GateThresholds, decide


def _model(weights: dict[str, torch.Tensor]) -> DigitNet:
    model = DigitNet(TINY)
    model.load_state_dict(weights)
    return model.eval()


def _eval(model: DigitNet, mnist: MnistArrays, sl: slice) -> EvalResult:
    x = images_to_tensor(mnist.test_images[sl])
    return evaluate(model, x, torch.from_numpy(mnist.test_labels[sl].copy()))


def test_gate_passes_a_candidate_identical_to_stable(
    tiny_base: dict[str, torch.Tensor], mnist: MnistArrays
) -> None:
    stable = _model(tiny_base)
    old, new = _eval(stable, mnist, slice(0, 3000)), _eval(stable, mnist, slice(3000, 3100))
    decision = decide(
        stable_old=old,
        candidate_old=old,
        stable_new=new,
        candidate_new=new,
        thresholds=GateThresholds(),
    )
    assert decision.passed and decision.tags()["validation_status"] == "passed"


def test_gate_rejects_a_deliberately_damaged_candidate(
    tiny_base: dict[str, torch.Tensor], mnist: MnistArrays
) -> None:
    stable = _model(tiny_base)
    damaged = copy.deepcopy(stable)
    torch.manual_seed(0)
    with torch.no_grad():  # forget digit 3 and blur everything else a little
        damaged.head[1].bias[3] -= 8.0
        for param in damaged.features.parameters():
            param.add_(0.05 * torch.randn_like(param))
    old_s, new_s = _eval(stable, mnist, slice(0, 3000)), _eval(stable, mnist, slice(3000, 3200))
    old_c, new_c = _eval(damaged, mnist, slice(0, 3000)), _eval(damaged, mnist, slice(3000, 3200))

    decision = decide(
        stable_old=old_s,
        candidate_old=old_c,
        stable_new=new_s,
        candidate_new=new_c,
        thresholds=GateThresholds(max_old_drop_pp=0.3, max_new_drop_pp=0.0, max_class_drop_pp=1.0),
    )

    assert not decision.passed
    tags = decision.tags()
    assert tags["validation_status"] == "rejected"
    assert "MNIST test accuracy fell" in tags["validation_reasons"]
    assert "digit 3 accuracy fell" in tags["validation_reasons"]
    assert decision.metrics["worst_class_drop_pp"] > 1.0


def test_gate_skips_the_new_sample_check_when_too_few_are_held_out(
    tiny_base: dict[str, torch.Tensor], mnist: MnistArrays
) -> None:
    stable = _model(tiny_base)
    old, few = _eval(stable, mnist, slice(0, 1000)), _eval(stable, mnist, slice(5000, 5002))
    worse = EvalResult(0.0, 9.0, few.per_class, few.confusion, few.n)
    decision = decide(
        stable_old=old,
        candidate_old=old,
        stable_new=few,
        candidate_new=worse,
        thresholds=GateThresholds(min_holdout=5),
    )
    assert decision.passed and "new-sample check skipped" in decision.tags()["validation_notes"]


def test_gate_rejects_drift_that_adds_up_over_promotions(
    tiny_base: dict[str, torch.Tensor], mnist: MnistArrays
) -> None:
    stable = _model(tiny_base)
    old, new = _eval(stable, mnist, slice(0, 3000)), _eval(stable, mnist, slice(3000, 3100))
    # each step is within the per-step limit, but the lineage's base was 0.5 pp better
    decision = decide(
        stable_old=old,
        candidate_old=old,
        stable_new=new,
        candidate_new=new,
        thresholds=GateThresholds(max_drift_pp=0.3),
        base_old_accuracy=old.accuracy + 0.005,
    )
    assert not decision.passed
    assert "below the base version" in decision.tags()["validation_reasons"]
