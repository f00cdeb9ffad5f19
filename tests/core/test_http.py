"""The shared HTTP plumbing: one error vocabulary, key checks and key files for every app."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import FastAPI, Header
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from inkwell.errors import AuthError, OverloadedError
from inkwell.web.http import (
    API_KEY_REQUIRED,
    INVALID_API_KEY,
    INVALID_REQUEST,
    key_file,
    matching_key,
    register_error_handlers,
    require_key,
)

KEY = "http-test-key-0123456789"


class Body(BaseModel):
    count: int = Field(ge=0)


def app() -> FastAPI:
    """A small app wired like every component: the shared error map and `require_key`."""
    web = FastAPI()
    register_error_handlers(
        web, name="test", routes_hint="See /docs for the routes.", docs_hint="See /docs."
    )

    @web.post("/items")
    async def items(body: Body, x_api_key: Annotated[str | None, Header()] = None) -> dict:
        require_key(x_api_key, [KEY], missing="send X-API-Key", wrong="wrong X-API-Key")
        return {"count": body.count}

    @web.get("/v2/busy")
    async def busy() -> None:
        raise OverloadedError("busy; retry", retry_after_s=3)

    @web.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    return web


@pytest.fixture
def client() -> TestClient:
    return TestClient(app(), raise_server_exceptions=False)


def test_invalid_body_is_invalid_request_naming_the_field(client: TestClient) -> None:
    response = client.post("/items", json={"count": -1}, headers={"X-API-Key": KEY})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == INVALID_REQUEST == "invalid_request"
    assert "count" in body["message"] and "See /docs." in body["message"]


@pytest.mark.parametrize(
    ("headers", "code"), [({}, API_KEY_REQUIRED), ({"X-API-Key": "nope"}, INVALID_API_KEY)]
)
def test_missing_and_wrong_keys_are_distinct_401s(
    client: TestClient, headers: dict[str, str], code: str
) -> None:
    response = client.post("/items", json={"count": 1}, headers=headers)
    assert response.status_code == 401 and response.json()["code"] == code
    assert response.headers["www-authenticate"] == "ApiKey"
    assert client.post("/items", json={"count": 1}, headers={"X-API-Key": KEY}).json() == {
        "count": 1
    }


def test_unknown_route_and_method_get_json_saying_where_the_routes_are(
    client: TestClient,
) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert "See /docs for the routes." in missing.json()["message"]
    wrong = client.get("/items")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


def test_retry_later_errors_carry_retry_after_and_oip_routes_carry_error(
    client: TestClient,
) -> None:
    response = client.get("/v2/busy")
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert response.json()["error"] == response.json()["message"] == "busy; retry"


def test_unexpected_errors_are_json_500s(client: TestClient) -> None:
    response = client.get("/boom")
    assert response.status_code == 500 and response.json()["code"] == "internal_error"


def test_no_accepted_key_reads_as_missing_and_the_match_is_returned() -> None:
    with pytest.raises(AuthError) as refused:
        require_key("anything", [], missing="configure a key", wrong="-")
    assert refused.value.code == API_KEY_REQUIRED and "configure" in refused.value.message
    assert require_key("b-key", ["a-key", "b-key"], missing="-", wrong="-") == "b-key"
    assert matching_key("c-key", ["a-key", "b-key"]) is None
    assert matching_key(None, ["a-key"]) is None


def test_key_file_is_made_once_owner_only_and_shared_by_racing_processes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "home" / "admin.key"
    assert key_file(path, create=False) is None and not path.exists()
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: key_file(path), range(16)))
    assert len(keys) == 1 and len(keys.pop() or "") >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_file(path) == key_file(path, create=False) == path.read_text().strip()
    assert [p.name for p in path.parent.iterdir()] == ["admin.key"]  # no temp file left
