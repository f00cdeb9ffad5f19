"""Two installs on one real Prometheus: the controller's queries read only their own series."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import start_http_server

from router import metrics as m
from router.analysis import build_observation
from router.metrics import RouterMetrics
from router.sources import PrometheusSource
from tests.harness import Process, free_port, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus"),
]

NAMESPACES = ("inkwell-a", "inkwell-b")


def scoped_config(targets: dict[str, str]) -> str:
    """Both installs under the same job name, told apart only by their namespace label."""
    jobs = "".join(
        f"      - targets: ['{url.removeprefix('http://').removesuffix('/metrics')}']\n"
        f"        labels: {{namespace: {namespace}}}\n"
        for namespace, url in targets.items()
    )
    return (
        "global:\n  scrape_interval: 200ms\nscrape_configs:\n"
        "  - job_name: inkwell-router\n    static_configs:\n" + jobs
    )


@pytest.fixture
def two_installs(tmp_path: Path) -> Iterator[tuple[dict[str, RouterMetrics], str]]:
    """A router registry per namespace, both scraped by one Prometheus."""
    installs: dict[str, RouterMetrics] = {}
    urls: dict[str, str] = {}
    servers = []
    for namespace in NAMESPACES:
        installs[namespace] = RouterMetrics()
        port = free_port()
        servers.append(
            start_http_server(port, addr="127.0.0.1", registry=installs[namespace].registry)
        )
        urls[namespace] = f"http://127.0.0.1:{port}/metrics"
    config = tmp_path / "prometheus.yml"
    config.write_text(scoped_config(urls))
    port = free_port()
    proc = Process(
        f"prometheus-{port}",
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        tmp_path / "prometheus.log",
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 60, "prom", proc)
        yield installs, url
    finally:
        proc.stop()
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _requests_seen(url: str, selector: str) -> dict[str, float]:
    """Canary live requests per model version, as the controller's analysis reads them."""

    async def run() -> dict[str, float]:
        source = PrometheusSource(url, selector=selector)
        try:
            (window,) = await source.windows(120)
        finally:
            await source.aclose()
        stats = build_observation(window).stats
        return {version: s.requests for (variant, version), s in stats.items() if s.requests}

    return asyncio.run(run())


def _answers(url: str, query: str) -> int:
    body = httpx.get(f"{url}/api/v1/query", params={"query": query}).json()
    return len(body["data"]["result"])


# Each install serves its own canary version, so a mixed-in series shows up by its version.
VERSIONS = dict(zip(NAMESPACES, ("2", "3"), strict=True))


def test_controller_queries_read_only_their_own_installs_series(two_installs):
    installs, url = two_installs
    wait_until(lambda: _answers(url, "up == 1") == 2, 30, "both installs scraped")
    for namespace, version in VERSIONS.items():
        installs[namespace].upstream_requests.labels("canary", version, "ok", "live").inc(0)
    series = f'{m.UPSTREAM_REQUESTS}_total{{mode="live"}} == 0'
    wait_until(lambda: _answers(url, series) == 2, 30, "zero samples scraped")
    for namespace, version in VERSIONS.items():
        installs[namespace].upstream_requests.labels("canary", version, "ok", "live").inc(5)
    wait_until(lambda: len(_requests_seen(url, "")) == 2, 30, "increments scraped")

    assert _requests_seen(url, 'namespace="inkwell-a"').keys() == {"2"}
    assert _requests_seen(url, 'namespace="inkwell-b", job="inkwell-router"').keys() == {"3"}
    assert _requests_seen(url, 'namespace="elsewhere"') == {}
