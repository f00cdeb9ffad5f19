"""Wiring only: the router's FastAPI app, its background loops and its lifespan.

`create_app(settings)` builds the parts (no network, no files); the lifespan opens the rollout
store and registry, then runs three loops until shutdown: probing which version each service
serves, refreshing the rollout state from the database, and the rollout controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from inkwell.errors import ConflictError, InkwellError, StoreUnavailableError
from inkwell.heap import StartupFreeze
from inkwell.settings import CANARY, STABLE
from inkwell.web.headers import with_security_headers
from inkwell.web.http import error_response, register_error_handlers
from router import admin
from router.capacity import make_scaler
from router.cheque_rollout import ChequeRolloutController, ChequeServed
from router.controller import MlflowAliases, RolloutController
from router.metrics import RouterMetrics
from router.pending import PendingPredictions
from router.proxy import Proxy
from router.routing import Split
from router.settings import RouterSettings
from router.sources import MetricSource, make_source
from router.state import PHASES, RolloutState, RolloutStore
from router.web import WEB_PATHS, WEB_PREFIXES, mount_web

log = logging.getLogger("inkwell.router")
# How long a router without the controller waits at start for the stored canary weight.
WEIGHT_WAIT_S = 3.0

# Paths the router answers itself; everything else is proxied to the services.
OWN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", *WEB_PATHS})
OWN_PREFIXES = ("/admin/", "/router/", *WEB_PREFIXES)


class RouterApp:
    """The router as ASGI: proxied requests go straight to the proxy, skipping FastAPI's
    middleware, routing and telemetry (a measurable share of the CPU per request); the
    router's own paths (health, metrics, admin, docs) and the lifespan go to `fastapi`."""

    def __init__(self, fastapi: FastAPI, runtime: Runtime) -> None:
        self.fastapi = fastapi
        self.app: ASGIApp = fastapi
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = with_security_headers(send, path)
        if path in OWN_PATHS or path.startswith(OWN_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            response = await self.runtime.proxy.handle(Request(scope, receive))
        except InkwellError as exc:
            response = error_response(exc.status_code, exc.code, exc.message)
        except Exception:
            log.exception("proxying %s failed", path)
            response = error_response(
                500, "internal_error", "the router failed on this request; see its log."
            )
        await response(scope, receive, send)


class Runtime:
    """Everything one router process holds: proxy, metrics, rollout controller, loops."""

    def __init__(
        self,
        settings: RouterSettings,
        *,
        source: MetricSource | None = None,
        aliases: Any = None,
        cheque_aliases: Any = None,
    ) -> None:
        self.settings = settings
        self.metrics = RouterMetrics()
        self.proxy = Proxy(settings, self.metrics, self.split, cheque_split=self.cheque_split)
        self.controller: RolloutController | None = None
        self.cheque_controller: ChequeRolloutController | None = None
        self._cheque_split: Split | None = None  # None: cheque routes follow the digit split
        self.store: RolloutStore | None = None
        self.admin_key: str | None = None
        self._source = source
        self._aliases = aliases
        self._cheque_aliases = cheque_aliases
        self._split = Split(shadow=settings.shadow, shadow_fraction=settings.shadow_fraction)
        # Without the controller: the weight set through the admin API (shared by the replicas
        # through the database), else the static INKWELL_ROUTER_CANARY_WEIGHT.
        self._manual_weight: float | None = None
        self._weight_readable = True
        self._weight_checked = asyncio.Event()  # set once the first look at the store ended
        self._canary_version: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- the split -------------------------------------------------------------------------
    def split(self) -> Split:
        """The traffic split now: from the rollout state, or static from settings."""
        if self.controller is not None:
            return self._split
        return Split(
            weight=self.static_weight,
            canary_version=self.proxy.canary.served_version,
            stable_version=self.proxy.stable.served_version,
            shadow=self.settings.shadow,
            shadow_fraction=self.settings.shadow_fraction,
        )

    @property
    def manual_weight(self) -> float | None:
        """The weight set through the admin API, None while none was."""
        return self._manual_weight

    @property
    def static_weight(self) -> float:
        """The controller-less split's canary weight: the admin API's, else the settings'."""
        manual = self._manual_weight
        return self.settings.canary_weight if manual is None else manual

    async def set_canary_weight(self, weight: float, actor: str) -> float:
        """Set the controller-less split for every replica; returns the weight it replaced."""
        if self.controller is not None:
            raise ConflictError(
                "the rollout controller sets the canary weight in this router; use "
                "/admin/rollout/pause, promote or rollback, or run the router with "
                "INKWELL_ROUTER_CONTROLLER=false to set the weight from outside (Argo Rollouts).",
                code="controller_enabled",
            )
        store = await self._weight_store()
        previous = self.static_weight
        try:
            await asyncio.to_thread(
                store.set_manual_weight, self.settings.model_name, weight, actor=actor
            )
        except SQLAlchemyError as exc:
            raise self._weight_store_down(exc) from exc
        self._apply_manual_weight(weight)
        log.info("canary weight set to %g %% by %s (was %g %%)", weight, actor, previous)
        return previous

    async def _weight_store(self) -> RolloutStore:
        if self.store is None:
            try:
                self.store = await asyncio.to_thread(
                    RolloutStore, self.settings.resolved_database_url
                )
            except (SQLAlchemyError, OSError) as exc:
                raise self._weight_store_down(exc) from exc
        return self.store

    @staticmethod
    def _weight_store_down(exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            "the router's database is unreachable, so the canary weight cannot be stored for "
            f"every replica ({exc.__class__.__name__}); retry when it is back.",
            retry_after_s=5,
        )

    def _apply_manual_weight(self, weight: float | None) -> None:
        self._manual_weight = weight
        self.metrics.canary_weight.set(self.static_weight)

    async def _refresh_manual_weight(self) -> None:
        """Follow the weight another replica (or an earlier run) stored; while the database is
        away the last known weight stays, with one warning per outage."""
        try:
            await self._read_manual_weight()
        finally:
            self._weight_checked.set()

    async def _read_manual_weight(self) -> None:
        try:
            store = await self._weight_store()
            weight = await asyncio.to_thread(store.manual_weight, self.settings.model_name)
        except (StoreUnavailableError, SQLAlchemyError) as exc:
            if self._weight_readable:
                log.warning(
                    "canary weight not refreshed, keeping %g %%: %s", self.static_weight, exc
                )
            self._weight_readable = False
            return
        self._weight_readable = True
        if weight is not None and weight != self._manual_weight:
            log.info("canary weight is now %g %% (set through the admin API)", weight)
        self._apply_manual_weight(weight)

    def apply_state(self, state: RolloutState) -> None:
        """Route by a (new) rollout state; a new canary version starts with a closed breaker."""
        serving = state.serving_canary
        self._split = Split(
            weight=state.weight if serving else 0.0,
            canary_version=state.canary_version if serving else None,
            stable_version=state.stable_version,
            shadow=self.settings.shadow,
            shadow_fraction=self.settings.shadow_fraction,
        )
        if serving and state.canary_version != self._canary_version:
            self.proxy.reset_canary()
        self._canary_version = state.canary_version if serving else None

    def served_version(self, variant: str) -> str | None:
        return self.proxy.backend(variant).served_version

    def cheque_split(self) -> Split | None:
        """The cheque rollout's split, or None while it does not run."""
        return self._cheque_split

    def apply_cheque_state(self, state: RolloutState) -> None:
        """Route the cheque model routes by a (new) cheque rollout state."""
        serving = state.serving_canary
        self._cheque_split = Split(
            weight=state.weight if serving else 0.0,
            canary_version=state.canary_version if serving else None,
            stable_version=state.stable_version,
        )
        self.metrics.set_cheque_rollout(
            state.phase.value,
            PHASES,
            state.step_index if serving else -1,
            state.weight if serving else 0.0,
        )

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        settings = self.settings
        self.admin_key = await asyncio.to_thread(settings.resolved_admin_key)
        tester = settings.tester_api_key
        self.proxy.override_keys = tuple(
            key for key in (self.admin_key, tester and tester.get_secret_value()) if key
        )
        await self.proxy.probe_all()
        if settings.served_store == "database":
            self.proxy.pending = await asyncio.to_thread(
                PendingPredictions,
                settings.resolved_database_url,
                capacity=settings.served_memory,
                ttl_s=settings.served_ttl_s,
            )
            self._spawn(self._every(settings.served_flush_s, self._flush_pending), "pending")
        if settings.controller:
            self.store = await asyncio.to_thread(RolloutStore, settings.resolved_database_url)
            aliases = self._aliases
            if aliases is None:
                from inkwell.registry import Registry  # MLflow is slow to import

                registry = await asyncio.to_thread(Registry, settings)
                aliases = MlflowAliases(registry, settings.model_name)
            source = self._source or make_source(
                settings.prometheus_url,
                settings.resolved_metrics_targets,
                selector=settings.prometheus_selector,
            )
            self.controller = RolloutController(
                settings,
                self.store,
                aliases,
                source,
                self.metrics,
                self,
                on_state=self.apply_state,
                capacity=await asyncio.to_thread(make_scaler, settings),
            )
            self.apply_state(await self.controller.load())
            self._spawn(self.controller.run(self._stop), "controller")
            cheque_aliases = self._cheque_aliases
            if cheque_aliases is None and isinstance(aliases, MlflowAliases):
                cheque_aliases = MlflowAliases(aliases.registry, settings.cheque_model_name)
            if settings.cheque_rollout and cheque_aliases is not None:
                self.cheque_controller = ChequeRolloutController(
                    settings,
                    self.store,
                    cheque_aliases,
                    source,
                    ChequeServed(self.proxy.backend),
                    on_state=self.apply_cheque_state,
                )
                self.apply_cheque_state(await self.cheque_controller.load())
                self._spawn(self.cheque_controller.run(self._stop), "cheque-controller")
            self._spawn(self._every(settings.state_refresh_s, self._refresh_state), "state")
        else:
            self.metrics.canary_weight.set(settings.canary_weight)
            self._spawn(
                self._every(settings.state_refresh_s, self._refresh_manual_weight), "weight"
            )
            # Route by the stored weight from the first request on, but never hold the start
            # for a database that is down (the loop keeps trying; until then, the setting).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._weight_checked.wait(), timeout=WEIGHT_WAIT_S)
        self._spawn(self._every(settings.probe_interval_s, self._probe), "probe")

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.create_task(_run(coroutine), name=f"router-{name}"))

    async def _every(self, period: float, action: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await action()
            except Exception:  # a background hiccup must never stop routing
                log.exception("router background task failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=period)

    async def _probe(self) -> None:
        await self.proxy.probe_all()

    async def _flush_pending(self) -> None:
        if self.proxy.pending is None:
            return
        try:
            await asyncio.to_thread(self.proxy.pending.flush)
        except Exception as exc:  # the database is away: the buffer keeps the newest rows
            log.warning("served predictions not written (retrying): %s", exc.__class__.__name__)

    async def _refresh_state(self) -> None:
        if self.controller is not None:
            await self.controller.load()
        if self.cheque_controller is not None:
            await self.cheque_controller.load()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=10)
        await self.proxy.aclose()
        if self.proxy.pending is not None:
            with contextlib.suppress(Exception):  # best effort: the database may be gone
                await asyncio.to_thread(self.proxy.pending.flush)
            self.proxy.pending.dispose()
        if self.controller is not None:
            await self.controller.source.aclose()
            if self.controller.capacity is not None:
                await self.controller.capacity.aclose()
        if self.store is not None:
            self.store.dispose()


async def _run(awaitable: Awaitable[None]) -> None:
    await awaitable


def create_app(
    settings: RouterSettings | None = None,
    *,
    source: MetricSource | None = None,
    aliases: Any = None,
    cheque_aliases: Any = None,
) -> RouterApp:
    """The router app. `source`/`aliases`/`cheque_aliases` replace the metric source and the
    digit and cheque models' registry aliases (tests)."""
    settings = settings or RouterSettings()
    runtime = Runtime(settings, source=source, aliases=aliases, cheque_aliases=cheque_aliases)

    heap = StartupFreeze()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        heap.freeze()  # full collections skip the start-up heap; see inkwell.heap
        try:
            yield
        finally:
            await runtime.stop()
            heap.thaw()

    app = FastAPI(
        title="Inkwell router",
        summary="Stable/canary reverse proxy and rollout controller.",
        lifespan=lifespan,
        docs_url="/router/docs",
        redoc_url=None,
        openapi_url="/router/openapi.json",
    )
    app.state.runtime = runtime
    register_error_handlers(
        app,
        name="router",
        routes_hint="See /router/docs for the router's own routes; others go to the service.",
        docs_hint="See /router/docs for the schema.",
    )
    app.include_router(admin.router)
    mount_web(app, settings, admin_key=lambda: runtime.admin_key, trainer_url=settings.trainer_url)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        stable = runtime.proxy.stable
        if not stable.ready:
            return error_response(
                503,
                "not_ready",
                f"the stable service at {stable.url} is not ready; start it or wait for it to "
                "load its model.",
            )
        return JSONResponse(
            {
                "status": "ready",
                "served_versions": {
                    STABLE: stable.served_version,
                    CANARY: runtime.proxy.canary.served_version,
                },
                "served_cheque_versions": {
                    STABLE: stable.cheque_version,
                    CANARY: runtime.proxy.canary.cheque_version,
                },
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(
            runtime.metrics.exposition(),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    return RouterApp(app, runtime)
