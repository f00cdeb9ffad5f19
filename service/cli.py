"""`inkwell service`: run one service process."""

from __future__ import annotations

from typing import Annotated, Any

import typer


def serve(
    variant: Annotated[
        str | None, typer.Option(help="Which alias to serve: stable or canary.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Default 8001 (stable), 8002 (canary).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes sharing the port, each with its own model and micro-batcher "
            "(default INKWELL_SERVICE_WORKERS, 1).",
        ),
    ] = None,
) -> None:
    """Serve digit predictions and sample uploads for one variant (uvicorn)."""
    import logging
    import os
    import tempfile

    import uvicorn

    from service.metrics import MULTIPROC_ENV
    from service.settings import ServiceSettings

    overrides: dict[str, object] = {}
    if variant is not None:
        if variant not in ("stable", "canary"):
            raise typer.BadParameter("choose stable or canary", param_hint="--variant")
        overrides["variant"] = variant
    if port is not None:
        overrides["port"] = port
    if host is not None:
        overrides["host"] = host
    if workers is not None:
        overrides["workers"] = workers
    settings = ServiceSettings(**overrides)  # type: ignore[arg-type]
    # uvicorn configures only its own loggers; model swaps and refresh failures log here.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.resolved_port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": settings.access_log,
        "log_level": "info",
        "timeout_graceful_shutdown": 5,
    }
    if settings.workers == 1:
        from service.main import create_app

        uvicorn.run(create_app(settings), **options)
        return
    # The parent only supervises: it never imports the app (torch, MLflow), only the workers do.
    # Each worker is a fresh interpreter that builds its app from the environment: the command
    # line's choices go there, and so does a metrics directory of this run's own, so counters
    # of an earlier run (or another service) never add up with this one's.
    os.environ.update(
        {
            "INKWELL_SERVICE_VARIANT": settings.variant,
            "INKWELL_SERVICE_PORT": str(settings.resolved_port),
            "INKWELL_SERVICE_HOST": settings.host,
            "INKWELL_SERVICE_WORKERS": str(settings.workers),
        }
    )
    with tempfile.TemporaryDirectory(prefix="inkwell-service-metrics-") as metrics_dir:
        os.environ[MULTIPROC_ENV] = metrics_dir
        uvicorn.run("service.main:create_app", factory=True, workers=settings.workers, **options)


def register(app: typer.Typer) -> None:
    """Attach the service commands to the `inkwell` CLI."""
    app.command("service")(serve)
