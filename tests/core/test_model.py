"""DigitNet's architecture options and loading weights stored by older versions."""

from __future__ import annotations

import torch

from inkwell.model import DigitNet, ModelConfig, count_parameters


def test_versions_stored_before_the_stem_option_load_with_two_stem_convolutions() -> None:
    old = DigitNet(ModelConfig(width=4, stem_convs=2))
    stored = {k: v for k, v in old.config.to_dict().items() if k != "stem_convs"}
    loaded = DigitNet(ModelConfig.from_dict(stored))
    loaded.load_state_dict(old.state_dict())  # strict: same layers, same shapes
    x = torch.rand(3, 1, 28, 28)
    old.eval(), loaded.eval()
    assert torch.equal(old(x), loaded(x))


def test_each_stem_convolution_adds_one_full_resolution_block() -> None:
    one, two = DigitNet(ModelConfig(width=8)), DigitNet(ModelConfig(width=8, stem_convs=2))
    assert one.config.stem_convs == 1
    assert count_parameters(two) - count_parameters(one) == 8 * 8 * 9 + 2 * 8  # conv + BN
    assert ModelConfig.from_dict(two.config.to_dict()) == two.config
    assert one(torch.rand(2, 1, 28, 28)).shape == (2, 10)
