"""Evaluate a `ChequeReader` on a labelled folder, and time it (no printing, no MLflow)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from inkwell.cheques.dataset import read_labels
from inkwell.cheques.metrics import DEFAULT_REVIEW_RATES, EvalReport, evaluate_readings
from inkwell.cheques.reader import ChequeReading
from inkwell.errors import InvalidInputError


class AmountReader(Protocol):
    """What evaluation needs of a reader (`ChequeReader` is the real one)."""

    def read(
        self, image: bytes | np.ndarray, *, layout: str = "auto", decoder: str = "greedy"
    ) -> ChequeReading: ...


@dataclass
class FolderEvaluation:
    """The report plus per-image read latencies (milliseconds, decode + model + CTC)."""

    report: EvalReport
    latencies_ms: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)  # error code → count

    @property
    def median_ms(self) -> float:
        return float(np.median(self.latencies_ms)) if self.latencies_ms else 0.0

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 90)) if self.latencies_ms else 0.0


def evaluate_folder(
    reader: AmountReader,
    folder: Path,
    *,
    layout: str = "auto",
    decoder: str = "greedy",
    review_rates: Sequence[float] = DEFAULT_REVIEW_RATES,
    labels_file: Path | None = None,
    on_item: Callable[[int], None] | None = None,
) -> FolderEvaluation:
    """Read every image listed in the folder's labels CSV and score the readings.

    An image the reader refuses (no ink, no digits, no amount box found) counts as the empty
    reading with confidence 0: right when the label is empty, wrong otherwise, and always the
    first to be sent to review.
    """
    rows = read_labels(folder, labels_file)
    names, truths, predictions, confidences, flags = [], [], [], [], []
    latencies: list[float] = []
    refused: dict[str, int] = {}
    for i, row in enumerate(rows):
        data = row.path.read_bytes()
        started = time.perf_counter()
        try:
            reading = reader.read(data, layout=layout, decoder=decoder)
            prediction, confidence, flag = reading.amount, reading.confidence, reading.needs_review
        except InvalidInputError as exc:
            prediction, confidence, flag = "", 0.0, True
            refused[exc.code] = refused.get(exc.code, 0) + 1
        latencies.append(1000 * (time.perf_counter() - started))
        names.append(row.path.name)
        truths.append(row.label)
        predictions.append(prediction)
        confidences.append(confidence)
        flags.append(flag)
        if on_item is not None:
            on_item(i + 1)
    report = evaluate_readings(
        names,
        truths,
        predictions,
        confidences,
        flags,
        review_rates=review_rates,
        unreadable=sum(refused.values()),
    )
    return FolderEvaluation(report, latencies, refused)
