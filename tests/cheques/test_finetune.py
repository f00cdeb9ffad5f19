"""Fine-tuning on reviewed fields: the split, the augmentation, the mixed batches, the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inkwell.cheques.dataset import LabelledImage
from inkwell.cheques.finetune import (
    FinetuneConfig,
    MixedStream,
    ReplayDistillation,
    augment_real,
    finetune_reader,
    replay_styles,
    split_rows,
)
from inkwell.cheques.model import CRNN
from inkwell.cheques.pools import DigitPool
from inkwell.cheques.reader import ChequeReader
from inkwell.cheques.stream import FieldBatch
from inkwell.cheques.synth import generate_fields, synth_config
from inkwell.cheques.train import ctc_loss, fit_recogniser
from inkwell.errors import InvalidInputError
from tests.cheques.helpers import TINY, always_five


def _fields(pool: DigitPool, n: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """Stand-ins for reviewed fields: rendered amount fields as gray arrays (1 = white)."""
    return [
        (s.image.astype(np.float32) / 255.0, s.label)
        for s in generate_fields(pool, n, seed, synth_config("real"))
    ]


def test_split_is_fixed_by_its_seed_and_disjoint() -> None:
    rows = [LabelledImage(Path(f"f{i}.jpg"), str(100 + i)) for i in range(50)]
    train, test = split_rows(rows, 12, seed=3)
    again_train, again_test = split_rows(rows, 12, seed=3)
    assert (train, test) == (again_train, again_test)
    assert len(test) == 12 and len(train) == 38
    assert not {r.path for r in train} & {r.path for r in test}
    assert split_rows(rows, 12, seed=4)[1] != test


def test_split_refuses_a_test_part_as_big_as_the_folder() -> None:
    rows = [LabelledImage(Path(f"f{i}.jpg"), "12") for i in range(5)]
    with pytest.raises(InvalidInputError, match="between 1 and 4"):
        split_rows(rows, 5, seed=0)


def test_augmentation_changes_the_scan_but_keeps_it_an_image(test_pool: DigitPool) -> None:
    gray, _ = _fields(test_pool, 1, seed=1)[0]
    first = augment_real(gray, np.random.default_rng(0))
    assert first.dtype == np.float32 and first.min() >= 0.0 and first.max() <= 1.0
    assert abs(first.shape[0] - gray.shape[0]) <= 0.2 * gray.shape[0] + 6
    assert abs(first.shape[1] - gray.shape[1]) <= 0.2 * gray.shape[1] + 10
    same = augment_real(gray, np.random.default_rng(0))
    assert np.array_equal(first, same)
    other = augment_real(gray, np.random.default_rng(1))
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_mixed_batches_hold_the_real_share_and_synthetic_replay(train_pool: DigitPool) -> None:
    real = [(gray, "4242") for gray, _ in _fields(train_pool, 3, seed=2)]
    cfg = FinetuneConfig(batch_size=8, real_fraction=0.25)
    batch = next(iter(MixedStream(real, train_pool, cfg)))
    assert len(batch.labels) == 8
    assert batch.labels[:2] == ["4242", "4242"]
    assert "4242" not in batch.labels[2:]  # synthetic amounts drawn from their own stream
    assert int(batch.target_lengths.sum()) == len(batch.targets)
    assert batch.replay is not None  # the synthetic rows are marked as replay, the real not
    assert batch.replay.tolist() == [False, False] + [True] * 6


def test_fine_tuning_learns_from_reviewed_fields_and_leaves_the_parent_alone(
    train_pool: DigitPool,
) -> None:
    parent = always_five()
    before = {k: v.clone() for k, v in parent.model.state_dict().items()}
    fields = _fields(train_pool, 24, seed=5)
    cfg = FinetuneConfig(steps=6, batch_size=8, lr=5e-3, eval_every=0, threads=1)
    outcome = finetune_reader(parent, fields[:16], fields[16:], train_pool, cfg)
    for key, value in parent.model.state_dict().items():
        assert torch.equal(value, before[key])
    tuned = outcome.reader.model.state_dict()
    assert any(not torch.equal(tuned[k], before[k]) for k in before)
    assert outcome.calibration_report.n == 8  # calibrated on the held-out reviewed fields
    assert outcome.reader.meta["finetune"]["real_fields"] == 16
    assert outcome.reader.meta["calibration"] == outcome.calibration.to_dict()


def _mixed_batch(pool: DigitPool) -> FieldBatch:
    real = [(gray, "4242") for gray, _ in _fields(pool, 3, seed=2)]
    return next(iter(MixedStream(real, pool, FinetuneConfig(batch_size=8, real_fraction=0.5))))


def _copy(model: CRNN) -> CRNN:
    twin = CRNN(model.config)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def test_distillation_costs_nothing_while_the_reader_still_reads_like_stable(
    train_pool: DigitPool,
) -> None:
    batch = _mixed_batch(train_pool)
    stable = CRNN(TINY).eval()
    loss = ReplayDistillation(_copy(stable), weight=10.0, temperature=2.0)
    assert torch.allclose(loss(stable, batch, False), ctc_loss(stable, batch, False), atol=1e-5)
    drifted = _copy(stable)
    with torch.no_grad():
        drifted.classify.bias.add_(torch.linspace(-3.0, 3.0, drifted.classify.bias.numel()))
    assert float(loss(drifted, batch, False)) > float(ctc_loss(drifted, batch, False)) + 0.1


def test_distillation_leaves_the_reviewed_rows_to_the_ctc_loss(train_pool: DigitPool) -> None:
    batch = _mixed_batch(train_pool)
    batch.replay = torch.zeros(len(batch.labels), dtype=torch.bool)  # no replayed row
    stable, student = CRNN(TINY).eval(), CRNN(TINY).eval()
    loss = ReplayDistillation(stable, weight=10.0, temperature=2.0)
    assert torch.equal(loss(student, batch, False), ctc_loss(student, batch, False))


def test_distillation_keeps_the_tuned_reader_closer_to_stable_on_replayed_fields(
    train_pool: DigitPool,
) -> None:
    torch.manual_seed(0)
    parent = ChequeReader(CRNN(TINY).eval(), always_five().meta)  # soft posteriors to move
    fields = _fields(train_pool, 24, seed=5)
    probe = _mixed_batch(train_pool)

    def drift(weight: float) -> float:
        cfg = FinetuneConfig(
            steps=20, batch_size=8, lr=3e-3, eval_every=0, threads=1, distill_weight=weight
        )
        tuned = finetune_reader(parent, fields[:16], fields[16:], train_pool, cfg).reader.model
        with torch.no_grad():  # the KL part of the loss: how far the replayed rows moved
            kl = ReplayDistillation(parent.model, 1.0, 1.0)(tuned, probe, False)
            return float(kl - ctc_loss(tuned, probe, False))

    # a tiny random reader's posteriors are soft, so its pull needs a larger weight to show
    assert drift(100.0) < 0.25 * drift(0.0)


def test_frozen_norm_statistics_stay_put_while_the_weights_learn(train_pool: DigitPool) -> None:
    batch = _mixed_batch(train_pool)

    def tuned(freeze: bool) -> tuple[CRNN, CRNN]:
        model = CRNN(TINY)
        before = _copy(model)
        cfg = FinetuneConfig(steps=3, batch_size=8, eval_every=0).train_config()
        cfg.freeze_norm_stats = freeze
        fit_recogniser(model, iter([batch] * 3), cfg)
        return before, model

    def stats(model: CRNN) -> list[torch.Tensor]:
        return [v for k, v in model.state_dict().items() if k.endswith("running_mean")]

    before, frozen = tuned(True)
    pairs = zip(stats(before), stats(frozen), strict=True)
    assert stats(frozen) and all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(before.classify.weight, frozen.classify.weight)
    before, moving = tuned(False)
    assert not all(torch.equal(a, b) for a, b in zip(stats(before), stats(moving), strict=True))


def test_a_negative_distillation_weight_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="distill_weight must be >= 0"):
        FinetuneConfig(distill_weight=-1.0)


def test_replay_of_both_styles_splits_the_synthetic_rows(train_pool: DigitPool) -> None:
    real = [(gray, "4242") for gray, _ in _fields(train_pool, 3, seed=2)]
    cfg = FinetuneConfig(batch_size=9, real_fraction=0.34, synth_style="both")
    stream = MixedStream(real, train_pool, cfg)
    assert [next(s).inputs.shape[0] for s in stream.synth] == [3, 3]  # classic, real
    batch = next(stream)
    assert batch.replay is not None and batch.replay.tolist() == [False] * 3 + [True] * 6
    assert replay_styles("both") == ("classic", "real") and replay_styles("real") == ("real",)


def test_an_unknown_replay_style_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="classic, real, both"):
        replay_styles("photos")
