"""`inkwell trainer` (the worker + admin API), `inkwell trainer retrain|status`, and
`inkwell bench continual`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def fail_fast_mlflow() -> None:
    """A tracking server that is down or hangs fails a call in seconds, not minutes (unless
    set): the worker's publish loop and its next poll retry by themselves."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


trainer_app = typer.Typer(
    help="The continual-learning worker: polls uploads, retrains, registers canaries.",
    invoke_without_command=True,
)


@trainer_app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Admin port (default 8003).")] = None,
) -> None:
    """Run the worker and its admin API (POST /v1/retrain, GET /v1/status, /metrics)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from inkwell.cli import console
    from trainer.app import create_app
    from trainer.settings import TrainerSettings

    fail_fast_mlflow()
    settings = TrainerSettings()
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    console.print(
        f"trainer: polling {settings.resolved_database_url} every {settings.poll_seconds:g} s, "
        f"admin API on http://{settings.host}:{settings.port}"
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


@trainer_app.command()
def retrain(
    url: Annotated[
        str | None,
        typer.Option(help="Ask a running trainer (e.g. http://127.0.0.1:8003) instead."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="INKWELL_TRAINER_ADMIN_API_KEY", help="Admin API key.")
    ] = None,
) -> None:
    """Retrain now on the pending samples (in this process, or via a running trainer)."""
    from inkwell.cli import console

    if url is not None:
        import httpx

        response = httpx.post(
            f"{url.rstrip('/')}/v1/retrain", headers={"X-API-Key": api_key or ""}, timeout=30
        )
        console.print(f"{response.status_code}: {response.text}")
        raise typer.Exit(0 if response.status_code == 202 else 1)
    from trainer.pipeline import Retrainer
    from trainer.settings import TrainerSettings

    fail_fast_mlflow()
    retrainer = Retrainer(TrainerSettings())
    for line in retrainer.reconcile():
        console.print(f"reconciled {line}")
    with console.status("retraining (validate, tune, train, gate, register)..."):
        outcome = retrainer.retrain("manual")
    if outcome.version is None:
        console.print(f"job {outcome.job_id}: {outcome.status} in {outcome.seconds:.1f} s")
        console.print(f"[red]{'; '.join(outcome.reasons)}[/red]")
        return
    console.print(
        f"job {outcome.job_id}: version {outcome.version} {outcome.status} "
        f"(parent {outcome.parent_version}) in {outcome.seconds:.1f} s"
    )
    console.print(
        f"MNIST test {100 * outcome.metrics['test_accuracy']:.2f} % "
        f"(stable {100 * outcome.metrics['stable_test_accuracy']:.2f} %), held-out new "
        f"{100 * outcome.metrics['holdout_accuracy']:.2f} % "
        f"(stable {100 * outcome.metrics['stable_holdout_accuracy']:.2f} %)"
    )
    if outcome.quarantined:
        console.print(f"quarantined: {outcome.quarantined}")
    for reason in outcome.reasons:
        console.print(f"[red]gate[/red]: {reason}")


@trainer_app.command()
def status() -> None:
    """Print the watermark, pending samples, last job and stable/canary versions."""
    from inkwell.cli import console
    from trainer.pipeline import Retrainer
    from trainer.settings import TrainerSettings
    from trainer.worker import Worker

    settings = TrainerSettings()
    console.print_json(json.dumps(Worker(Retrainer(settings), settings).status(), default=str))


def bench_continual(
    stream: Annotated[
        str, typer.Option(help="split (Split-MNIST), customers (new users), or both.")
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
) -> None:
    """Continual-learning benchmarks: Split-MNIST and a stream of new customers."""
    from inkwell.cli import check_choice
    from inkwell.training import AUGMENT_POLICIES

    check_choice(base_augment, AUGMENT_POLICIES, "--base-augment")
    from trainer.bench import run_bench

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


def register(app: typer.Typer) -> None:
    """Attach `inkwell trainer ...` and `inkwell bench continual`."""
    from inkwell.cli import bench_app

    app.add_typer(trainer_app, name="trainer")
    bench_app.command("continual")(bench_continual)
