"""`inkwell bench continual`: Split-MNIST and the new-customers stream, printed as tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.split import BenchConfig, SplitResult, run_split_mnist
from inkwell.console import console
from inkwell.data import load_split
from inkwell.train import split_tensors


def _split_table(results: list[SplitResult]) -> Table:
    table = Table(
        "method",
        "buffer",
        "seeds",
        "average accuracy %",
        "backward transfer pp",
        "forgetting pp",
        "seconds/run",
        title="Class-incremental Split-MNIST (5 tasks x 2 digits, single head)",
    )
    groups: dict[tuple[str, int], list[SplitResult]] = {}
    for result in results:
        groups.setdefault((result.method, result.buffer_size), []).append(result)
    for (method, size), runs in groups.items():

        def fmt(values: list[float], runs: list[SplitResult] = runs) -> str:
            mean = 100 * float(np.mean(values))
            return f"{mean:.2f}" + (
                f" ± {100 * float(np.std(values)):.2f}" if len(runs) > 1 else ""
            )

        table.add_row(
            method,
            str(size) if size else "-",
            str(len(runs)),
            fmt([r.average_accuracy for r in runs]),
            fmt([r.backward_transfer for r in runs]),
            fmt([r.forgetting for r in runs]),
            f"{np.mean([r.seconds for r in runs]):.0f}",
        )
    return table


def run_split(
    *,
    buffers: Sequence[int],
    seeds: Sequence[int],
    methods: Sequence[str],
    epochs: int,
    threads: int | None,
) -> list[dict[str, Any]]:
    """Split-MNIST for every method x buffer x seed; prints a row per finished run."""
    train = split_tensors(load_split("train"))
    test = split_tensors(load_split("test"))
    cfg = BenchConfig(epochs=epochs, threads=threads or 1)

    def report(result: SplitResult) -> None:
        console.print(
            f"split-mnist {result.method} buffer={result.buffer_size} seed={result.seed}: "
            f"avg {100 * result.average_accuracy:.2f} %, BWT {100 * result.backward_transfer:.2f}"
            f" pp, forgetting {100 * result.forgetting:.2f} pp ({result.seconds:.0f} s)"
        )

    results = run_split_mnist(
        train, test, methods=methods, buffers=buffers, seeds=seeds, cfg=cfg, on_result=report
    )
    Console(width=160).print(_split_table(results))
    return [
        {
            "method": r.method,
            "buffer": r.buffer_size,
            "seed": r.seed,
            "average_accuracy": r.average_accuracy,
            "backward_transfer": r.backward_transfer,
            "forgetting": r.forgetting,
            "matrix": r.matrix,
            "seconds": r.seconds,
        }
        for r in results
    ]


def run_bench(
    *,
    stream: str,
    buffers: Sequence[int],
    seeds: Sequence[int],
    methods: Sequence[str],
    epochs: int,
    users: int,
    samples_per_user: int,
    base_home: Path | None,
    base_epochs: int,
    base_augment: str,
    threads: int | None,
    output: Path | None,
    style_ceiling: int = 0,
) -> dict[str, Any]:
    """Run the selected streams and print (and optionally save) their numbers."""
    if stream not in ("split", "customers", "both"):
        raise ValueError("stream must be split, customers or both")
    results: dict[str, Any] = {}
    if stream in ("split", "both"):
        results["split_mnist"] = run_split(
            buffers=buffers, seeds=seeds, methods=methods, epochs=epochs, threads=threads
        )
    if stream in ("customers", "both"):
        from bench.customers import run_customers

        results["customers"] = run_customers(
            users=users,
            samples_per_user=samples_per_user,
            base_home=base_home,
            base_epochs=base_epochs,
            base_augment=base_augment,
            threads=threads,
            style_ceiling_samples=style_ceiling,
        )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        console.print(f"numbers saved to {output}")
    return results
