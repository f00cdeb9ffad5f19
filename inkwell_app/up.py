"""`inkwell up`: the whole system on one machine, with one command.

Makes sure a `stable` digit model (and cheque model, when that package is installed) exists,
seeding an empty registry from the models shipped in the package (seconds, no data needed) and
training only when there is nothing to seed from, then runs service-stable, service-canary, the
trainer and the router (with its rollout controller) - and a local Prometheus when the binary is
found - as supervised subprocesses of this one (`inkwell_app.supervisor`). Ctrl-C or SIGTERM
stops them all.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal

import typer
from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from inkwell.errors import ConflictError, InvalidInputError
from inkwell.settings import CANARY, STABLE, CoreSettings
from inkwell.web.http import key_file
from inkwell_app.cli import BASE_EPOCHS
from inkwell_app.supervisor import ProcessSpec, RestartPolicy, Supervisor
from router.settings import RouterSettings
from service.settings import ServiceSettings
from trainer.settings import TrainerSettings

log = logging.getLogger("inkwell_app.up")

SERVICE_STABLE = "service-stable"
SERVICE_CANARY = "service-canary"
TRAINER = "trainer"
ROUTER = "router"
PROMETHEUS = "prometheus"
CHEQUE_TRAINING = "cheque-training"
COMPONENTS = (SERVICE_STABLE, SERVICE_CANARY, TRAINER, ROUTER)
API_KEY_FILE = "api.key"
ADMIN_KEY_FILE = "router-admin.key"  # the file the router itself falls back to
TRAINER_KEY_FILE = "trainer-admin.key"
SERVICE_KEYS_SETTING = ServiceSettings.env_name("api_keys")
ROUTER_KEY_SETTING = RouterSettings.env_name("admin_api_key")
TRAINER_KEY_SETTING = TrainerSettings.env_name("admin_api_key")


class UpSettings(CoreSettings):
    """What `inkwell up` runs and where (env prefix `INKWELL_UP_`)."""

    model_config = SettingsConfigDict(
        env_prefix="INKWELL_UP_", extra="ignore", populate_by_name=True
    )

    host: str = Field(default="127.0.0.1", description="Interface every component binds.")
    router_port: int = Field(default=8000, ge=1, le=65535)
    stable_port: int = Field(default=8001, ge=1, le=65535)
    canary_port: int = Field(default=8002, ge=1, le=65535)
    trainer_port: int = Field(default=8003, ge=1, le=65535)
    prometheus_port: int = Field(default=9090, ge=1, le=65535)
    components: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(COMPONENTS),
        description=f"Which components to run (comma-separated): {', '.join(COMPONENTS)}.",
    )
    prometheus: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Start a local Prometheus: auto = when the binary is found. Without it the "
        "rollout controller scrapes the components' /metrics itself.",
    )
    prometheus_binary: str = "prometheus"
    prometheus_scrape_s: float = Field(default=5.0, gt=0)
    train_missing: bool = Field(
        default=True,
        description="Train the base models when the registry has no stable one and there is no "
        "shipped model to seed it with (INKWELL_SEED_SHIPPED=false, or a package without it).",
    )
    base_epochs: int = Field(
        default=BASE_EPOCHS,
        ge=1,
        description="Epochs of the base digit training (the base recipe of `inkwell train`, "
        "Compose and Kubernetes).",
    )
    cheque_steps: int = Field(
        default=2000,
        ge=1,
        description="Steps of the background cheque training when no cheque model exists "
        "(a quick model; `inkwell cheques train --promote` trains the full 6000).",
    )
    start_timeout_s: float = Field(default=180.0, gt=0, description="Per component start-up.")
    stop_timeout_s: float = Field(default=10.0, gt=0, description="Grace before SIGKILL.")
    restart_initial_s: float = Field(default=1.0, gt=0)
    restart_max_s: float = Field(default=30.0, gt=0)
    restart_max_failures: int = Field(
        default=8, ge=1, description="Consecutive failures of one component before giving up."
    )
    health_interval_s: float = Field(default=2.0, gt=0)
    unhealthy_after: int = Field(default=3, ge=1, description="Missed probes that mean a hang.")
    log_dir: Path | None = Field(default=None, description="Component logs; default <home>/logs.")

    @field_validator("components", mode="before")
    @classmethod
    def _split_components(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("components", mode="after")
    @classmethod
    def _known_components(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in COMPONENTS]
        if unknown:
            raise ValueError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
        return [name for name in COMPONENTS if name in value]  # start order, no repeats

    @property
    def resolved_log_dir(self) -> Path:
        return self.log_dir or self.home / "logs"

    def url(self, port: int) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{port}"

    @property
    def ports(self) -> dict[str, int]:
        return {
            SERVICE_STABLE: self.stable_port,
            SERVICE_CANARY: self.canary_port,
            TRAINER: self.trainer_port,
            ROUTER: self.router_port,
            PROMETHEUS: self.prometheus_port,
        }


# ---- keys ----------------------------------------------------------------------------------


def local_key(path: Path) -> str:
    """The key stored in `path`, created (owner-only, atomically) on first use."""
    return key_file(path) or ""


@dataclass(frozen=True)
class Keys:
    """The client key (sample uploads), the router's admin key (rollout actions) and the
    trainer's admin key (retrains): two admin keys, so one leaked key opens only one API."""

    api_key: str
    admin_key: str
    api_key_source: str
    admin_key_source: str
    trainer_key: str
    trainer_key_source: str


