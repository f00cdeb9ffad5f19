"""The `inkwell` command line: train, evaluate, list models, benchmarks, and the components."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from inkwell.errors import InkwellError
from inkwell.optim import OPTIMIZERS

app = typer.Typer(
    help="Inkwell: digit and cheque-amount recognition with canary rollouts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that print numbers.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()

# The base recipe's length: `inkwell train`'s default, so Compose and Kubernetes (whose init
# jobs run `inkwell train --if-missing`), `inkwell up` and the shipped model all train the same.
BASE_EPOCHS = 4

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="MNIST directory (default: INKWELL_DATA_DIR).")
]


def progress_bar() -> Progress:
    """The rich progress bar every long-running command uses."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _progress_step(progress: Progress, task: TaskID) -> Callable[[int, float], None]:
    def update(step: int, loss: float) -> None:
        progress.update(task, completed=step, info=f"loss {loss:.3f}")

    return update


@app.command()
def train(
    optimizer: Annotated[str, typer.Option(help=f"One of {', '.join(OPTIMIZERS)}.")] = "adam",
    lr: Annotated[
        float | None,
        typer.Option(help="Peak learning rate (default: the base recipe's, else per optimizer)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = BASE_EPOCHS,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    seed: int = 0,
    dry_run: Annotated[bool, typer.Option(help="Train on one batch only (smoke test).")] = False,
    width: Annotated[int, typer.Option(min=4, help="Channels of the first conv block.")] = 16,
    stem_convs: Annotated[
        int, typer.Option(min=1, max=4, help="Convolutions at full 28x28 resolution.")
    ] = 1,
    augment: Annotated[
        str,
        typer.Option(
            help="Training augmentation: affine (small rotations, scale, shear, shifts) or "
            "handwriting (also wider slant and rotation, stroke thickness, elastic distortion)."
        ),
    ] = "affine",
    register: Annotated[bool, typer.Option(help="Register the model in MLflow.")] = True,
    out: Annotated[
        Path | None, typer.Option(help="Also save weights.pt + model.json to this folder.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Do nothing when the registry already has a `stable` version (one-shot "
            "deployment init jobs: safe to run on every start).",
        ),
    ] = False,
    data: DataOpt = None,
) -> None:
    """Train the base digit model on MNIST and register it (the first version becomes stable)."""
    from inkwell.training import AUGMENT_POLICIES, TrainConfig, TrainHooks

    # usage errors first, before the registry (MLflow) is imported
    check_choice(optimizer, OPTIMIZERS, "--optimizer")
    check_choice(augment, AUGMENT_POLICIES, "--augment")
    from inkwell.model import ModelConfig
    from inkwell.train import BASE_PEAK_LR, train_base_model

    if if_missing:
        from inkwell.registry import Registry
        from inkwell.settings import STABLE

        registry = Registry()
        existing = registry.find_version(registry.settings.model_name, STABLE)
        if existing is not None:
            console.print(
                f"{existing.name} v{existing.version} is already {STABLE}: nothing to train"
            )
            return
    if lr is None:
        lr = BASE_PEAK_LR.get(optimizer)  # None: the optimizer's own default
    cfg = TrainConfig(
        optimizer=optimizer,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        dry_run=dry_run,
        augment_policy=augment,
    )
    steps_per_epoch = -(-60_000 // batch_size)
    total = 1 if dry_run else steps_per_epoch * epochs
    with progress_bar() as progress:
        task = progress.add_task("training", total=total, info="")
        on_step = _progress_step(progress, task)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            acc = metrics.get("test_accuracy")
            if acc is not None:
                progress.console.print(f"epoch {epoch}: test accuracy {100 * acc:.2f} %")

        outcome = train_base_model(
            cfg,
            data_dir=data,
            model_config=ModelConfig(width=width, stem_convs=stem_convs),
            hooks=TrainHooks(on_step=on_step, on_epoch=on_epoch),
            register=register,
            threads=threads,
            out_dir=out,
        )
    if outcome.evaluation is not None:
        console.print(f"accuracy {100 * outcome.evaluation.accuracy:.2f} %")
    console.print(f"wall time {outcome.seconds:.1f} s, MLflow run {outcome.run_id}")
    if outcome.version is not None:
        aliases = ", ".join(outcome.version.aliases) or "no alias"
        console.print(f"registered {outcome.version.name} v{outcome.version.version} ({aliases})")
    if out is not None:
        console.print(f"saved to {out}")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="stable, canary or a version number.")] = "stable",
    data: DataOpt = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Evaluate on a folder of digit images with labels.csv (filename,digit), "
            "through the serving preprocessing, instead of the MNIST test set.",
        ),
    ] = None,
    model_dir: Annotated[
        Path | None,
        typer.Option(
            "--model-dir",
            help="Load weights.pt + model.json from a folder (e.g. inkwell/shipped/digits).",
        ),
    ] = None,
) -> None:
    """Evaluate a digit model on the 10,000 MNIST test images or on a folder of real digits."""
    from inkwell.data import load_split
    from inkwell.registry import Registry, load_digit_dir
    from inkwell.train import split_tensors
    from inkwell.training import evaluate

    if model_dir is not None:
        net, _meta = load_digit_dir(model_dir)
        console.print(f"model {model_dir} (folder)")
    else:
        loaded = Registry().load_digit_model(model)
        net = loaded.model
        console.print(f"model {loaded.info.name} v{loaded.info.version} ({model})")
    if images is None:
        result = evaluate(net, *split_tensors(load_split("test", data)))
        console.print(f"accuracy {100 * result.accuracy:.2f} %")
    else:
        from inkwell.digit_images import evaluate_digit_folder, load_digit_folder, read_digit_labels

        total = len(read_digit_labels(images))
        with progress_bar() as progress:
            task = progress.add_task("preprocessing", total=total, info="")
            folder = load_digit_folder(images, on_item=lambda i: progress.update(task, completed=i))
        outcome = evaluate_digit_folder(net, folder)
        console.print(f"{outcome.total} images in {images}")
        console.print(f"accuracy {100 * outcome.accuracy:.2f} %")
        if outcome.refused:
            codes = sorted({code for _, _, code in outcome.refused})
            console.print(
                f"refused by preprocessing (counted as errors): {len(outcome.refused)} "
                f"({', '.join(codes)}), e.g. {outcome.refused[0][0]}"
            )
        if outcome.readable is None:
            return
        result = outcome.readable
    table = Table(
        "digit", "accuracy %", *[str(d) for d in range(10)], title="per class / confusion"
    )
    for digit, (acc, row) in enumerate(zip(result.per_class, result.confusion, strict=True)):
        table.add_row(str(digit), f"{100 * acc:.2f}", *[str(v) for v in row])
    console.print(table)


