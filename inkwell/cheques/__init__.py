"""Cheque courtesy-amount recognition: synthetic data, CRNN + CTC recogniser, amount-box
locator, training, evaluation, and `ChequeReader` (the model contract, no HTTP inside).

`ChequeReader` and `ChequeReading` are imported lazily so `inkwell --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inkwell.cheques.reader import ChequeReader, ChequeReading

__all__ = ["ChequeReader", "ChequeReading"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from inkwell.cheques import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'inkwell.cheques' has no attribute {name!r}")
