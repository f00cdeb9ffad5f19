"""Where the rollout analysis reads its metrics: one interface, two implementations.

- `PrometheusSource` asks a Prometheus server with PromQL (`increase(...[window])`, summed
  over replicas), used when `INKWELL_ROUTER_PROMETHEUS_URL` is set.
- `ScrapeSource` scrapes the components' `/metrics` itself (router and both services), keeps a
  short history of snapshots and computes the same increases, for one machine with no server.

Both return `analysis.Sample`s, so `analysis.build_observation` and `analysis.analyse` are the
same code whichever source is used.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inkwell.errors import MetricsUnavailableError
from router import metrics as m
from router.analysis import SERVICE_CONFIDENCE, Sample
from router.cheque_analysis import CHEQUE_CONFIDENCE, CHEQUE_READS, CHEQUE_REVIEWED

COUNTERS = (
    f"{m.UPSTREAM_REQUESTS}_total",
    f"{m.UPSTREAM_LATENCY}_bucket",
    f"{SERVICE_CONFIDENCE}_sum",
    f"{SERVICE_CONFIDENCE}_count",
    f"{m.ONLINE_PREDICTIONS}_total",
    f"{m.SHADOW_COMPARISONS}_total",
    # the cheque rollout's (router.cheque_analysis)
    f"{CHEQUE_READS}_total",
    f"{CHEQUE_CONFIDENCE}_sum",
    f"{CHEQUE_CONFIDENCE}_count",
    f"{CHEQUE_REVIEWED}_total",
    f"{m.CHEQUE_UPSTREAM_REQUESTS}_total",
    f"{m.CHEQUE_UPSTREAM_LATENCY}_bucket",
)
GAUGES = (m.CIRCUIT_OPEN,)
# Series the analysis must not see (summing by the GROUP_BY labels would mix them in).
SELECTORS = {
    f"{m.UPSTREAM_REQUESTS}_total": f'{{mode!="{m.OVERRIDE}"}}',
    f"{m.CHEQUE_UPSTREAM_REQUESTS}_total": f'{{mode!="{m.OVERRIDE}"}}',
}
GROUP_BY = {
    f"{m.UPSTREAM_REQUESTS}_total": ("variant", "model_version", "outcome"),
    f"{m.UPSTREAM_LATENCY}_bucket": ("variant", "model_version", "le"),
    f"{SERVICE_CONFIDENCE}_sum": ("variant", "model_version"),
    f"{SERVICE_CONFIDENCE}_count": ("variant", "model_version"),
    f"{m.ONLINE_PREDICTIONS}_total": ("variant", "model_version", "correct"),
    f"{m.SHADOW_COMPARISONS}_total": ("stable_version", "canary_version", "agree"),
    f"{CHEQUE_READS}_total": ("variant", "model_version", "needs_review"),
    f"{CHEQUE_CONFIDENCE}_sum": ("variant", "model_version"),
    f"{CHEQUE_CONFIDENCE}_count": ("variant", "model_version"),
    f"{CHEQUE_REVIEWED}_total": ("variant", "model_version", "exact"),
    f"{m.CHEQUE_UPSTREAM_REQUESTS}_total": ("variant", "model_version", "outcome"),
    f"{m.CHEQUE_UPSTREAM_LATENCY}_bucket": ("variant", "model_version", "le"),
}


class MetricSource(Protocol):
    """Increases of the analysis metrics over a trailing window."""

    name: str

    async def observe(self) -> None:
        """Called every controller tick (lets a scraping source keep its history)."""

    async def windows(self, *seconds: float) -> list[list[Sample]]:
        """For each trailing window, every series' increase over it (gauges: current value),
        all read at the same moment."""
        ...

    async def aclose(self) -> None: ...


# ---- Prometheus ---------------------------------------------------------------------------


def scoped(sample_name: str, selector: str = "") -> str:
    """The series `sample_name` restricted to this install's `selector` matchers (e.g.
    `namespace="inkwell"`), plus the matchers the analysis always needs."""
    inner = SELECTORS.get(sample_name, "{}")[1:-1]
    matchers = ", ".join(part for part in (selector.strip(), inner) if part)
    return f"{sample_name}{{{matchers}}}" if matchers else sample_name


def promql(sample_name: str, seconds: float, selector: str = "") -> str:
    """The PromQL query for one metric's increase over the window, summed over replicas."""
    window = f"{max(1, math.ceil(seconds * 1000))}ms"
    series = scoped(sample_name, selector)
    return f"sum by ({', '.join(GROUP_BY[sample_name])}) (increase({series}[{window}]))"


class PrometheusSource:
    """Reads the analysis metrics from a Prometheus server's HTTP API."""

    name = "prometheus"

    def __init__(self, url: str, *, selector: str = "", timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.selector = selector
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def observe(self) -> None:
        return None

    async def query(self, expression: str) -> list[tuple[dict[str, str], float]]:
        """An instant PromQL query's vector result as (labels, value) pairs."""
        try:
            response = await self._client.get(
                f"{self.url}/api/v1/query", params={"query": expression}
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} did not answer ({exc!r}); check "
                "INKWELL_ROUTER_PROMETHEUS_URL or unset it to scrape the services directly."
            ) from exc
        if body.get("status") != "success":
            raise MetricsUnavailableError(
                f"Prometheus rejected {expression!r}: {body.get('error', body)}"
            )
        result = body.get("data", {}).get("result", [])
        pairs = []
        for item in result:
            value = float(item["value"][1])
            if not math.isnan(value):
                pairs.append((dict(item.get("metric", {})), value))
        return pairs

    async def windows(self, *seconds: float) -> list[list[Sample]]:
        return list(await asyncio.gather(*(self._window(s) for s in seconds)))

    async def _window(self, seconds: float) -> list[Sample]:
        expressions = {name: promql(name, seconds, self.selector) for name in COUNTERS}
        expressions.update(
            {name: f"max by (variant) ({scoped(name, self.selector)})" for name in GAUGES}
        )
        results = await asyncio.gather(*(self.query(e) for e in expressions.values()))
        return [
            Sample(name, labels, value)
            for name, pairs in zip(expressions, results, strict=True)
            for labels, value in pairs
        ]

    async def aclose(self) -> None:
        await self._client.aclose()


