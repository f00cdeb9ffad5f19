"""Pure routing decisions: which variant answers a request. No network, no clock.

Stickiness works by model version: every user gets a stable position in [0, 100) from a hash of
their id salted with the canary's version. A user is on the canary while the canary weight is
above their position, so as the weight only grows during a rollout (5 → 25 → 50 → 100 %) users
move to the canary in position order and never back to the old version until the rollout ends.
A new canary version reshuffles the order, so the same users are not always first.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from inkwell.errors import InvalidInputError
from inkwell.settings import CANARY, STABLE, VARIANTS
from inkwell.web.http import require_key

MAX_USER_ID = 128


class Reason(StrEnum):
    """Why a request went where it went (a metric label)."""

    OVERRIDE = "override"
    STICKY = "sticky"
    RANDOM = "random"
    NO_CANARY = "no_canary"
    BREAKER_OPEN = "breaker_open"


@dataclass(frozen=True)
class Split:
    """What the router currently does with traffic (from the rollout state or settings)."""

    weight: float = 0.0  # percent of users answered by the canary
    canary_version: str | None = None  # None: no canary is being rolled out
    stable_version: str | None = None
    shadow: bool = False
    shadow_fraction: float = 1.0

    @property
    def has_canary(self) -> bool:
        return self.canary_version is not None

    @property
    def salt(self) -> str:
        return self.canary_version or "-"


@dataclass(frozen=True)
class Choice:
    variant: str
    reason: Reason


def user_position(user_id: str, salt: str) -> float:
    """The user's stable position in [0, 100) for a rollout salted by `salt`."""
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * 100.0 / 2.0**64


def parse_override(value: str | None) -> str | None:
    """The explicit variant a client asked for with `X-Inkwell-Variant`, if any."""
    if value is None or value == "":
        return None
    variant = value.strip().lower()
    if variant not in VARIANTS:
        raise InvalidInputError(
            f"X-Inkwell-Variant must be 'stable' or 'canary', not {value[:40]!r}. "
            "Leave the header out to let the router choose.",
            code="invalid_variant",
        )
    return variant


def check_override_key(presented: str | None, accepted: Sequence[str]) -> None:
    """An override moves traffic the rollout judges: only the admin or tester key may ask."""
    require_key(
        presented,
        accepted,
        missing="X-Inkwell-Variant needs the X-Inkwell-Override-Key header with the router's "
        "admin key (INKWELL_ROUTER_ADMIN_API_KEY) or tester key (INKWELL_ROUTER_TESTER_API_KEY). "
        "Leave X-Inkwell-Variant out to let the router choose.",
        wrong="the X-Inkwell-Override-Key is neither the router's admin key nor its tester key.",
        missing_code="missing_override_key",
        wrong_code="invalid_override_key",
    )


def validate_user_id(user_id: str | None) -> str | None:
    """A usable user id, or None; overly long ids are a client error."""
    if user_id is None:
        return None
    user_id = user_id.strip()
    if not user_id:
        return None
    if len(user_id) > MAX_USER_ID:
        raise InvalidInputError(
            f"user id is {len(user_id)} characters; use at most {MAX_USER_ID}.",
            code="invalid_user_id",
        )
    return user_id


def choose(
    split: Split,
    *,
    user_id: str | None,
    override: str | None,
    canary_allowed: bool,
    rng: random.Random | None = None,
) -> Choice:
    """Pick the variant that answers. `canary_allowed` is False while the breaker is open."""
    if override is not None:
        if override == CANARY and not split.has_canary:
            return Choice(STABLE, Reason.NO_CANARY)
        if override == CANARY and not canary_allowed:
            return Choice(STABLE, Reason.BREAKER_OPEN)
        return Choice(override, Reason.OVERRIDE)
    if not split.has_canary or split.weight <= 0:
        return Choice(STABLE, Reason.NO_CANARY)
    if user_id is not None:
        on_canary = user_position(user_id, split.salt) < split.weight
        reason = Reason.STICKY
    else:
        on_canary = (rng or random).random() * 100.0 < split.weight
        reason = Reason.RANDOM
    if not on_canary:
        return Choice(STABLE, reason)
    if not canary_allowed:
        return Choice(STABLE, Reason.BREAKER_OPEN)
    return Choice(CANARY, reason)


def should_shadow(
    split: Split, answered_by: str, canary_allowed: bool, rng: random.Random | None = None
) -> bool:
    """Whether a request answered by stable also goes, as a copy, to the canary."""
    if not (split.shadow and split.has_canary and canary_allowed and answered_by == STABLE):
        return False
    return split.shadow_fraction >= 1.0 or (rng or random).random() < split.shadow_fraction
