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
# What scanned bank cheques show (Chilean CAR fields read by eye): ".-", "-" and "=" after the
# amount are common; a lone "/" (which looks like a writer's 1) is rare.
REAL_TRAILERS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.46),
    (("dash",), 0.20),
    (("dash", "dash"), 0.03),
    (("equals",), 0.08),
    (("slash",), 0.02),
    (("dot", "dash"), 0.14),
    (("dot",), 0.05),
    (("dash", "slash"), 0.01),
    (("equals", "slash"), 0.01),
)


@dataclass(frozen=True)
class Token:
    """One pen mark: a digit (``digit`` 0-9) or a symbol from ``SYMBOLS``; ``raised`` = cents."""

    kind: str
    digit: int = -1
    raised: bool = False
    scale: float = 1.0  # height relative to the writer's digits (compact zeros are smaller)

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


@dataclass(frozen=True)
class WritingStyle:
    """How writers decorate amounts; the defaults are the original synthetic style."""

    thousands_rate: float = 0.35  # amounts of 4+ digits written with a thousands separator
    cents_rate: float = 0.20  # amounts of 3+ digits written with cents
    dot_thousands: float = 0.5  # share of "." (else ",") as the thousands separator
    compact_zeros: float = 0.0  # round thousands whose trailing "000" is written small
    dollar_rate: float = 0.12  # amounts with a hand-written "$" in front
    trailers: tuple[tuple[tuple[str, ...], float], ...] = TRAILERS

    @classmethod
    def real_cheques(cls) -> WritingStyle:
        """Closer to scanned bank cheques: "22.000.-", small quick zeros, few slashes."""
        return cls(
            thousands_rate=0.6,
            cents_rate=0.05,
            dot_thousands=0.85,
            compact_zeros=0.5,
            dollar_rate=0.02,
            trailers=REAL_TRAILERS,
        )


CLASSIC = WritingStyle()


def _pick_trailer(
    rng: np.random.Generator, trailers: tuple[tuple[tuple[str, ...], float], ...] = TRAILERS
) -> tuple[str, ...]:
    weights = np.array([w for _, w in trailers])
    return trailers[int(rng.choice(len(trailers), p=weights / weights.sum()))][0]


def _compact_scale(digits: str, integer_len: int, rng: np.random.Generator) -> list[float]:
    """Per-digit height: a run of trailing zeros of the integer part written small and quick."""
    scales = [1.0] * len(digits)
    run = len(digits[:integer_len]) - len(digits[:integer_len].rstrip("0"))
    if run >= 2 and run < integer_len:
        small = float(rng.uniform(0.5, 0.85))
        for i in range(integer_len - min(run, 3), integer_len):
            scales[i] = small * float(rng.uniform(0.93, 1.07))
    return scales


def write_amount(
    digits: str, rng: np.random.Generator, style_of: WritingStyle = CLASSIC
) -> WrittenAmount:
    """Decorate `digits` the way a writer might: separators, `$`, cents, trailing strokes."""
    n = len(digits)
    style = rng.random()
    thousands: str | None = None
    cents_sep: str | None = None
    if style < style_of.thousands_rate and n >= 4:
        if style_of is CLASSIC:  # keeps the classic data sets identical, draw for draw
            thousands = str(rng.choice(SEPARATORS))
        else:
            thousands = "dot" if rng.random() < style_of.dot_thousands else "comma"
    elif style < style_of.thousands_rate + style_of.cents_rate and n >= 3:
        cents_sep = str(rng.choice(SEPARATORS))
        if n >= 6 and rng.random() < 0.5:
            thousands = "dot" if cents_sep == "comma" else "comma"
    raised_cents = cents_sep is not None and rng.random() < 0.25
    integer_len = n - 2 if cents_sep is not None else n
    scales = [1.0] * n
    if style_of.compact_zeros > 0 and rng.random() < style_of.compact_zeros:
        scales = _compact_scale(digits, integer_len, rng)
    tokens: list[Token] = []
    if rng.random() < style_of.dollar_rate:
        tokens.append(Token("dollar"))
    for i, ch in enumerate(digits):
        if i == integer_len and cents_sep is not None and not raised_cents:
            tokens.append(Token(cents_sep))
        elif 0 < i < integer_len and thousands is not None and (integer_len - i) % 3 == 0:
            tokens.append(Token(thousands))
        raised = raised_cents and i >= integer_len
        tokens.append(Token("digit", int(ch), raised=raised, scale=scales[i]))
    tokens.extend(Token(name) for name in _pick_trailer(rng, style_of.trailers))
    return WrittenAmount(label=digits, tokens=tuple(tokens))


def sample_amount(
    rng: np.random.Generator,
    min_len: int = 2,
    max_len: int = 7,
    style_of: WritingStyle = CLASSIC,
) -> WrittenAmount:
    """A random amount with its written form."""
    return write_amount(sample_digits(rng, min_len, max_len), rng, style_of)


def blank_amount(rng: np.random.Generator, style_of: WritingStyle = CLASSIC) -> WrittenAmount:
    """No digits at all (an empty box, or only strokes): teaches the model to output nothing."""
    trailer = _pick_trailer(rng, style_of.trailers)
    return WrittenAmount(label="", tokens=tuple(Token(name) for name in trailer))
