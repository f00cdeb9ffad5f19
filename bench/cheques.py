"""Latency of reading cheque amounts (what `inkwell bench cheques` prints)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inkwell.cheques.reader import ChequeReader
from inkwell.errors import InvalidInputError


@dataclass(frozen=True)
class Timing:
    """Per-read wall times in milliseconds."""

    latencies_ms: tuple[float, ...]
    refused: int

    @property
    def median_ms(self) -> float:
        return float(np.median(self.latencies_ms))

    def row(self) -> tuple[str, str, str]:
        lat = np.array(self.latencies_ms)
        return f"{np.median(lat):.1f}", f"{np.percentile(lat, 90):.1f}", f"{lat.max():.1f}"


def time_reads(
    reader: ChequeReader, images: Sequence[bytes], *, layout: str, warmup: int = 3
) -> Timing:
    """Read each encoded image once (after `warmup` untimed reads) and time it end to end."""
    for data in images[:warmup]:
        with contextlib.suppress(InvalidInputError):
            reader.read(data, layout=layout)
    latencies: list[float] = []
    refused = 0
    for data in images:
        started = time.perf_counter()
        try:
            reader.read(data, layout=layout)
        except InvalidInputError:
            refused += 1
        latencies.append(1000 * (time.perf_counter() - started))
    return Timing(tuple(latencies), refused)
