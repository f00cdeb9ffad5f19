"""`mount_web` on a bare FastAPI app: the page and its assets, and the admin-only overview of
the registry and the trainer (a real registry, a real HTTP server standing in for the trainer)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from inkwell.errors import InkwellError
from inkwell.settings import CoreSettings
from router.web import WEB_DIR, mount_web
from tests.e2e.stack import register_digits
from tests.harness import free_port

ADMIN = "the-admin-key"


def make_app(home: Path, trainer_url: str | None = None) -> FastAPI:
    """A bare app like the router: an error map for domain errors, and a catch-all proxy."""
    app = FastAPI()

    @app.exception_handler(InkwellError)
    async def domain_error(_: Request, exc: InkwellError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": exc.message}, exc.status_code)

    mount_web(app, CoreSettings(home=home), admin_key=lambda: ADMIN, trainer_url=trainer_url)

    @app.api_route("/{path:path}", methods=["GET", "POST"])  # like the router's proxy
    async def catch_all(path: str) -> dict[str, str]:
        return {"proxied": path}

    return app


def test_page_and_assets_are_served_before_the_catch_all(tmp_path: Path) -> None:
    client = TestClient(make_app(tmp_path))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text
    js = client.get("/ui/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
    missing = client.get("/ui/__init__.py")  # only the page's own assets are served
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert client.get("/v1/digits/predict").json() == {"proxied": "v1/digits/predict"}


def test_page_references_nothing_outside_this_server() -> None:
    for name in ("index.html", "app.js", "style.css"):
        text = (WEB_DIR / name).read_text()
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert [u for u in urls if "www.w3.org/2000/svg" not in u] == [], name


def test_overview_needs_the_admin_key(tmp_path: Path) -> None:
    client = TestClient(make_app(tmp_path))
    missing = client.get("/ui/api/overview")
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["message"]
    wrong = client.get("/ui/api/overview", headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_api_key"


@pytest.fixture
def trainer_status_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server answering GET /v1/status with a trainer-shaped document."""
    root = tmp_path / "trainer"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "status").write_text(json.dumps({"running": False, "pending": {"count": 3}}))
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.integration
def test_overview_lists_versions_with_aliases_and_the_trainer_status(
    tmp_path: Path, base_weights: dict[str, torch.Tensor], trainer_status_server: str
) -> None:
    home = tmp_path / "home"
    register_digits(home, base_weights, ("stable",))
    register_digits(home, base_weights, ("canary",), note="candidate")
    client = TestClient(make_app(home, trainer_url=trainer_status_server))
    overview = client.get("/ui/api/overview", headers={"X-API-Key": ADMIN}).json()
    digits = overview["models"]["digits"]
    assert [(v["version"], v["aliases"]) for v in digits["versions"]] == [
        ("2", ["canary"]),
        ("1", ["stable"]),
    ]
    assert digits["versions"][1]["tags"]["validation_status"] == "base"
    assert overview["models"]["cheques"]["versions"] == []
    assert overview["trainer"] == {
        "available": True,
        "status": {"running": False, "pending": {"count": 3}},
    }


def test_overview_says_why_the_trainer_is_missing(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    client = TestClient(make_app(tmp_path, trainer_url=f"http://127.0.0.1:{port}"))
    trainer = client.get("/ui/api/overview", headers={"X-API-Key": ADMIN}).json()["trainer"]
    assert trainer["available"] is False
    assert f"127.0.0.1:{port} did not answer" in trainer["error"]