def resolve_keys(
    settings: UpSettings,
    *,
    service: ServiceSettings | None = None,
    router: RouterSettings | None = None,
    trainer: TrainerSettings | None = None,
) -> Keys:
    """Keys the user configured for the components win; otherwise local key files.

    Each key is read through its component's own settings (validated as the component will),
    so `up` and the components agree on what INKWELL_SERVICE_API_KEYS,
    INKWELL_ROUTER_ADMIN_API_KEY and INKWELL_TRAINER_ADMIN_API_KEY mean, and a weak key is
    refused before anything starts.
    """
    service = ServiceSettings() if service is None else service
    router = RouterSettings() if router is None else router
    trainer = TrainerSettings() if trainer is None else trainer
    if service.key_grants:
        api_key, api_source = service.key_grants[0].key, SERVICE_KEYS_SETTING
    else:
        path = settings.home / API_KEY_FILE
        api_key, api_source = local_key(path), str(path)
    if router.admin_api_key is not None:
        admin, admin_source = router.admin_api_key.get_secret_value(), ROUTER_KEY_SETTING
    else:
        path = settings.home / ADMIN_KEY_FILE
        admin, admin_source = local_key(path), str(path)
    if trainer.admin_api_key is not None:
        trainer_key, trainer_source = trainer.admin_api_key.get_secret_value(), TRAINER_KEY_SETTING
    else:
        path = settings.home / TRAINER_KEY_FILE
        trainer_key, trainer_source = local_key(path), str(path)
    return Keys(api_key, admin, api_source, admin_source, trainer_key, trainer_source)


# ---- process specs -------------------------------------------------------------------------


def inkwell_argv(*args: str) -> tuple[str, ...]:
    """This Python running the inkwell CLI (works without the console script installed)."""
    return (sys.executable, "-m", "inkwell", *args)


def prometheus_binary(settings: UpSettings) -> str | None:
    """The Prometheus executable to start, or None when it should not run."""
    if settings.prometheus == "off":
        return None
    found = shutil.which(settings.prometheus_binary)
    if found is None and settings.prometheus == "on":
        raise InvalidInputError(
            f"INKWELL_UP_PROMETHEUS=on but {settings.prometheus_binary!r} is not on PATH. "
            "Install it (apt-get install prometheus), set INKWELL_UP_PROMETHEUS_BINARY, or use "
            "INKWELL_UP_PROMETHEUS=auto to run without it.",
            code="prometheus_not_found",
        )
    return found


