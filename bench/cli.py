"""`inkwell bench ...`: the benchmarks that print numbers (results go in docs/benchmarks.md).

The hub (`inkwell_app.cli`) attaches `bench_app`; the components know nothing of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bench.router import bench_router
from bench.service import bench_service
from inkwell.cheques.cli import ModelDirOpt, ModelOpt, load_reader
from inkwell.console import DataOpt, check_choice, console, progress_bar, progress_step
from inkwell.optim import OPTIMIZERS

bench_app = typer.Typer(help="Benchmarks that print numbers.", no_args_is_help=True)


def bench_optimizers(
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per optimizer (same budget).")] = 2,
    batch_size: int = 128,
    seed: int = 0,
    target: Annotated[float, typer.Option(help="Accuracy target for steps/seconds-to.")] = 0.98,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps.")] = 50,
    train_size: Annotated[int | None, typer.Option(help="Use the first N training images.")] = None,
    test_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Evaluate on the first N MNIST test images (default: all 10,000): a quicker "
            "run whose accuracies are noisier.",
        ),
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="Subset of optimizers.")] = None,
    plot: Annotated[Path, typer.Option(help="Where to save the PNG.")] = Path(
        "docs/img/optimizers.png"
    ),
    data: DataOpt = None,
) -> None:
    """Train one model per optimizer under the same budget; print a table, save a plot."""
    for name in only or ():
        check_choice(name, OPTIMIZERS, "--only")
    from bench.optimizers import plot_runs, run_optimizer
    from inkwell.data import load_split
    from inkwell.train import split_tensors

    names = only or list(OPTIMIZERS)
    x, y = split_tensors(load_split("train", data))
    if train_size:
        x, y = x[:train_size], y[:train_size]
    test = split_tensors(load_split("test", data))
    if test_size:
        test = test[0][:test_size], test[1][:test_size]
    runs = []
    steps = -(-x.shape[0] // batch_size) * epochs
    with progress_bar() as progress:
        for name in names:
            task = progress.add_task(name, total=steps, info="")
            runs.append(
                run_optimizer(
                    name,
                    (x, y),
                    test,
                    epochs=epochs,
                    batch_size=batch_size,
                    seed=seed,
                    eval_every=eval_every,
                    target=target,
                    on_step=progress_step(progress, task),
                )
            )
    table = Table(
        "optimizer",
        "peak lr",
        "final acc %",
        f"steps to {100 * target:g} %",
        f"seconds to {100 * target:g} %",
        "train s",
        "optimizer state",
        title=f"{epochs} epoch(s), batch {batch_size}, {x.shape[0]} images, seed {seed}, "
        f"evaluated on {test[0].shape[0]} test images",
    )
    for r in runs:
        table.add_row(
            r.name,
            f"{r.lr:g}",
            f"{100 * r.final_accuracy:.2f}",
            str(r.steps_to_target) if r.steps_to_target else "not reached",
            f"{r.seconds_to_target:.1f}" if r.seconds_to_target else "not reached",
            f"{r.train_seconds:.1f}",
            f"{r.state_bytes / 1024:.1f} KiB",
        )
    console.print(table)
    console.print(f"plot saved to {plot_runs(runs, plot, target)}")


def bench_continual(
    stream: Annotated[
        str,
        typer.Option(
            help="split (Split-MNIST), customers (new users), both, or cheques (a bank's "
            "reviewed cheque fields, with --data)."
        ),
    ] = "both",
    buffers: Annotated[str, typer.Option(help="Split-MNIST buffer sizes.")] = "200,500,1000",
    seeds: Annotated[str, typer.Option(help="Split-MNIST seeds.")] = "0,1,2",
    methods: Annotated[
        str, typer.Option(help="naive, avalanche_replay, inkwell (comma-separated).")
    ] = "naive,avalanche_replay,inkwell",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per Split-MNIST task.")] = 3,
    users: Annotated[int, typer.Option(min=1, help="New customers (K).")] = 8,
    samples_per_user: Annotated[int, typer.Option(min=8)] = 64,
    base_home: Annotated[
        Path | None,
        typer.Option(help="An INKWELL_HOME whose stable model to start from (else trains one)."),
    ] = None,
    base_epochs: Annotated[int, typer.Option(min=1)] = 8,
    base_augment: Annotated[
        str, typer.Option(help="Augmentation of that base model: affine or handwriting.")
    ] = "affine",
    style_ceiling: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also train a model on this many MNIST train digits in each user's style and "
            "read the user's held-out digits with it: how legible the style is (0 = skip).",
        ),
    ] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write all numbers as JSON here.")] = None,
    data: Annotated[
        Path,
        typer.Option(help="Cheque stream: labelled real amount fields (labels.csv, digits.csv)."),
    ] = Path("../shared/data/orand-car-a"),
    out: Annotated[
        Path,
        typer.Option(
            help="Cheque stream: report.json, cheques-model/, digits-model/ (keep out of the "
            "repository: models trained on real cheques are never committed)."
        ),
    ] = Path("/tmp/cheque-stream-bench"),
    batches: Annotated[int, typer.Option(min=1, help="Cheque stream: reviewed batches.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Cheque stream: fields a batch.")] = 100,
    held_out: Annotated[
        int,
        typer.Option(
            min=1,
            help="Cheque stream: real fields held out as the test (those of `inkwell cheques "
            "split --test N --seed S`).",
        ),
    ] = 207,
    seed: Annotated[int, typer.Option(help="Cheque stream: seed of the split.")] = 0,
) -> None:
    """Continual-learning benchmarks: Split-MNIST, new customers, a bank's reviewed cheques."""
    check_choice(stream, ("split", "customers", "both", "cheques"), "--stream")
    if stream == "cheques":
        from bench.cheque_stream import run_cheque_stream

        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            report = run_cheque_stream(
                data=data,
                out=out,
                batches=batches,
                batch_size=batch_size,
                held_out=held_out,
                seed=seed,
            )
        except ValueError as exc:  # the split does not fit the folder
            raise typer.BadParameter(str(exc), param_hint="--held-out/--batches") from exc
        if report is not None:
            console.print(f"report, cheques-model/ and digits-model/ written to {out}")
        return
    from inkwell.training import AUGMENT_POLICIES

    check_choice(base_augment, AUGMENT_POLICIES, "--base-augment")
    from bench.continual import run_bench

    run_bench(
        stream=stream,
        buffers=[int(b) for b in buffers.split(",") if b],
        seeds=[int(s) for s in seeds.split(",") if s],
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        epochs=epochs,
        users=users,
        samples_per_user=samples_per_user,
        base_home=base_home,
        base_epochs=base_epochs,
        base_augment=base_augment,
        style_ceiling=style_ceiling,
        threads=threads,
        output=output,
    )


