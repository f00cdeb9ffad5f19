"""`inkwell mlflow server|init-users`: the MLflow tracking server with authentication.

Compose and Kubernetes run MLflow with its basic-auth app: `inkwell mlflow server` writes the
auth configuration (user store, admin name, no permission by default) from the environment and
starts `mlflow server --app-name basic-auth`; `inkwell mlflow init-users` (a one-shot job, safe
to repeat) creates the experiment, the registered models and three users with their grants.
The embedded default (`inkwell up`, a sqlite:/// store, no server) needs neither.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

mlflow_app = typer.Typer(
    help="The MLflow tracking server with authentication (Compose, Kubernetes).",
    no_args_is_help=True,
)

# Nobody may read or write what they were not granted: every grant is explicit (init-users).
DEFAULT_PERMISSION = "NO_PERMISSIONS"
AUTH_CONFIG_FILE = "basic_auth.ini"


def auth_config_text(database_uri: str, admin_username: str, cache_ttl_s: int = 0) -> str:
    """The `[mlflow]` section MLflow's basic-auth app reads (`MLFLOW_AUTH_CONFIG_PATH`);
    `cache_ttl_s` > 0 trusts a checked password that long (MLflow's credential cache)."""

    # configparser interpolates `%`: a password in the URL may hold one.
    def escape(value: str) -> str:
        return value.replace("%", "%%")

    return (
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {escape(database_uri)}\n"
        f"admin_username = {escape(admin_username)}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_ttl_s}\n"
    )


def _missing(variable: str, what: str) -> typer.Exit:
    from inkwell.console import console
    from inkwell.settings import KEY_ADVICE

    console.print(f"[red]error[/red]: set {variable} ({what}); {KEY_ADVICE}")
    return typer.Exit(2)


@mlflow_app.command(
    "server",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def server(ctx: typer.Context) -> None:
    """Run `mlflow server --app-name basic-auth ARGS...` with the auth config from the env.

    Reads MLFLOW_AUTH_ADMIN_USERNAME (default admin), MLFLOW_AUTH_ADMIN_PASSWORD (creates the
    admin on the first start), MLFLOW_FLASK_SERVER_SECRET_KEY and
    INKWELL_MLFLOW_AUTH_DATABASE_URI (the user store) and INKWELL_MLFLOW_AUTH_CACHE_TTL_S (how
    long a checked password is trusted, default 60 s).
    """
    from inkwell.settings import RegistryAccessSettings

    settings = RegistryAccessSettings()
    if settings.admin_password is None:
        raise _missing("MLFLOW_AUTH_ADMIN_PASSWORD", "the MLflow admin's password")
    if settings.flask_secret_key is None:
        raise _missing(
            "MLFLOW_FLASK_SERVER_SECRET_KEY", "signs CSRF tokens; the same on every replica"
        )
    if settings.resolved_auth_database_uri.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    # Private to this process: the file holds the user store's URL with its password.
    folder = Path(tempfile.mkdtemp(prefix="inkwell-mlflow-auth-"))
    config = folder / AUTH_CONFIG_FILE
    config.touch(mode=0o600)
    config.write_text(
        auth_config_text(
            settings.resolved_auth_database_uri,
            settings.admin_username,
            settings.auth_cache_ttl_s,
        )
    )
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", *ctx.args]
    os.execv(sys.executable, command)


@mlflow_app.command("init-users")
def init_users(
    tracking_uri: Annotated[
        str | None, typer.Option(help="The server (default INKWELL_TRACKING_URI).")
    ] = None,
) -> None:
    """Create the experiment, the registered models and the three users with their grants.

    trainer: EDIT on the experiment and the models; router (rollout controller): READ on the
    experiment, MANAGE on the models (it moves aliases, and MLflow asks for delete rights to
    remove one: the `canary` alias after a promotion or a rollback); service: READ on both.
    Passwords come from INKWELL_MLFLOW_{TRAINER,ROUTER,SERVICE}_PASSWORD and are set again on
    every run, so rotating one is: change the Secret, run this again, restart the component.
    """
    from inkwell.console import console
    from inkwell.registry import EDIT, MANAGE, READ, RegistryAdmin, RegistryUser
    from inkwell.settings import RegistryAccessSettings

    settings = RegistryAccessSettings()
    if settings.admin_password is None:
        raise _missing("MLFLOW_AUTH_ADMIN_PASSWORD", "the MLflow admin's password")
    passwords = {}
    for role in ("trainer", "router", "service"):
        password = getattr(settings, f"{role}_password")
        if password is None:
            raise _missing(f"INKWELL_MLFLOW_{role.upper()}_PASSWORD", f"the {role}'s password")
        passwords[role] = password.get_secret_value()
    users = [
        RegistryUser(settings.trainer_username, passwords["trainer"], EDIT, EDIT),
        RegistryUser(settings.router_username, passwords["router"], READ, MANAGE),
        RegistryUser(settings.service_username, passwords["service"], READ, READ),
    ]
    admin = RegistryAdmin(
        tracking_uri or settings.resolved_tracking_uri,
        settings.admin_username,
        settings.admin_password.get_secret_value(),
    )
    models = [settings.model_name, settings.cheque_model_name]
    for line in admin.provision(users, [settings.experiment], models):
        console.print(line)


def register(app: typer.Typer) -> None:
    """Attach `inkwell mlflow ...`."""
    app.add_typer(mlflow_app, name="mlflow")