@app.command()
def models(name: Annotated[str | None, typer.Option(help="Registered model name.")] = None) -> None:
    """List registered versions with their aliases and gate status."""
    from inkwell.registry import Registry

    registry = Registry()
    name = name or registry.settings.model_name
    table = Table("version", "aliases", "validation_status", "run", title=name)
    for info in registry.list_versions(name):
        table.add_row(
            info.version,
            ", ".join(info.aliases),
            info.tags.get("validation_status", ""),
            info.run_id or "",
        )
    console.print(table)


@bench_app.command("optimizers")
def bench_optimizers(
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per optimizer (same budget).")] = 2,
    batch_size: int = 128,
    seed: int = 0,
    target: Annotated[float, typer.Option(help="Accuracy target for steps/seconds-to.")] = 0.98,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps.")] = 50,
    train_size: Annotated[int | None, typer.Option(help="Use the first N training images.")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Subset of optimizers.")] = None,
    plot: Annotated[Path, typer.Option(help="Where to save the PNG.")] = Path(
        "docs/img/optimizers.png"
    ),
    data: DataOpt = None,
) -> None:
    """Train one model per optimizer under the same budget; print a table, save a plot."""
    for name in only or ():
        check_choice(name, OPTIMIZERS, "--only")
    from inkwell.bench.optimizers import plot_runs, run_optimizer
    from inkwell.data import load_split
    from inkwell.train import split_tensors

    names = only or list(OPTIMIZERS)
    x, y = split_tensors(load_split("train", data))
    if train_size:
        x, y = x[:train_size], y[:train_size]
    test = split_tensors(load_split("test", data))
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
                    on_step=_progress_step(progress, task),
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
        title=f"{epochs} epoch(s), batch {batch_size}, {x.shape[0]} images, seed {seed}",
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


def check_choice(value: str, choices: tuple[str, ...], hint: str) -> None:
    """A usage error (exit 2) naming the choices when `value` is not one of them."""
    if value not in choices:
        raise typer.BadParameter(f"choose one of {', '.join(choices)}", param_hint=hint)


def _register_components() -> None:
    """Attach the component CLIs (service, trainer, router, cheques, up) when present."""
    import importlib

    for module_name in (
        "service.cli",
        "trainer.cli",
        "router.cli",
        "inkwell.cheques.cli",
        "inkwell.up",
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        module.register(app)


def main() -> None:
    """Entry point: domain errors become one clear line and exit status 2."""
    _register_components()
    try:
        app()
    except InkwellError as exc:
        console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        sys.exit(2)