def bench_cheques(
    n: Annotated[int, typer.Option(min=1, help="Synthetic test fields to time.")] = 200,
    cheques: Annotated[int, typer.Option(min=0, help="Whole synthetic cheques to time.")] = 50,
    seed: int = 7,
    model: ModelOpt = "stable",
    model_dir: ModelDirOpt = None,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 1,
    data: DataOpt = None,
) -> None:
    """Time reading amount fields and whole cheques (decode + locate + model + CTC)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from bench.cheques import time_reads
    from inkwell.cheques.layout import generate_cheques
    from inkwell.cheques.pools import load_pool
    from inkwell.cheques.synth import generate_fields

    torch.set_num_threads(threads)
    reader = load_reader(model, model_dir)
    pool = load_pool("test", data)

    def png(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    fields = [png(s.image) for s in generate_fields(pool, n, seed)]
    table = Table("input", "n", "median ms", "p90 ms", "max ms", title=f"{threads} thread(s)")
    timing = time_reads(reader, fields, layout="field")
    table.add_row("amount field", str(n), *timing.row())
    if cheques:
        images = [png(s.image) for s in generate_cheques(pool, cheques, seed)]
        timing = time_reads(reader, images, layout="cheque")
        table.add_row("whole cheque", str(cheques), *timing.row())
    console.print(f"model {reader.name} v{reader.version or '(folder)'}")
    console.print(table)


bench_app.command("optimizers")(bench_optimizers)
bench_app.command("service")(bench_service)
bench_app.command("continual")(bench_continual)
bench_app.command("router")(bench_router)
bench_app.command("cheques")(bench_cheques)
