"""Each optimizer name builds the right torch optimizer with the given hyper-parameters."""

from __future__ import annotations

import pytest
import torch

from inkwell.optim import OPTIMIZERS, build_optimizer, optimizer_state_bytes


def _params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(4, 3).parameters())


@pytest.mark.parametrize(
    ("name", "cls", "momentum"),
    [
        ("sgd", torch.optim.SGD, 0.0),
        ("sgdm", torch.optim.SGD, 0.9),
        ("adagrad", torch.optim.Adagrad, None),
        ("rmsprop", torch.optim.RMSprop, None),
        ("adam", torch.optim.Adam, None),
    ],
)
def test_optimizer_name_builds_right_class_with_hyper_parameters(
    name: str, cls: type, momentum: float | None
) -> None:
    opt = build_optimizer(name, _params(), lr=0.0123, weight_decay=1e-4)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.0123)
    assert group["weight_decay"] == pytest.approx(1e-4)
    if momentum is not None:
        assert group["momentum"] == pytest.approx(momentum)


def test_all_five_report_optimizers_are_available() -> None:
    assert set(OPTIMIZERS) == {"sgd", "sgdm", "adagrad", "rmsprop", "adam"}


def test_unknown_optimizer_name_is_rejected_with_choices() -> None:
    with pytest.raises(ValueError, match="adagrad"):
        build_optimizer("lbfgs", _params())


def test_non_positive_learning_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        build_optimizer("adam", _params(), lr=0)


def test_optimizer_state_bytes_reflect_moments() -> None:
    layer = torch.nn.Linear(10, 10)
    adam = build_optimizer("adam", layer.parameters(), lr=0.01)
    sgd = build_optimizer("sgd", torch.nn.Linear(10, 10).parameters(), lr=0.01)
    layer(torch.randn(2, 10)).sum().backward()
    adam.step()
    # two fp32 moments per parameter (110 params) plus a scalar step per tensor
    assert optimizer_state_bytes(adam) >= 2 * 110 * 4
    assert optimizer_state_bytes(sgd) == 0
