"""Reviewed cheque uploads: the corrected amount's rules and when an upload is quarantined.

Pure: strings and counts in, a verdict out. The store gathers the counts in the transaction
that inserts the sample; the service turns `InvalidInputError` into a 422.

Quarantine reasons (the sample is stored, but kept out of training until a person looks):
- `conflicting_amount`: the same image is already stored with another amount;
- `contradicts_confident_readings`: the uploading API key contradicts confident stable
  readings (not sent to review) far more often than other keys do. The rule is the digit
  validator's `user_disagreement` (`trainer/validation.py`) applied per key:
  `rate > max(floor, factor x other keys' median rate)` once the key has `min_corrections`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from inkwell.errors import InvalidInputError

MAX_AMOUNT_DIGITS = 12
CONFLICTING_AMOUNT = "conflicting_amount"
CONTRADICTS_CONFIDENT = "contradicts_confident_readings"
REASONS = (CONFLICTING_AMOUNT, CONTRADICTS_CONFIDENT)
# What people write around the digits (as in the benchmark's labels.csv: `22.000.-` is 22000)
_DECORATION = re.compile(r"[\s.,'’\-=/$_]+")


def parse_amount(raw: object) -> str:
    """The corrected amount as digits only; separators, `$`, dashes and spaces are dropped."""
    text = str(raw).strip() if raw is not None else ""
    if not text:
        raise InvalidInputError(
            "The amount is missing. Send the amount the image shows as field 'amount', "
            "e.g. 22000 or 22.000,- (separators are dropped).",
            code="missing_amount",
        )
    digits = _DECORATION.sub("", text)
    if not digits:
        raise InvalidInputError(
            f"The amount {text[:40]!r} has no digits. Send 1 to {MAX_AMOUNT_DIGITS} digits, "
            "e.g. 22000 or 22.000,-.",
            code="invalid_amount",
        )
    if not digits.isascii() or not digits.isdigit():
        raise InvalidInputError(
            f"The amount {text[:40]!r} holds characters other than digits and separators "
            "(. , ' - = / $ and spaces). Send only the amount written in the field.",
            code="invalid_amount",
        )
    if len(digits) > MAX_AMOUNT_DIGITS:
        raise InvalidInputError(
            f"The amount has {len(digits)} digits; at most {MAX_AMOUNT_DIGITS} are accepted. "
            "Check that only the courtesy amount was typed.",
            code="invalid_amount",
        )
    return digits


@dataclass(frozen=True)
class ChequeSampleRules:
    """Thresholds of the per-key rule (from the service settings)."""

    min_corrections: int = 8
    contradiction_floor: float = 0.5
    contradiction_factor: float = 3.0


@dataclass(frozen=True)
class ChequeSampleCheck:
    """What the rules decide from, read in the same transaction as the insert."""

    reading_amount: str | None = None  # the corrected reading's amount, if a reading was named
    reading_confident: bool = False  # that reading was stable's and not sent to review
    conflicting_amounts: list[str] = field(default_factory=list)  # same image, other amounts
    key_confident: int = 0  # this key's earlier corrections of confident stable readings
    key_contradicted: int = 0  # ... of which disagreed with the reading
    other_keys: dict[str, tuple[int, int]] = field(default_factory=dict)  # same, per other key


def quarantine_reason(
    amount: str, check: ChequeSampleCheck, rules: ChequeSampleRules
) -> str | None:
    """Why this upload should be quarantined, or None to accept it."""
    if check.conflicting_amounts:
        return CONFLICTING_AMOUNT
    if not check.reading_confident or check.reading_amount == amount:
        return None
    corrections = check.key_confident + 1
    if corrections < rules.min_corrections:
        return None
    rate = (check.key_contradicted + 1) / corrections
    others = [c / n for n, c in check.other_keys.values() if n >= rules.min_corrections]
    threshold = rules.contradiction_floor
    if others:
        threshold = max(threshold, rules.contradiction_factor * float(np.median(others)))
    return CONTRADICTS_CONFIDENT if rate > threshold else None
