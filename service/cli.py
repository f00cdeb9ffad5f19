"""`inkwell service`: run one service process."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    variant: Annotated[
        str | None, typer.Option(help="Which alias to serve: stable or canary.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Default 8001 (stable), 8002 (canary).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
) -> None:
    """Serve digit predictions and sample uploads for one variant (uvicorn)."""
    import logging

    import uvicorn

    from service.main import create_app
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
    settings = ServiceSettings(**overrides)  # type: ignore[arg-type]
    # uvicorn configures only its own loggers; model swaps and refresh failures log here.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.resolved_port,
        loop="uvloop",
        http="httptools",
        access_log=settings.access_log,
        log_level="info",
        timeout_graceful_shutdown=5,
    )


def register(app: typer.Typer) -> None:
    """Attach the service commands to the `inkwell` CLI."""
    app.command("service")(serve)
