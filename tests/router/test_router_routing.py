"""Split decisions: weights, stickiness by model version, override header, shadow."""

from __future__ import annotations

import random

import pytest

from inkwell.errors import InvalidInputError
from router.routing import Reason, Split, choose, parse_override, should_shadow, user_position

USERS = [f"user-{i}" for i in range(2000)]


def on_canary(split: Split, user: str) -> bool:
    return choose(split, user_id=user, override=None, canary_allowed=True).variant == "canary"


def test_share_of_users_on_canary_matches_weight():
    for weight in (5, 25, 50):
        split = Split(weight=weight, canary_version="7")
        share = sum(on_canary(split, u) for u in USERS) / len(USERS)
        assert abs(share - weight / 100) < 0.03


def test_users_move_to_canary_in_weight_order_and_never_back():
    seen: dict[str, bool] = {}
    for weight in (0, 5, 25, 50, 100):
        split = Split(weight=weight, canary_version="7")
        for user in USERS:
            now = on_canary(split, user)
            assert not (seen.get(user) and not now), f"{user} went back to stable at {weight} %"
            seen[user] = now
    assert all(seen.values())


def test_same_user_gets_same_answer_every_time():
    split = Split(weight=30, canary_version="3")
    for user in USERS[:200]:
        assert len({on_canary(split, user) for _ in range(5)}) == 1


def test_each_canary_version_reshuffles_who_goes_first():
    first_a = {u for u in USERS if user_position(u, "7") < 5}
    first_b = {u for u in USERS if user_position(u, "8") < 5}
    assert first_a and first_b
    assert len(first_a & first_b) < len(first_a) / 2


def test_without_canary_everyone_gets_stable():
    split = Split(weight=50, canary_version=None)
    assert not any(on_canary(split, u) for u in USERS[:100])
    choice = choose(split, user_id=None, override="canary", canary_allowed=True)
    assert (choice.variant, choice.reason) == ("stable", Reason.NO_CANARY)


def test_override_header_wins_over_the_split():
    split = Split(weight=0, canary_version="9")
    choice = choose(split, user_id="u", override="canary", canary_allowed=True)
    assert (choice.variant, choice.reason) == ("canary", Reason.OVERRIDE)
    split = Split(weight=100, canary_version="9")
    assert choose(split, user_id="u", override="stable", canary_allowed=True).variant == "stable"


def test_open_breaker_sends_canary_users_to_stable():
    split = Split(weight=100, canary_version="9")
    choice = choose(split, user_id="u", override=None, canary_allowed=False)
    assert (choice.variant, choice.reason) == ("stable", Reason.BREAKER_OPEN)


def test_anonymous_requests_split_randomly_by_weight():
    rng = random.Random(0)
    split = Split(weight=20, canary_version="2")
    picks = [
        choose(split, user_id=None, override=None, canary_allowed=True, rng=rng).variant
        for _ in range(5000)
    ]
    assert abs(picks.count("canary") / 5000 - 0.2) < 0.03


@pytest.mark.parametrize("value", ["Canary", " stable "])
def test_override_is_case_and_space_insensitive(value):
    assert parse_override(value) == value.strip().lower()


def test_unknown_override_is_a_clear_client_error():
    with pytest.raises(InvalidInputError) as info:
        parse_override("blue")
    assert info.value.status_code == 422
    assert "stable" in info.value.message and "canary" in info.value.message


def test_shadow_copies_only_requests_answered_by_stable():
    split = Split(weight=10, canary_version="4", shadow=True)
    assert should_shadow(split, "stable", canary_allowed=True)
    assert not should_shadow(split, "canary", canary_allowed=True)
    assert not should_shadow(split, "stable", canary_allowed=False)
    assert not should_shadow(Split(canary_version="4"), "stable", canary_allowed=True)


def test_shadow_fraction_samples_copies():
    rng = random.Random(1)
    split = Split(weight=0, canary_version="4", shadow=True, shadow_fraction=0.25)
    copies = sum(should_shadow(split, "stable", True, rng) for _ in range(4000))
    assert abs(copies / 4000 - 0.25) < 0.03
