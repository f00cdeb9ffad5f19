"""Fixtures for router tests (helpers live in router_fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.router.router_fakes import FakeService, SharedServer, shared_server


@pytest.fixture(scope="module")
def stable_server() -> Iterator[SharedServer]:
    """The server the module's fake stable services are served on, one test at a time."""
    with shared_server() as server:
        yield server


@pytest.fixture(scope="module")
def canary_server() -> Iterator[SharedServer]:
    """The server the module's fake canary services are served on, one test at a time."""
    with shared_server() as server:
        yield server


@pytest.fixture
def stable_service(stable_server: SharedServer) -> Iterator[tuple[FakeService, str]]:
    service = FakeService("stable", "1")
    with stable_server.serving(service.app()) as url:
        yield service, url


@pytest.fixture
def canary_service(canary_server: SharedServer) -> Iterator[tuple[FakeService, str]]:
    service = FakeService("canary", "2")
    with canary_server.serving(service.app()) as url:
        yield service, url
