"""The reviewed-upload rules: amounts as digits, and when an upload is quarantined."""

from __future__ import annotations

import pytest

from inkwell.cheques.review import (
    CONFLICTING_AMOUNT,
    CONTRADICTS_CONFIDENT,
    ChequeSampleCheck,
    ChequeSampleRules,
    parse_amount,
    quarantine_reason,
)
from inkwell.errors import InvalidInputError

RULES = ChequeSampleRules(min_corrections=4, contradiction_floor=0.5, contradiction_factor=3.0)


@pytest.mark.parametrize(
    ("written", "digits"),
    [("22.000.-", "22000"), ("1,480", "1480"), ("$ 1.500,00=", "150000"), ("007", "007")],
)
def test_separators_and_strokes_are_dropped(written: str, digits: str) -> None:
    assert parse_amount(written) == digits


@pytest.mark.parametrize("bad", ["", "  ", "-.-", "12a", "١٢", "1" * 13, None])
def test_amounts_without_1_to_12_digits_are_refused(bad: str | None) -> None:
    with pytest.raises(InvalidInputError):
        parse_amount(bad)


def confident(amount: str, mine: tuple[int, int], **others: tuple[int, int]) -> ChequeSampleCheck:
    return ChequeSampleCheck(
        reading_amount=amount,
        reading_confident=True,
        key_confident=mine[0],
        key_contradicted=mine[1],
        other_keys=dict(others),
    )


def test_another_amount_for_a_stored_image_is_quarantined() -> None:
    check = ChequeSampleCheck(conflicting_amounts=["1500"])
    assert quarantine_reason("1600", check, RULES) == CONFLICTING_AMOUNT


def test_a_key_is_judged_only_after_enough_corrections() -> None:
    assert quarantine_reason("7", confident("5", (2, 2)), RULES) is None
    assert quarantine_reason("7", confident("5", (3, 3)), RULES) == CONTRADICTS_CONFIDENT


def test_agreeing_or_unconfident_readings_are_never_evidence() -> None:
    assert quarantine_reason("5", confident("5", (30, 30)), RULES) is None
    unsure = ChequeSampleCheck(reading_amount="5", key_confident=30, key_contradicted=30)
    assert quarantine_reason("7", unsure, RULES) is None
    assert quarantine_reason("7", ChequeSampleCheck(), RULES) is None


def test_threshold_follows_other_keys_when_they_contradict_often() -> None:
    # every key contradicts ~30 % of confident readings: 3 x 0.3 = 0.9 beats the floor of 0.5
    peers = {"a": (10, 3), "b": (20, 6), "tiny": (1, 1)}
    assert quarantine_reason("7", confident("5", (9, 7), **peers), RULES) is None  # 0.8 <= 0.9
    assert quarantine_reason("7", confident("5", (9, 9), **peers), RULES) == CONTRADICTS_CONFIDENT
