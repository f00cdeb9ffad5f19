"""When the worker retrains: enough samples, a new user's first batch, debounce, max wait."""

from __future__ import annotations

import pytest

from trainer.settings import TrainerSettings
from trainer.worker import Pending, decide_trigger

SETTINGS = TrainerSettings(
    min_new_samples=64, new_user_min_samples=16, debounce_seconds=5, max_wait_seconds=120
)


def pending(count: int, *, new: bool = False, newest: float = 60, oldest: float = 60) -> Pending:
    return Pending(count, {"u": count}, frozenset({"u"} if new else ()), oldest, newest)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (pending(0), None),
        (pending(63), None),
        (pending(64), "min_new_samples"),
        (pending(64, newest=1), None),  # still uploading: debounce
        (pending(16, new=True), "new_user_batch"),
        (pending(15, new=True), None),
        (pending(16, new=False), None),  # a known user's 16 samples are not a first batch
        (pending(3, oldest=121), "max_wait"),
        (pending(64, newest=1, oldest=121), "min_new_samples"),  # waited long enough
    ],
)
def test_trigger_rule(state: Pending, expected: str | None) -> None:
    assert decide_trigger(state, SETTINGS) == expected


def test_settings_reject_unknown_optimizers() -> None:
    with pytest.raises(ValueError, match="choose from"):
        TrainerSettings(optimizers=("adam", "lion"))
