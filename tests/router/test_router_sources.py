"""The scraping metric source against real `/metrics` HTTP endpoints."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import start_http_server

from inkwell.errors import MetricsUnavailableError
from router import metrics as m
from router.analysis import build_observation
from router.metrics import RouterMetrics
from router.sources import ScrapeSource, increases, promql, resolve_addresses
from tests.harness import free_port


@pytest.fixture
def exporter():
    metrics = RouterMetrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield metrics, f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_counts_only_what_happened_inside_it(exporter):
    metrics, url = exporter
    clock = Clock()
    source = ScrapeSource([url], clock=clock)

    async def run():
        metrics.upstream_requests.labels("canary", "2", "ok", "live").inc(5)  # before the window
        await source.observe()
        clock.now += 10
        metrics.upstream_requests.labels("canary", "2", "ok", "live").inc(3)
        metrics.upstream_requests.labels("canary", "2", "error", "live").inc(2)
        metrics.upstream_latency.labels("canary", "2").observe(0.2)
        clock.now += 10
        (recent,) = await source.windows(15)
        (everything,) = await source.windows(60)
        await source.aclose()
        return recent, everything

    recent, everything = asyncio.run(run())
    canary = build_observation(recent).of("canary", "2")
    assert (canary.requests, canary.errors, canary.latency_count) == (5, 2, 1)
    # the oldest snapshot is the base when the window reaches further back
    assert build_observation(everything).of("canary", "2").requests == 5


def test_a_dead_target_is_skipped_but_all_dead_is_an_error(exporter):
    metrics, url = exporter
    dead = f"http://127.0.0.1:{free_port()}/metrics"

    async def run():
        source = ScrapeSource([url, dead], timeout_s=0.5)
        await source.observe()
        metrics.online_predictions.labels("stable", "1", "true").inc()
        (samples,) = await source.windows(30)
        await source.aclose()
        only_dead = ScrapeSource([dead], timeout_s=0.5)
        try:
            with pytest.raises(MetricsUnavailableError):
                await only_dead.windows(30)
        finally:
            await only_dead.aclose()
        return samples

    samples = asyncio.run(run())
    assert build_observation(samples).of("stable", "1").correct == 1


def test_counter_reset_counts_from_zero():
    key = (f"{m.UPSTREAM_REQUESTS}_total", (("variant", "canary"),))
    assert increases({key: 100.0}, {key: 7.0}) == {key: 7.0}
    assert increases({key: 5.0}, {key: 7.0}) == {key: 2.0}
    assert increases(None, {key: 7.0}) == {key: 7.0}


def test_gauges_are_current_values_not_increases():
    key = (m.CIRCUIT_OPEN, (("variant", "canary"),))
    assert increases({key: 1.0}, {key: 1.0}) == {key: 1.0}


def test_promql_sums_the_increase_over_replicas():
    query = promql(f"{m.UPSTREAM_LATENCY}_bucket", 2.5)
    assert query == (
        f"sum by (variant, model_version, le) (increase({m.UPSTREAM_LATENCY}_bucket[2500ms]))"
    )


def test_promql_leaves_override_requests_out_of_the_analysis():
    query = promql(f"{m.UPSTREAM_REQUESTS}_total", 2.5)
    assert query == (
        "sum by (variant, model_version, outcome) "
        f'(increase({m.UPSTREAM_REQUESTS}_total{{mode!="override"}}[2500ms]))'
    )


def test_promql_is_scoped_by_the_install_selector():
    query = promql(f"{m.UPSTREAM_REQUESTS}_total", 2.5, 'namespace="inkwell"')
    assert f'{m.UPSTREAM_REQUESTS}_total{{namespace="inkwell", mode!="override"}}' in query


@pytest.mark.parametrize("selector", ["{namespace='a'}", "namespace=a", 'namespace="a" job="b"'])
def test_a_malformed_prometheus_selector_is_refused_with_an_example(selector):
    from pydantic import ValidationError

    from router.settings import RouterSettings

    with pytest.raises(ValidationError, match=r'e\.g\. namespace="inkwell"'):
        RouterSettings(prometheus_selector=selector)


@pytest.fixture
def two_pods():
    """Two router pods: exporters on the same port at 127.0.0.1 and 127.0.0.2."""
    port = free_port()
    pods = []
    for address in ("127.0.0.1", "127.0.0.2"):
        metrics = RouterMetrics()
        server, thread = start_http_server(port, addr=address, registry=metrics.registry)
        pods.append((metrics, server, thread))
    yield [p[0] for p in pods], port
    for _, server, thread in pods:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_dns_target_is_scraped_per_pod_and_summed(two_pods):
    (first, second), port = two_pods
    clock = Clock()

    async def headless_service(host: str) -> list[str]:
        return ["127.0.0.1", "127.0.0.2"] if host == "router-pods" else []

    source = ScrapeSource(
        [f"dns+http://router-pods:{port}/metrics"], clock=clock, resolve=headless_service
    )

    async def run():
        first.upstream_requests.labels("canary", "2", "ok", "live").inc(10)
        await source.observe()
        clock.now += 10
        first.upstream_requests.labels("canary", "2", "ok", "live").inc(3)
        second.upstream_requests.labels("canary", "2", "ok", "live").inc(5)
        clock.now += 10
        (window,) = await source.windows(15)
        await source.aclose()
        return window

    window = asyncio.run(run())
    assert build_observation(window).of("canary", "2").requests == 8


def test_the_default_resolver_returns_every_address_of_a_name():
    assert "127.0.0.1" in asyncio.run(resolve_addresses("localhost"))
    assert asyncio.run(resolve_addresses("no-such-host.invalid")) == []
