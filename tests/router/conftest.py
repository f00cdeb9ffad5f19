"""Fixtures for router tests (helpers live in router_fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.router.router_fakes import FakeService, serve_in_thread


@pytest.fixture
def stable_service() -> Iterator[tuple[FakeService, str]]:
    service = FakeService("stable", "1")
    with serve_in_thread(service.app()) as url:
        yield service, url


@pytest.fixture
def canary_service() -> Iterator[tuple[FakeService, str]]:
    service = FakeService("canary", "2")
    with serve_in_thread(service.app()) as url:
        yield service, url
