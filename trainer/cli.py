"""`inkwell trainer` (the worker + admin API) and `inkwell trainer retrain|status`."""

from __future__ import annotations

import json
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

    from inkwell.console import console
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
    from inkwell.console import console

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
    from inkwell.console import console
    from trainer.pipeline import Retrainer
    from trainer.settings import TrainerSettings
    from trainer.worker import Worker

    settings = TrainerSettings()
    console.print_json(json.dumps(Worker(Retrainer(settings), settings).status(), default=str))


def register(app: typer.Typer) -> None:
    """Attach `inkwell trainer ...`."""
    app.add_typer(trainer_app, name="trainer")
