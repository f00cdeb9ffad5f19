"""`inkwell bench router`: what the router adds, measured side by side with direct calls.

Starts one real stable service process and one real router in front of it (controller off, so
the benchmark never takes part in a live rollout), then drives both with the same closed-loop
load of single-image PNG predictions, alternating direct and routed rounds so that a noisy
neighbour on a shared machine hurts both alike. The load generator is a minimal keep-alive
HTTP/1.1 client on asyncio streams (an HTTP library would spend more CPU than the router).
When wrk is installed, each of those runs is followed by a wrk run with the same bodies and
connections, and both generators' percentiles are reported side by side.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image

from bench import wrk
from bench.common import CLI, HOST, free_port, process, read_response


@dataclass
class Run:
    """One closed-loop run against one target."""

    target: str
    concurrency: int
    seconds: float
    requests: int = 0
    errors: int = 0
    dropped: int = 0  # errors where the connection closed without an answer
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds


@dataclass
class Summary:
    target: str
    concurrency: int
    rate: float
    p50: float
    p95: float
    p99: float
    errors: int
    dropped: int
    cpu_ms: dict[str, float]


def summarise(runs: list[Run]) -> Summary:
    latencies = np.array([v for r in runs for v in r.latencies_ms] or [float("nan")])
    requests = sum(r.requests for r in runs)
    seconds = sum(r.seconds for r in runs)
    names = {name for r in runs for name in r.cpu_s}
    cpu = {n: 1000 * sum(r.cpu_s.get(n, 0.0) for r in runs) / max(requests, 1) for n in names}
    return Summary(
        runs[0].target,
        runs[0].concurrency,
        requests / seconds if seconds else 0.0,
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 95)),
        float(np.percentile(latencies, 99)),
        sum(r.errors for r in runs),
        sum(r.dropped for r in runs),
        cpu,
    )


def http_post(path: str, body: bytes, content_type: str, user: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
        f"X-User-Id: {user}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def closed_loop(
    port: int,
    payloads: list[bytes],
    *,
    target: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    pids: dict[str, int],
) -> Run:
    """`concurrency` clients, each sending the next request as soon as the last is answered."""
    import psutil

    run = Run(target, concurrency, seconds)
    processes = {name: psutil.Process(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    measure_from, stop_at = started + warmup, started + warmup + seconds

    async def cpu_window() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        before = {n: sum(p.cpu_times()[:2]) for n, p in processes.items()}
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        run.cpu_s = {n: sum(p.cpu_times()[:2]) - before[n] for n, p in processes.items()}

    async def client(offset: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        index = offset
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(payloads[index % len(payloads)])
                index += concurrency
                try:
                    status, _ = await read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # the target closed the connection without an answer: a failed request
                    status = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                if sent < measure_from:
                    continue
                if status == 200:
                    run.requests += 1
                    run.latencies_ms.append((time.perf_counter() - sent) * 1000)
                else:
                    run.errors += 1
                    run.dropped += status == 0
        finally:
            writer.close()

    await asyncio.gather(cpu_window(), *(client(i) for i in range(concurrency)))
    return run


def drive(port: int, payloads: list[bytes], **kwargs: object) -> Run:
    coroutine = closed_loop(port, payloads, **kwargs)  # type: ignore[arg-type]
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - image).save(buffer, "PNG")
    return buffer.getvalue()


def bench_router(
    duration: Annotated[float, typer.Option(help="Measured seconds per round and target.")] = 5.0,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each round.")] = 1.0,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating direct/routed rounds.")] = 3,
    concurrency: Annotated[
        list[int] | None, typer.Option(help="Concurrent clients (repeat for several levels).")
    ] = None,
    client: Annotated[
        str, typer.Option(help="The router's upstream client: fast or httpx.")
    ] = "fast",
    reference: Annotated[
        list[str] | None,
        typer.Option(
            help="Also measure a reference proxy hop in the same run: pipe (a Python byte "
            "pipe) or nginx (needs nginx installed). Repeat for both."
        ),
    ] = None,
    body: Annotated[
        str, typer.Option(help="Request body: png (raw image/png) or multipart (an image field).")
    ] = "png",
    compare: Annotated[
        bool, typer.Option(help="Follow each run with a wrk run (skipped when wrk is absent).")
    ] = True,
) -> None:
    """Router overhead: p50/p95/p99 and req/s direct to the service vs through the router."""
    from router.reference import REFERENCES, nginx_binary, reference_command

    levels = concurrency or [1, 16]
    if body not in ("png", "multipart"):
        raise typer.BadParameter("choose png or multipart", param_hint="--body")
    if client not in ("fast", "httpx"):
        raise typer.BadParameter("choose fast or httpx", param_hint="--client")
    references = list(dict.fromkeys(reference or []))
    for name in references:
        if name not in REFERENCES:
            raise typer.BadParameter(
                f"{name!r} is not a reference; choose from {', '.join(REFERENCES)}",
                param_hint="--reference",
            )
        if name == "nginx":
            try:
                nginx_binary()
            except FileNotFoundError as exc:
                raise typer.BadParameter(str(exc), param_hint="--reference") from exc

    from rich.table import Table

    from inkwell.console import console
    from inkwell.data import load_split
    from inkwell.errors import ModelNotFoundError
    from inkwell.registry import Registry
    from router.settings import RouterSettings

    settings = RouterSettings()
    registry = Registry(settings)
    if registry.find_version(settings.model_name, "stable") is None:
        raise ModelNotFoundError(
            f"no {settings.model_name}@stable in {settings.resolved_tracking_uri}: train one with "
            "`inkwell train` (the benchmark serves it)."
        )
    images = load_split("test", settings.data_dir).images[:256]
    bodies = [
        replace(
            wrk.multipart("image", f"digit-{i}.png", png(img), "image/png")
            if body == "multipart"
            else wrk.WrkRequest(png(img), "image/png"),
            headers={"X-User-Id": f"user-{i}"},
        )
        for i, img in enumerate(images)
    ]
    payloads = [
        http_post("/v1/digits/predict", r.body, r.content_type, r.headers["X-User-Id"])
        for r in bodies
    ]
    with_wrk = compare and wrk.binary() is not None
    if compare and not with_wrk:
        console.print(f"[yellow]{wrk.MISSING}[/yellow] This bench's client runs alone.")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INKWELL_ROUTER_")}
    env.update(
        INKWELL_HOME=str(settings.home),
        INKWELL_SERVICE_POLL_INTERVAL_S="60",
        INKWELL_ROUTER_UPSTREAM_CLIENT=client,
    )
    service_port, router_port = free_port(), free_port()
    stable_url = f"http://{HOST}:{service_port}"
    router_args = [
        sys.executable, "-c", CLI, "router", "--port", str(router_port),
        "--stable-url", stable_url, "--canary-url", f"http://{HOST}:{free_port()}",
        "--no-controller", "--log-level", "warning",
    ]  # fmt: skip
    service_args = [
        sys.executable, "-c", CLI, "service", "--variant", "stable", "--port", str(service_port)
    ]  # fmt: skip
    console.print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before start; "
        f"levels {levels}, {rounds} rounds × {duration:g} s per target; upstream client {client}"
        + (f"; references {', '.join(references)}" if references else "")
    )
    targets = ["direct", "router", *references]
    results: dict[tuple[str, int], list[Run]] = {}
    generators: dict[tuple[str, int, str], list[wrk.LatencyStats]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inkwell-bench-router-")))
        pids = {
            "service": stack.enter_context(
                process("service", service_args, env, tmp, f"{stable_url}/readyz")
            ),
            "router": stack.enter_context(
                process("router", router_args, env, tmp, f"http://{HOST}:{router_port}/readyz")
            ),
        }
        ports = {"direct": service_port, "router": router_port}
        for name in references:
            ports[name] = free_port()
            command = reference_command(name, service_port, ports[name], tmp)
            pid = stack.enter_context(
                process(name, command, env, tmp, f"http://{HOST}:{ports[name]}/readyz")
            )
            pids[name] = nginx_worker(pid) if name == "nginx" else pid
        for level in levels:
            for index in range(rounds):
                shift = index % len(targets)
                for target in targets[shift:] + targets[:shift]:  # each goes first in turn
                    run = drive(
                        ports[target],
                        payloads,
                        target=target,
                        concurrency=level,
                        seconds=duration,
                        warmup=warmup,
                        pids=pids,
                    )
                    results.setdefault((target, level), []).append(run)
                    if not with_wrk:
                        continue
                    own = wrk.LatencyStats.of_latencies(run.latencies_ms, run.seconds, run.errors)
                    generators.setdefault((target, level, "bench client"), []).append(own)
                    measured = wrk.run(
                        ports[target],
                        "/v1/digits/predict",
                        bodies,
                        connections=level,
                        seconds=duration,
                        warmup=warmup,
                    )
                    stats = wrk.LatencyStats.of_wrk(measured)
                    generators.setdefault((target, level, "wrk"), []).append(stats)
    table = Table(
        "target", "clients", "req/s", "vs direct", "p50 ms", "p95 ms", "p99 ms", "errors",
        "service CPU ms/req", "proxy CPU ms/req",
        title=f"inkwell bench router ({body} single-image predictions)",
    )  # fmt: skip
    verdicts = []
    for level in levels:
        summaries = {target: summarise(results[(target, level)]) for target in targets}
        direct = summaries["direct"]
        for target, s in summaries.items():
            table.add_row(
                s.target,
                str(s.concurrency),
                f"{s.rate:,.0f}",
                "-" if target == "direct" else f"{change(s.rate, direct.rate):+.1f} %",
                f"{s.p50:.2f}",
                f"{s.p95:.2f}",
                f"{s.p99:.2f}",
                f"{s.errors} ({s.dropped} dropped)" if s.dropped else str(s.errors),
                f"{s.cpu_ms.get('service', 0):.2f}",
                "-" if target == "direct" else f"{s.cpu_ms.get(target, 0):.2f}",
            )
        routed = summaries["router"]
        added = routed.p50 - direct.p50
        loss = -change(routed.rate, direct.rate)
        verdicts.append(
            f"{level} clients: router adds {added:+.2f} ms at p50 (target ≤ 1 ms: "
            f"{'met' if added <= 1 else 'not met'}), throughput {versus(loss)} "
            f"(target ≤ 10 % lower: {'met' if loss <= 10 else 'not met'})"
        )
        for name in references:
            ref = summaries[name]
            verdicts.append(
                f"{level} clients: reference {name} adds {ref.p50 - direct.p50:+.2f} ms at p50, "
                f"throughput {versus(-change(ref.rate, direct.rate))}, "
                f"{ref.cpu_ms.get(name, 0):.2f} ms of CPU per request"
            )
    console.print(table)
    for line in verdicts:
        console.print(line)
    if generators:
        generators_table = Table(
            "target", "connections", "load generator", *wrk.COLUMNS,
            title=f"this bench's client and wrk on the same targets ({body} bodies), each run "
            f"followed by wrk's; median of {rounds} x {duration:g} s (max: the largest)",
        )  # fmt: skip
        for (target, level, generator), per_round in sorted(
            generators.items(), key=lambda item: (item[0][1], targets.index(item[0][0]))
        ):
            median = wrk.median_of(per_round)
            generators_table.add_row(target, str(level), generator, *median.cells())
        console.print(generators_table)


def change(rate: float, baseline: float) -> float:
    """Percent change of `rate` against `baseline` (nan without a baseline)."""
    return 100 * (rate / baseline - 1) if baseline else float("nan")


def versus(loss: float) -> str:
    """'12.3 % lower' / '1.7 % higher' than direct, from a loss in percent."""
    return f"{abs(loss):.1f} % {'lower' if loss >= 0 else 'higher'}"


def nginx_worker(master: int) -> int:
    """nginx's master process forks the worker that does the proxying: measure that one."""
    import psutil

    deadline = time.monotonic() + 10
    while not (children := psutil.Process(master).children()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx (pid {master}) started no worker process")
        time.sleep(0.05)
    return int(children[0].pid)
