"""API keys at the upload edge: which user ids a key may upload for, and how fast.

A configured key is `KEY` (unbound: any user id) or `KEY:SCOPE`, where SCOPE is user ids or
prefixes ending in `*`, separated by `|` (`key:alice|bob`, `key:branch-12-*`). Binding keys
stops one key posing as many users to slip past the per-user poisoning checks.

The rate limit is a token bucket per key in this process's memory: with N processes a key gets
up to N times the configured rate (the Ingress limits the total). The daily quota is counted in
the sample database (`SharedDailyQuota`), so it holds across every worker and replica.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inkwell.errors import ForbiddenError, RateLimitedError

SCOPE_SEPARATOR = ":"
SECONDS_PER_DAY = 86_400


def key_id(api_key: str | None) -> str:
    """A stable, non-secret name for an API key (its sha256 prefix)."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KeyGrant:
    """One configured key and the user ids it may upload for (`None`: any)."""

    key: str
    users: tuple[str, ...] | None = None

    def allows(self, user_id: str) -> bool:
        """Whether this key may upload samples as `user_id`."""
        if self.users is None:
            return True
        return any(
            user_id.startswith(pattern[:-1]) if pattern.endswith("*") else user_id == pattern
            for pattern in self.users
        )

    def describe(self) -> str:
        """The scope in the setting's own syntax, for error messages."""
        return "|".join(self.users) if self.users is not None else "*"


def split_scope(entry: str) -> tuple[str, tuple[str, ...] | None]:
    """`KEY[:SCOPE]` as (key, patterns); ValueError naming the fix for a malformed scope."""
    key, separator, scope = entry.partition(SCOPE_SEPARATOR)
    if not separator:
        return key, None
    patterns = tuple(part.strip() for part in scope.split("|"))
    for pattern in patterns:
        if not pattern or "*" in pattern[:-1]:
            raise ValueError(
                f"the key's scope {scope!r} is malformed: write user ids or prefixes ending in "
                "'*' separated by '|', e.g. KEY:alice|bob or KEY:branch-12-*"
            )
    return key, patterns


def check_user(grant: KeyGrant, user_id: str) -> None:
    """Raise ForbiddenError unless `grant` may upload as `user_id`."""
    if not grant.allows(user_id):
        raise ForbiddenError(
            f"This API key may not upload samples as user_id {user_id!r}; it is bound to "
            f"{grant.describe()!r}. Send a user_id the key allows, or use that user's key.",
            code="user_id_not_allowed",
        )


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class KeyRateLimiter:
    """A token bucket (`rate_per_s`, `burst`) per key; a rate of 0 turns it off."""

    rate_per_s: float
    burst: int
    clock: Callable[[], float] = time.time
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def admit(self, key: str) -> None:
        """Take one request from `key`'s allowance, or raise RateLimitedError (429)."""
        if self.rate_per_s <= 0:
            return
        now = self.clock()
        name = key_id(key)
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = _Bucket(tokens=float(self.burst), updated=now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate_per_s
            raise RateLimitedError(
                f"This API key sends uploads faster than {self.rate_per_s:g} per second "
                f"(bursts of {self.burst}). Retry after {math.ceil(wait)} s, and pace "
                "the uploads.",
                retry_after_s=math.ceil(wait),
            )
        bucket.tokens -= 1.0


# (key id, day since the epoch, quota) -> whether one more upload was counted
QuotaCounter = Callable[[str, int, int], bool]


@dataclass
class SharedDailyQuota:
    """Uploads per key per UTC day, counted by `take` in a store every process shares (the
    sample database's `take_daily_quota`), so N workers or replicas never give N quotas."""

    quota: int
    take: QuotaCounter
    clock: Callable[[], float] = time.time

    def admit(self, key: str) -> None:
        """Count one upload of `key` today, or raise RateLimitedError (429) until midnight UTC.
        Blocking (a database round trip): call it off the event loop."""
        now = self.clock()
        day = int(now // SECONDS_PER_DAY)
        if not self.take(key_id(key), day, self.quota):
            wait = math.ceil((day + 1) * SECONDS_PER_DAY - now)
            raise RateLimitedError(
                f"This API key has used its quota of {self.quota:,} uploads today (UTC). "
                f"Retry after {wait} s, or ask for a higher quota.",
                retry_after_s=wait,
                code="quota_exceeded",
            )