def prometheus_config(settings: UpSettings) -> str:
    """A Prometheus configuration scraping every component `up` runs."""
    lines = [
        "# Written by `inkwell up` on every start; edits are overwritten.",
        "global:",
        f"  scrape_interval: {settings.prometheus_scrape_s:g}s",
        f"  evaluation_interval: {settings.prometheus_scrape_s:g}s",
        "scrape_configs:",
    ]
    for name in settings.components:
        target = settings.url(settings.ports[name]).removeprefix("http://")
        lines += [
            f"  - job_name: {name}",
            "    static_configs:",
            f"      - targets: ['{target}']",
            f"        labels: {{component: {name}}}",
        ]
    return "\n".join(lines) + "\n"


def build_specs(settings: UpSettings, keys: Keys, prometheus: str | None) -> list[ProcessSpec]:
    """Every process `up` runs, in start order (Prometheus first, the router last)."""
    specs: list[ProcessSpec] = []
    url = {name: settings.url(port) for name, port in settings.ports.items()}
    common = {CoreSettings.env_name("home"): str(settings.home)}
    timeout = settings.start_timeout_s
    if prometheus is not None:
        folder = settings.home / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(prometheus_config(settings))
        specs.append(
            ProcessSpec(
                name=PROMETHEUS,
                argv=(
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    "--storage.tsdb.retention.time=2d",
                    f"--web.listen-address={settings.host}:{settings.prometheus_port}",
                ),
                health_url=f"{url[PROMETHEUS]}/-/healthy",
                ready_url=f"{url[PROMETHEUS]}/-/ready",
                start_timeout_s=timeout,
            )
        )
    service_env = {**common}
    if keys.api_key_source != SERVICE_KEYS_SETTING:  # else the services read the user's own
        service_env[SERVICE_KEYS_SETTING] = keys.api_key
    for name, variant in ((SERVICE_STABLE, STABLE), (SERVICE_CANARY, CANARY)):
        if name not in settings.components:
            continue
        port = settings.ports[name]
        specs.append(
            ProcessSpec(
                name=name,
                argv=inkwell_argv(
                    "service", "--variant", variant, "--host", settings.host, "--port", str(port)
                ),
                env=service_env,
                health_url=f"{url[name]}/healthz",
                # stable must serve before the system is "up"; a canary exists only mid-rollout,
                # and the canary service loads it when the alias appears
                ready_url=f"{url[name]}/readyz" if variant == STABLE else None,
                start_timeout_s=timeout,
            )
        )
    if TRAINER in settings.components:
        trainer_env = {
            **common,
            TrainerSettings.env_name("host"): settings.host,
            TrainerSettings.env_name("port"): str(settings.trainer_port),
        }
        if keys.trainer_key_source != TRAINER_KEY_SETTING:  # else the trainer reads the user's
            trainer_env[TRAINER_KEY_SETTING] = keys.trainer_key
        specs.append(
            ProcessSpec(
                name=TRAINER,
                argv=inkwell_argv("trainer"),
                env=trainer_env,
                health_url=f"{url[TRAINER]}/healthz",
                start_timeout_s=timeout,
            )
        )
    if ROUTER in settings.components:
        router = RouterSettings.env_name
        router_env = {
            **common,
            router("host"): settings.host,
            router("port"): str(settings.router_port),
            router("stable_url"): url[SERVICE_STABLE],
            router("canary_url"): url[SERVICE_CANARY],
            router("trainer_url"): url[TRAINER],
            ROUTER_KEY_SETTING: keys.admin_key,
        }
        if prometheus is not None:
            router_env[router("prometheus_url")] = url[PROMETHEUS]
        specs.append(
            ProcessSpec(
                name=ROUTER,
                argv=inkwell_argv("router"),
                env=router_env,
                health_url=f"{url[ROUTER]}/healthz",
                start_timeout_s=timeout,
            )
        )
    return specs


def restart_policy(settings: UpSettings) -> RestartPolicy:
    return RestartPolicy(
        initial_delay_s=settings.restart_initial_s,
        max_delay_s=settings.restart_max_s,
        max_failures=settings.restart_max_failures,
        health_interval_s=settings.health_interval_s,
        unhealthy_after=settings.unhealthy_after,
    )


