"""The web page: draw a digit, teach, read a cheque amount, watch and steer the rollout.

Plain HTML/JS/CSS shipped as package data (no CDN: it works offline), served by whichever app
calls `mount_web` (the router, at `/`). The page talks to the public API the router proxies
(`/v1/digits/predict`, `/v1/samples`, `/v1/cheques/read`), to the router's admin API
(`/admin/rollout...`) and to one read-only summary added here, `/ui/api/overview`: the
registry's versions with their aliases and gate tags, and the trainer's status.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, FastAPI, Header
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from inkwell.errors import NotFoundError
from inkwell.settings import CoreSettings
from inkwell.web.http import require_key

WEB_DIR = Path(__file__).resolve().parent
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
NO_CACHE = {"Cache-Control": "no-cache"}
# What the page answers itself: an app that forwards everything else (the router) must route
# these paths to the app `mount_web` extended.
WEB_PATHS = frozenset({"/"})
WEB_PREFIXES = ("/ui/",)
MAX_VERSIONS = 12
VERSION_TAGS = (
    "validation_status",
    "test_accuracy",
    "gate_reason",
    "gate_result",
    "rolled_back",
    "parent_version",
    "promoted_at",
)


def registry_overview(settings: CoreSettings) -> dict[str, Any]:
    """The newest versions of the digit and cheque models with aliases and the gate's tags."""
    from inkwell.registry import Registry

    registry = Registry(settings)
    models: dict[str, Any] = {}
    for kind, name in (("digits", settings.model_name), ("cheques", settings.cheque_model_name)):
        versions = registry.list_versions(name)[:MAX_VERSIONS]
        models[kind] = {
            "name": name,
            "versions": [
                {
                    "version": v.version,
                    "aliases": list(v.aliases),
                    "tags": {k: v.tags[k] for k in v.tags if k in VERSION_TAGS or "gate" in k},
                }
                for v in versions
            ],
        }
    return models


async def trainer_status(url: str | None) -> dict[str, Any]:
    """The trainer's `GET /v1/status`, or why it is not available."""
    if not url:
        return {"available": False, "error": "no trainer URL is configured for this page"}
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(f"{url.rstrip('/')}/v1/status")
        response.raise_for_status()
        return {"available": True, "status": response.json()}
    except (httpx.HTTPError, ValueError) as exc:
        return {"available": False, "error": f"the trainer at {url} did not answer ({exc})"}


def mount_web(
    app: FastAPI,
    settings: CoreSettings,
    *,
    admin_key: Callable[[], str | None],
    trainer_url: str | None = None,
) -> None:
    """Serve the page at `/` and its assets under `/ui/`; call before any catch-all route.

    `admin_key` returns the key that unlocks `/ui/api/overview` (the router's admin key);
    `trainer_url` is where the trainer's status is read from (None: shown as unavailable).
    """
    web = APIRouter(include_in_schema=False)

    @web.get("/")
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=NO_CACHE)

    @web.get("/ui/{name}")
    async def asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise NotFoundError(f"/ui/{name} is not part of the web page.")
        return FileResponse(WEB_DIR / name, media_type=media_type, headers=NO_CACHE)

    @web.get("/ui/api/overview")
    async def overview(
        x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
    ) -> dict[str, Any]:
        expected = admin_key()
        require_key(
            x_api_key,
            [expected] if expected is not None else [],
            missing="the overview needs the admin key in the X-API-Key header (the router's "
            "INKWELL_ROUTER_ADMIN_API_KEY, or <INKWELL_HOME>/router-admin.key).",
            wrong="the X-API-Key is not the admin key.",
        )
        return {
            "models": await run_in_threadpool(registry_overview, settings),
            "trainer": await trainer_status(trainer_url),
        }

    app.include_router(web)