# ---- scraping ------------------------------------------------------------------------------

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Snapshot:
    at: float
    targets: dict[str, dict[SeriesKey, float]]  # successful scrapes only


def parse_exposition(text: str) -> dict[SeriesKey, float]:
    """The analysis series in a Prometheus text exposition."""
    wanted = set(COUNTERS) | set(GAUGES)
    series: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                series[key] = float(sample.value)
    return series


def increases(
    base: dict[SeriesKey, float] | None, now: dict[SeriesKey, float]
) -> dict[SeriesKey, float]:
    """Counter increases from `base` to `now`; a series missing from `base` started at zero
    after it, and a value below its base means the process restarted (count from zero)."""
    result: dict[SeriesKey, float] = {}
    for key, value in now.items():
        if key[0] in GAUGES:
            result[key] = value
            continue
        before = (base or {}).get(key, 0.0)
        result[key] = value - before if value >= before else value
    return result


# A target written `dns+http://name:port/metrics` stands for every address `name` resolves to:
# with a headless Service that is one URL per pod, so each pod's counters keep their own
# history (through a load-balanced Service, successive scrapes hit different pods).
DNS_PREFIX = "dns+"

Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve_addresses(host: str) -> list[str]:
    """Every IPv4/IPv6 address of `host` (a headless Service: one per ready pod), sorted."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []  # an unknown name is a target with no pods this time
    return sorted({str(info[4][0]) for info in infos})


async def expand_targets(targets: list[str], resolve: Resolver) -> list[str]:
    """`targets` with each `dns+` entry replaced by one URL per address its host resolves to."""
    expanded: list[str] = []
    for target in targets:
        if not target.startswith(DNS_PREFIX):
            expanded.append(target)
            continue
        parts = urlsplit(target.removeprefix(DNS_PREFIX))
        port = f":{parts.port}" if parts.port else ""
        for address in await resolve(parts.hostname or ""):
            host = f"[{address}]" if ":" in address else address
            expanded.append(urlunsplit(parts._replace(netloc=f"{host}{port}")))
    return expanded


class ScrapeSource:
    """Scrapes `/metrics` of each target (each pod, for `dns+` targets) and keeps
    timestamped snapshots."""

    name = "scrape"

    def __init__(
        self,
        targets: list[str],
        *,
        keep_s: float = 3600.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        resolve: Resolver = resolve_addresses,
    ) -> None:
        self.targets = list(targets)
        self.keep_s = keep_s
        self._clock = clock
        self._resolve = resolve
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self._history: list[Snapshot] = []
        self._lock = asyncio.Lock()

    async def _scrape(self, target: str) -> dict[SeriesKey, float] | None:
        try:
            response = await self._client.get(target)
            response.raise_for_status()
            return parse_exposition(response.text)
        except (httpx.HTTPError, ValueError):
            return None  # a dead target (a killed canary) simply has no data this time

    async def observe(self) -> None:
        async with self._lock:
            at = self._clock()
            targets = await expand_targets(self.targets, self._resolve)
            scraped = await asyncio.gather(*(self._scrape(t) for t in targets))
            pairs = zip(targets, scraped, strict=True)
            snapshot = Snapshot(at, {t: s for t, s in pairs if s is not None})
            self._history.append(snapshot)
            horizon = at - self.keep_s
            # keep the newest snapshot older than the horizon: it is the base of a full window
            while len(self._history) > 2 and self._history[1].at <= horizon:
                self._history.pop(0)

    def _base(self, target: str, start: float) -> dict[SeriesKey, float] | None:
        before = [s for s in self._history if s.at <= start and target in s.targets]
        if before:
            return before[-1].targets[target]
        after = [s for s in self._history if s.at > start and target in s.targets]
        return after[0].targets[target] if len(after) > 1 else None

    async def windows(self, *seconds: float) -> list[list[Sample]]:
        await self.observe()
        latest = self._history[-1]
        if not latest.targets:
            raise MetricsUnavailableError(
                f"none of the metrics targets answered: {', '.join(self.targets)}; check "
                "INKWELL_ROUTER_METRICS_TARGETS"
            )
        return [self._window(latest, s) for s in seconds]

    def _window(self, latest: Snapshot, seconds: float) -> list[Sample]:
        start = latest.at - seconds
        samples: list[Sample] = []
        for target, now in latest.targets.items():
            base = self._base(target, start)
            if base is None:
                continue  # first sight of this target: no increase known yet
            for (name, labels), value in increases(base, now).items():
                samples.append(Sample(name, dict(labels), value))
        return samples

    async def aclose(self) -> None:
        await self._client.aclose()


def make_source(
    prometheus_url: str | None, targets: list[str], *, selector: str = ""
) -> MetricSource:
    """Prometheus when a URL is configured, else scraping the components directly."""
    if prometheus_url:
        return PrometheusSource(prometheus_url, selector=selector)
    return ScrapeSource(targets)