def check_ports_free(settings: UpSettings, names: list[str]) -> None:
    """Fail early, with the fix, when a port is taken (often an `inkwell up` still running)."""
    for name in names:
        port = settings.ports[name]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((settings.host, port))
            except OSError as exc:
                env = f"INKWELL_UP_{name.removeprefix('service-').upper()}_PORT"
                raise ConflictError(
                    f"{settings.host}:{port} for {name} is already in use ({exc.strerror}). Stop "
                    f"whatever holds it (another `inkwell up`?) or choose a port with {env}.",
                    code="port_in_use",
                ) from exc


# ---- models --------------------------------------------------------------------------------


def seed_shipped_models(settings: UpSettings) -> list[str]:
    """Register the shipped models the registry has no version of; one line per model seeded."""
    if not settings.seed_shipped:
        return []
    from inkwell.shipped import seed_registry

    kinds = ("digits", "cheques") if cheques_available() else ("digits",)
    return [
        f"seeded {info.name} v{info.version} ({STABLE}) from the shipped model "
        f"(sha256 {info.tags.get('sha256', '')[:12]})"
        for info in seed_registry(settings, kinds=kinds)
    ]


def ensure_digit_model(settings: UpSettings) -> bool:
    """Train and register the base digit model when the registry has no stable; True if it did."""
    from inkwell.console import console
    from inkwell.registry import Registry
    from inkwell_app.cli import train as train_command

    registry = Registry(settings)
    found = registry.find_version(settings.model_name, STABLE)
    if found is not None:
        console.print(f"stable digit model: {found.name} v{found.version}")
        return False
    console.print(
        f"No {settings.model_name}@{STABLE} in {registry.tracking_uri}: training the base model "
        f"({settings.base_epochs} epochs on MNIST; a few minutes on a laptop CPU)."
    )
    train_command(epochs=settings.base_epochs, data=settings.data_dir)
    return True


def cheques_available() -> bool:
    """Whether the cheque-reading package is installed."""
    return importlib.util.find_spec("inkwell.cheques") is not None


def cheque_training_spec(settings: UpSettings) -> ProcessSpec | None:
    """A background job training the cheque model when the registry has none (else None).

    Full training takes far longer than anyone waits for a command to start, so the digit
    system comes up at once and the services pick the cheque model up when it is registered;
    until then `/v1/cheques/read` answers 503 model_not_ready.
    """
    if not (settings.train_missing and cheques_available()):
        return None
    from inkwell.registry import Registry

    if Registry(settings).find_version(settings.cheque_model_name, STABLE) is not None:
        return None
    return ProcessSpec(
        name=CHEQUE_TRAINING,
        argv=inkwell_argv(
            "cheques", "train", "--steps", str(settings.cheque_steps), "--eval-every", "0"
        ),
        env={"INKWELL_HOME": str(settings.home), "COLUMNS": "120"},
        oneshot=True,
    )


# ---- the command ---------------------------------------------------------------------------


