"""`inkwell router` (run the router and its rollout controller) and `inkwell rollout ...`
(status, promote, rollback, pause, resume, events through the router's admin API)."""

from __future__ import annotations

import datetime as dt
import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from inkwell.errors import AuthError, InkwellError, UpstreamUnavailableError

if TYPE_CHECKING:
    from router.settings import RouterSettings

rollout_app = typer.Typer(
    help="Watch and steer the stable/canary rollout (calls the router's admin API).",
    no_args_is_help=True,
)

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Router to call (default INKWELL_ROUTER_ADMIN_URL or local)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="INKWELL_ROUTER_ADMIN_API_KEY",
        help="Admin key (default: INKWELL_ROUTER_ADMIN_API_KEY or <home>/router-admin.key).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]


class RolloutModel(StrEnum):
    """Which model's rollout an action steers (each model has its own)."""

    DIGITS = "digits"
    CHEQUES = "cheques"


ModelOpt = Annotated[
    RolloutModel,
    typer.Option("--model", help="The digit model's rollout, or the cheque model's own."),
]


def _for(path: str, model: RolloutModel) -> str:
    """The admin path for `model`'s rollout (the digit one needs no query, as before)."""
    if model is RolloutModel.DIGITS:
        return path
    return f"{path}{'&' if '?' in path else '?'}model={model.value}"


def _print_for(document: dict[str, Any], model: RolloutModel, as_json: bool) -> None:
    if as_json or model is RolloutModel.DIGITS:
        _print(document, as_json)
    else:
        _show(document, title="cheque rollout")


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    stable_url: Annotated[str | None, typer.Option(help="The stable service.")] = None,
    canary_url: Annotated[str | None, typer.Option(help="The canary service.")] = None,
    shadow: Annotated[
        bool | None, typer.Option("--shadow/--no-shadow", help="Mirror traffic to the canary.")
    ] = None,
    controller: Annotated[
        bool | None,
        typer.Option("--controller/--no-controller", help="Run the rollout controller."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the router (stable/canary reverse proxy) with the rollout controller."""
    import logging

    import uvicorn

    from router.app import create_app
    from router.settings import RouterSettings

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "stable_url": stable_url,
            "canary_url": canary_url,
            "shadow": shadow,
            "controller": controller,
        }.items()
        if v is not None
    }
    settings = RouterSettings(**overrides)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scrape is noise
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        **forwarding_options(settings),
    )


def forwarding_options(settings: RouterSettings) -> dict[str, Any]:
    """uvicorn options: trust X-Forwarded-For only from the configured proxies."""
    if not settings.forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}


def _call(method: str, path: str, url: str | None, key: str | None, body: Any = None) -> Any:
    import httpx

    from router.settings import RouterSettings

    settings = RouterSettings()
    base = (url or settings.resolved_admin_url).rstrip("/")
    key = key or settings.resolved_admin_key(create=False)
    if not key:
        raise AuthError(
            "no admin key: set INKWELL_ROUTER_ADMIN_API_KEY or pass --key (a local router "
            "writes one to <INKWELL_HOME>/router-admin.key when it starts).",
            code="api_key_required",
        )
    try:
        response = httpx.request(
            method, f"{base}{path}", headers={"X-API-Key": key}, json=body, timeout=30
        )
    except httpx.HTTPError as exc:
        raise UpstreamUnavailableError(
            f"the router at {base} did not answer ({exc}); start it with `inkwell router` or "
            "pass --url."
        ) from exc
    try:
        document = response.json()
    except ValueError:
        document = {"code": "bad_answer", "message": response.text[:500]}
    if response.status_code >= 400:
        raise InkwellError(
            str(document.get("message", document)), code=str(document.get("code", "error"))
        )
    return document


def _show(status: dict[str, Any], title: str = "rollout") -> None:
    from inkwell.console import console

    table = Table(show_header=False, title=title)
    started = status.get("started_at") or 0
    rows = [
        ("phase", status.get("phase")),
        ("canary version", status.get("canary_version")),
        ("stable version (at start)", status.get("stable_version")),
        ("weight", f"{status.get('weight', 0):g} %"),
        ("step", f"{status.get('step_index', -1) + 1} of {len(status.get('steps', []))}"),
        ("steps", ", ".join(f"{s:g}" for s in status.get("steps", []))),
        ("analysis interval", f"{status.get('analysis_interval_s')} s"),
        ("metrics source", status.get("metrics_source")),
        ("served now", json.dumps(status.get("served_versions"))),
        ("started", dt.datetime.fromtimestamp(started).isoformat() if started else "-"),
        ("reason", status.get("reason")),
    ]
    verdict = status.get("last_verdict")
    if verdict:
        rows.append(("last analysis", f"{verdict['result']}: {verdict['reason']}"))
    if status.get("last_error"):
        rows.append(("last error", status["last_error"]))
    for name, value in rows:
        table.add_row(name, "" if value is None else str(value))
    console.print(table)
    cheques = status.get("cheques")
    if isinstance(cheques, dict):
        _show(cheques, title="cheque rollout")


def _print(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        _show(document)


@rollout_app.command("status")
def status_cmd(url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Phase, weight, versions and the last canary analysis."""
    _print(_call("GET", "/admin/rollout", url, key), as_json)


@rollout_app.command("promote")
def promote_cmd(
    model: ModelOpt = RolloutModel.DIGITS,
    url: UrlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Promote the canary now: the stable alias moves to its version."""
    document = _call("POST", _for("/admin/rollout/promote", model), url, key)
    _print_for(document, model, as_json)


@rollout_app.command("rollback")
def rollback_cmd(
    reason: Annotated[str, typer.Option(help="Recorded on the version's rolled_back tag.")] = (
        "rolled back manually"
    ),
    model: ModelOpt = RolloutModel.DIGITS,
    url: UrlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop canary traffic, remove the canary alias and tag the version rolled_back."""
    path = _for("/admin/rollout/rollback", model)
    document = _call("POST", path, url, key, {"reason": reason})
    _print_for(document, model, as_json)


@rollout_app.command("pause")
def pause_cmd(
    model: ModelOpt = RolloutModel.DIGITS,
    url: UrlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hold the current weight; the controller makes no decision until resumed."""
    document = _call("POST", _for("/admin/rollout/pause", model), url, key)
    _print_for(document, model, as_json)


@rollout_app.command("resume")
def resume_cmd(
    model: ModelOpt = RolloutModel.DIGITS,
    url: UrlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Continue a paused rollout (the current step's interval restarts)."""
    document = _call("POST", _for("/admin/rollout/resume", model), url, key)
    _print_for(document, model, as_json)


@rollout_app.command("events")
def events_cmd(
    limit: int = 20,
    model: ModelOpt = RolloutModel.DIGITS,
    url: UrlOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent rollout transitions (the audit trail), newest first."""
    from inkwell.console import console

    document = _call("GET", _for(f"/admin/rollout/events?limit={limit}", model), url, key)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    table = Table("time", "rollout", "from", "to", "weight", "canary", "by", "reason")
    for e in document:
        table.add_row(
            dt.datetime.fromtimestamp(e["at"]).strftime("%Y-%m-%d %H:%M:%S"),
            str(e["rollout_id"]),
            e["from_phase"],
            e["to_phase"],
            f"{e['weight']:g} %",
            str(e["canary_version"]),
            e["actor"],
            e["reason"],
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Attach `inkwell router` and `inkwell rollout ...`."""
    app.command("router")(serve)
    app.add_typer(rollout_app, name="rollout")
