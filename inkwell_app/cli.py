"""The `inkwell` command line: train, evaluate, list models, benchmarks, and the components."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from inkwell.console import DataOpt, check_choice, console, progress_bar, progress_step
from inkwell.errors import InkwellError
from inkwell.optim import OPTIMIZERS


class _InkwellGroup(TyperGroup):
    """The root command: a domain error anywhere below becomes one clear line and exit 2, for
    the console script and for a test that runs the command line in process alike."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except InkwellError as exc:
            console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
            sys.exit(2)


app = typer.Typer(
    cls=_InkwellGroup,
    help="Inkwell: digit and cheque-amount recognition with canary rollouts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# The base recipe's length: `inkwell train`'s default, so Compose and Kubernetes (whose init
# jobs run `inkwell train --if-missing`), `inkwell up` and the shipped model all train the same.
BASE_EPOCHS = 4


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
        on_step = progress_step(progress, task)

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
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object (accuracy, per_class, confusion, most_confused, "
            "refused) instead of tables.",
        ),
    ] = False,
    test_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Evaluate on the first N MNIST test images only (default: all 10,000): a "
            "quick check, not a number to compare models by.",
        ),
    ] = None,
) -> None:
    """Evaluate a digit model on the 10,000 MNIST test images or on a folder of real digits."""
    if test_size is not None and images is not None:
        raise typer.BadParameter(
            "limits the MNIST test set: leave it out with --images", param_hint="--test-size"
        )
    from inkwell.data import load_split
    from inkwell.digit_images import FolderEvaluation
    from inkwell.registry import Registry, load_digit_dir
    from inkwell.train import split_tensors
    from inkwell.training import EvalResult, evaluate

    if model_dir is not None:
        net, _meta = load_digit_dir(model_dir)
        source = str(model_dir)
    else:
        loaded = Registry().load_digit_model(model)
        net = loaded.model
        source = f"{loaded.info.name} v{loaded.info.version} ({model})"

    def mnist_test() -> EvalResult:
        x, y = split_tensors(load_split("test", data))
        return evaluate(net, x[:test_size], y[:test_size])

    if as_json:
        if images is None:
            result = mnist_test()
            correct = sum(result.confusion[d][d] for d in range(len(result.confusion)))
            outcome = FolderEvaluation(result.n, correct, [], result)
        else:
            from inkwell.digit_images import evaluate_digit_folder, load_digit_folder

            outcome = evaluate_digit_folder(net, load_digit_folder(images))
        report = {"model": source, "images": str(images) if images else "mnist-test"}
        typer.echo(json.dumps({**report, **outcome.to_dict()}))
        return
    console.print(f"model {source}{' (folder)' if model_dir is not None else ''}")
    if images is None:
        result = mnist_test()
        if test_size is not None:
            console.print(f"the first {result.n} MNIST test images")
        console.print(f"accuracy {100 * result.accuracy:.2f} %")
    else:
        from inkwell.digit_images import evaluate_digit_folder, load_digit_folder, read_digit_labels

        total = len(read_digit_labels(images))
        with progress_bar() as progress:
            task = progress.add_task("preprocessing", total=total, info="")
            folder = load_digit_folder(images, on_item=lambda i: progress.update(task, completed=i))
        outcome = evaluate_digit_folder(net, folder)
        console.print(f"{outcome.total} images in {images}")
        confused = ", ".join(f"{t} read as {p} ({n})" for t, p, n in outcome.most_confused(3))
        if confused:
            console.print(f"most confused: {confused}")
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


@functools.cache
def _register_components() -> None:
    """Attach the component CLIs (service, trainer, router, cheques), `up`, `mlflow` and `bench`
    (once a process: tests build the command line in process many times)."""
    # imported here, not at the top: `inkwell_app.up` imports BASE_EPOCHS from this module
    from bench.cli import bench_app
    from inkwell.cheques import cli as cheques_cli
    from inkwell_app import mlflow_cli, up
    from router import cli as router_cli
    from service import cli as service_cli
    from trainer import cli as trainer_cli

    app.add_typer(bench_app, name="bench")
    for component in (service_cli, trainer_cli, router_cli, cheques_cli, up, mlflow_cli):
        component.register(app)


def main() -> None:
    """Entry point (the `inkwell` console script)."""
    _register_components()
    app()
