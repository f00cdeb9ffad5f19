"""The new-customers benchmark's style ceiling: a model trained on digits drawn in a style."""

from __future__ import annotations

import numpy as np
import torch

from bench.customers import Style, _table, make_style, render_scans, style_ceiling
from inkwell.model import ModelConfig
from tests.trainer.conftest import MnistArrays

PLAIN = Style(slant=0.0, rotation=0.0, thickness=0, elastic=0.0, scale=1.0)


def test_style_ceiling_model_reads_its_style_better_than_one_trained_on_plain_digits(
    mnist: MnistArrays,
) -> None:
    torch.set_num_threads(1)
    thick = make_style(2)  # slant, rotation, +2 px strokes, elastic, smaller
    held = (
        render_scans(mnist.test_images[:300], thick, np.random.default_rng(1)),
        torch.from_numpy(mnist.test_labels[:300].copy()),
    )
    images, labels = mnist.train_images[:3000], mnist.train_labels[:3000]
    small = ModelConfig(width=8)

    styled = style_ceiling(thick, images, labels, held, model_config=small, epochs=4)
    plain = style_ceiling(PLAIN, images, labels, held, model_config=small, epochs=4)

    assert styled > 0.75  # 0.83 measured; 3,000 digits and 4 epochs of a narrow net
    assert styled > plain + 0.05  # 0.70 measured


def test_stream_table_shows_the_style_ceiling_column_only_when_measured() -> None:
    row = {
        "user": 0,
        "status": "passed",
        "version": "2",
        "seconds_to_canary": 12.5,
        "mnist_accuracy": 0.99,
        "mnist_drop_pp": 0.1,
        "untouched_accuracy": 0.99,
        "style_accuracy_before": 0.9,
        "style_accuracy": 0.95,
        "previous_users_style_accuracy": None,
        "quarantined": None,
    }

    without = _table([row])
    with_ceiling = _table([{**row, "style_ceiling_accuracy": 0.9833}])

    assert "style ceiling %" not in [c.header for c in without.columns]
    assert [c.header for c in with_ceiling.columns][-1] == "style ceiling %"
    assert list(with_ceiling.columns[-1].cells) == ["98.33"]
