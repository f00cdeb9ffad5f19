"""Read `{"images": [28x28 integer arrays, ...]}` straight into NumPy, without Python objects.

The common JSON batch (0..255 integers, any JSON whitespace) is parsed by vectorised NumPy on
the body's bytes: no 200,000 Python ints and 7,000 lists from a JSON parser, then no
`np.asarray` over them (together ~10 ms per 256 images, as much as the forward pass of a
small model). It accepts only a strict subset of JSON whose meaning is unambiguous: the one
key `images`, exactly N x 28 x 28 non-negative integers written without leading zeros, the
brackets and commas in exactly that nesting. Anything else (floats, other keys, a wrong shape,
a syntax error) returns None, and the caller parses the body the general way, which gives
every problem its own error message. So this reader never decides that a body is invalid.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_PREFIX = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"images"[ \t\r\n]*:[ \t\r\n]*')
_SPACE = b" \t\r\n"
_ROW = b"[" + b"," * 27 + b"]"
_IMAGE = b"[" + b",".join([_ROW] * 28) + b"]"  # one image's brackets and commas
_MAX_DIGITS = 3  # 0..255; longer numbers are out of range (the general path says so)
_ZERO = ord("0")


@lru_cache(maxsize=4)
def _skeleton(count: int) -> tuple[bytes, np.ndarray]:
    """The marks of `count` images and, per gap between two marks, whether a number goes there."""
    text = b"[" + b",".join([_IMAGE] * count) + b"]"
    marks = np.frombuffer(text, np.uint8)
    # A number sits between two marks unless the first closes a list or the second opens one.
    return text, (marks[:-1] != ord("]")) & (marks[1:] != ord("["))


def _runs(digits: np.ndarray) -> int:
    """How many runs of consecutive digits (numbers) a digit mask holds."""
    return int(np.count_nonzero(digits[1:] & ~digits[:-1])) + int(digits[0])


def read_image_batch(body: bytes) -> np.ndarray | None:
    """(N, 28, 28) float32 of the raw integers, or None: not the plain form (parse generally)."""
    head = _PREFIX.match(body)
    tail = body.rstrip(_SPACE)
    if head is None or not tail.endswith(b"}"):
        return None
    region = tail[head.end() : -1].rstrip(_SPACE)
    if not region:
        return None
    compact = region.translate(None, _SPACE)
    text = np.frombuffer(compact, np.uint8)
    digits = (text - _ZERO) < 10  # uint8 arithmetic wraps: True exactly for b"0".."9"
    if len(compact) != len(region) and _runs(digits) != _runs(
        (np.frombuffer(region, np.uint8) - _ZERO) < 10
    ):
        return None  # whitespace inside a number ("1 2"): not JSON
    marks = np.flatnonzero(~digits)
    count, rest = divmod(len(marks) - 1, len(_IMAGE) + 1)
    if rest or count < 1 or marks[0] != 0 or marks[-1] != len(text) - 1:
        return None
    skeleton, slots = _skeleton(count)
    # Every non-digit is one of the expected marks, in order (so nothing but "[],": the
    # whitespace went above), and digits fill exactly the gaps where numbers go.
    if text[marks].tobytes() != skeleton:
        return None
    gaps = np.diff(marks) - 1
    if not np.array_equal(gaps > 0, slots):
        return None
    lengths = gaps[slots]
    starts = marks[:-1][slots] + 1
    if int(lengths.max()) > _MAX_DIGITS:
        return None
    padded = np.frombuffer(compact + b"\0\0", np.uint8).astype(np.int16) - _ZERO
    first = padded[starts]
    if ((first == 0) & (lengths > 1)).any():
        return None  # a leading zero ("007") is not JSON
    two = first * 10 + padded[starts + 1]
    three = two * 10 + padded[starts + 2]
    values = np.where(lengths == 1, first, np.where(lengths == 2, two, three))
    return values.astype(np.float32).reshape(count, 28, 28)