@contextmanager
def stop_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (the supervisor then stops every child) while inside."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("already stopping; children get SIGKILL after the grace period")
        else:
            log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def configure_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from inkwell.console import console

    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    for name in ("inkwell_app.supervisor", "inkwell_app.up"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False


def print_summary(settings: UpSettings, keys: Keys, supervisor: Supervisor) -> None:
    from rich.table import Table

    from inkwell.console import console

    table = Table(show_header=False, box=None, padding=(0, 2))
    running = {s.name for s in supervisor.status()}
    if ROUTER in running:
        table.add_row("web page", f"[bold]{settings.url(settings.router_port)}/[/bold]")
        table.add_row("API (router)", settings.url(settings.router_port))
    for name in (SERVICE_STABLE, SERVICE_CANARY, TRAINER, PROMETHEUS):
        if name in running and name in settings.ports:
            table.add_row(name, settings.url(settings.ports[name]))
    table.add_row("API key (uploads)", f"{keys.api_key}  [dim]({keys.api_key_source})[/dim]")
    table.add_row("router admin key", f"{keys.admin_key}  [dim]({keys.admin_key_source})[/dim]")
    table.add_row(
        "trainer admin key", f"{keys.trainer_key}  [dim]({keys.trainer_key_source})[/dim]"
    )
    table.add_row("logs", str(settings.resolved_log_dir))
    console.print("[green bold]Inkwell is up.[/green bold]")
    console.print(table)
    if CHEQUE_TRAINING in running:
        console.print(
            f"No {settings.cheque_model_name}@{STABLE} yet: a quick cheque model "
            f"({settings.cheque_steps} steps) is training in the background (log: "
            f"{supervisor.log_path(CHEQUE_TRAINING)}); cheque reading answers 503 until it is "
            "registered. For the full model: inkwell cheques train --promote"
        )
    console.print("Press Ctrl-C to stop everything.")


def run_up(settings: UpSettings, *, train: bool = True, echo_logs: bool = False) -> int:
    """Bring the system up and supervise it until a stop signal; returns the exit status."""
    from inkwell.console import console

    prometheus = prometheus_binary(settings)
    names = list(settings.components) + ([PROMETHEUS] if prometheus else [])
    check_ports_free(settings, names)
    for line in seed_shipped_models(settings):
        console.print(line)
    if train and settings.train_missing and SERVICE_STABLE in settings.components:
        ensure_digit_model(settings)
    keys = resolve_keys(settings)
    specs = build_specs(settings, keys, prometheus)
    cheque_job = cheque_training_spec(settings) if train else None
    if cheque_job is not None:
        specs.append(cheque_job)
    echo: Callable[[str, str], None] | None = None
    if echo_logs:

        def echo(name: str, line: str) -> None:
            console.print(f"[dim]{name:>15} |[/dim] {line}", markup=True, highlight=False)

    supervisor = Supervisor(
        specs, policy=restart_policy(settings), log_dir=settings.resolved_log_dir, echo=echo
    )
    stop = threading.Event()
    with stop_signals(stop):
        supervisor.start()
        try:
            with console.status("starting " + ", ".join(s.name for s in specs)):
                ready = supervisor.wait_ready(settings.start_timeout_s, stop)
            if ready:
                print_summary(settings, keys, supervisor)
                supervisor.run(stop)
            elif not stop.is_set() and not supervisor.failed:
                waiting = [s.name for s in supervisor.status() if s.state != "running"]
                log.error("not ready after %.0f s: %s", settings.start_timeout_s, waiting)
        finally:
            supervisor.stop(settings.stop_timeout_s)
    if supervisor.failed:
        for status in supervisor.status():
            if status.name in supervisor.failed:
                console.print(
                    f"[red]{status.name} failed[/red] ({status.last_exit}); see {status.log_path}"
                )
        return 1
    if not stop.is_set():
        return 1
    console.print("stopped; no component is left running.")
    return 0


def up(
    skip: Annotated[
        list[str] | None,
        typer.Option("--skip", help=f"Do not run this component ({', '.join(COMPONENTS)})."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    train: Annotated[
        bool, typer.Option(help="Train the base models when the registry has no stable one.")
    ] = True,
    prometheus: Annotated[
        str | None, typer.Option(help="auto (start it when installed), on or off.")
    ] = None,
    logs: Annotated[bool, typer.Option(help="Also print the components' logs here.")] = False,
    verbose: Annotated[bool, typer.Option(help="Debug-level supervisor messages.")] = False,
) -> None:
    """Run the whole system locally: services, trainer, router + rollout controller, web page."""
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if prometheus is not None:
        if prometheus not in ("auto", "on", "off"):
            raise typer.BadParameter("choose auto, on or off", param_hint="--prometheus")
        overrides["prometheus"] = prometheus
    settings = UpSettings(**overrides)  # type: ignore[arg-type]
    if skip:
        unknown = [name for name in skip if name not in COMPONENTS]
        if unknown:
            raise typer.BadParameter(
                f"{unknown}: choose from {', '.join(COMPONENTS)}", param_hint="--skip"
            )
        settings = settings.model_copy(
            update={"components": [c for c in settings.components if c not in skip]}
        )
    configure_logging(verbose)
    raise typer.Exit(run_up(settings, train=train, echo_logs=logs))


def register(app: typer.Typer) -> None:
    """Attach `inkwell up` to the CLI."""
    app.command("up")(up)
