"""What gets written in a courtesy-amount box: the digit string and the pen tokens around it.

The label of an amount is its digits only (``"1.500,-"`` is labelled ``"1500"``). The written
form adds what people put around digits on real cheques: thousands separators (``.`` or ``,``),
a decimal comma before cents, an optional hand-written ``$``, trailing dashes, slashes or an
equals sign that stop anyone appending digits, and sometimes raised (superscript) cents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYMBOLS = ("dot", "comma", "dash", "equals", "slash", "dollar")
SEPARATORS = ("dot", "comma")
# Trailing strokes seen after amounts, as token names, with their relative frequency.
TRAILERS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.50),
    (("dash",), 0.16),
    (("dash", "dash"), 0.05),
    (("equals",), 0.06),
    (("slash",), 0.05),
    (("slash", "dash"), 0.04),
    (("dot", "dash"), 0.05),
    (("dash", "slash"), 0.03),
    (("slash", "slash"), 0.03),
    (("equals", "slash"), 0.03),
)


@dataclass(frozen=True)
class Token:
    """One pen mark: a digit (``digit`` 0-9) or a symbol from ``SYMBOLS``; ``raised`` = cents."""

    kind: str
    digit: int = -1
    raised: bool = False

    @property
    def is_digit(self) -> bool:
        return self.kind == "digit"


@dataclass(frozen=True)
class WrittenAmount:
    """An amount as written: its label (digits only) and the sequence of pen tokens."""

    label: str
    tokens: tuple[Token, ...]


def sample_digits(rng: np.random.Generator, min_len: int = 2, max_len: int = 7) -> str:
    """A digit string shaped like real amounts: round sums, arbitrary sums, a few odd ones."""
    n = int(rng.integers(min_len, max_len + 1))
    style = rng.random()
    first = str(rng.integers(1, 10))
    if style < 0.40:  # round amount: 1-3 significant digits then zeros (15000, 2500, 120)
        k = int(rng.integers(1, min(3, n) + 1))
        body = first + "".join(str(d) for d in rng.integers(0, 10, k - 1))
        return body + "0" * (n - k)
    if style < 0.90:  # arbitrary amount without a leading zero
        return first + "".join(str(d) for d in rng.integers(0, 10, n - 1))
    return "".join(str(d) for d in rng.integers(0, 10, n))  # anything at all, zeros included


def _pick_trailer(rng: np.random.Generator) -> tuple[str, ...]:
    weights = np.array([w for _, w in TRAILERS])
    return TRAILERS[int(rng.choice(len(TRAILERS), p=weights / weights.sum()))][0]


def write_amount(digits: str, rng: np.random.Generator) -> WrittenAmount:
    """Decorate `digits` the way a writer might: separators, `$`, cents, trailing strokes."""
    n = len(digits)
    style = rng.random()
    thousands: str | None = None
    cents_sep: str | None = None
    if style < 0.35 and n >= 4:
        thousands = str(rng.choice(SEPARATORS))
    elif style < 0.55 and n >= 3:
        cents_sep = str(rng.choice(SEPARATORS))
        if n >= 6 and rng.random() < 0.5:
            thousands = "dot" if cents_sep == "comma" else "comma"
    raised_cents = cents_sep is not None and rng.random() < 0.25
    integer_len = n - 2 if cents_sep is not None else n
    tokens: list[Token] = []
    if rng.random() < 0.12:
        tokens.append(Token("dollar"))
    for i, ch in enumerate(digits):
        if i == integer_len and cents_sep is not None and not raised_cents:
            tokens.append(Token(cents_sep))
        elif 0 < i < integer_len and thousands is not None and (integer_len - i) % 3 == 0:
            tokens.append(Token(thousands))
        tokens.append(Token("digit", int(ch), raised=raised_cents and i >= integer_len))
    tokens.extend(Token(name) for name in _pick_trailer(rng))
    return WrittenAmount(label=digits, tokens=tuple(tokens))


def sample_amount(rng: np.random.Generator, min_len: int = 2, max_len: int = 7) -> WrittenAmount:
    """A random amount with its written form."""
    return write_amount(sample_digits(rng, min_len, max_len), rng)


def blank_amount(rng: np.random.Generator) -> WrittenAmount:
    """No digits at all (an empty box, or only strokes): teaches the model to output nothing."""
    return WrittenAmount(label="", tokens=tuple(Token(name) for name in _pick_trailer(rng)))
