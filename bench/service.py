"""`inkwell bench service`: load-test real service processes on localhost.

Starts one service process per configuration (micro-batched and naive per-request) and drives
them in turn, for several interleaved rounds, with the same closed-loop load of single-image
requests at a fixed concurrency for a fixed time; then measures the batch routes against the
bare forward pass the service runs (same version, same torch threads, best of before/after).
The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams: an HTTP library
would spend more CPU per request than the service does, and on a small machine the generator
shares the cores with the service. Last, the same single-image loads (raw PNG and multipart)
run in turns from this client and from wrk (when installed) at several connection counts, so
the report shows whether an independent load generator sees the same tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from PIL import Image

from bench import wrk
from bench.common import CLI, HOST, free_port, process, read_response

if TYPE_CHECKING:
    import psutil
    import torch

JSON = "application/json"


@dataclass
class LoadResult:
    """What one closed-loop load run measured."""

    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    correct: int = 0
    images_per_request: int = 1
    service_cpu_s: float = 0.0  # CPU time the service process spent in the measured window

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.service_cpu_s / self.requests if self.requests else float("nan")

    @property
    def images_rate(self) -> float:
        return self.rate * self.images_per_request

    @classmethod
    def merge(cls, runs: list[LoadResult]) -> LoadResult:
        """Several runs of one configuration as one."""
        return cls(
            name=runs[0].name,
            requests=sum(r.requests for r in runs),
            errors=sum(r.errors for r in runs),
            seconds=sum(r.seconds for r in runs),
            latencies_ms=[ms for r in runs for ms in r.latencies_ms],
            correct=sum(r.correct for r in runs),
            images_per_request=runs[0].images_per_request,
            service_cpu_s=sum(r.service_cpu_s for r in runs),
        )

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def http_request(
    path: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def v2_binary_request(images: np.ndarray, model_name: str) -> bytes:
    """An Open Inference Protocol infer request with the input as binary FP32."""
    raw = (images.astype("<f4") / 255.0).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(images), 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return http_request(
        f"/v2/models/{model_name}/infer",
        header + raw,
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(len(header))},
    )


def answered_digits(answer: dict[str, Any]) -> list[int]:
    """The digits in a v1 single, v1 batch or v2 infer response."""
    if "digit" in answer:
        return [answer["digit"]]
    if "predictions" in answer:
        return [p["digit"] for p in answer["predictions"]]
    return next(o["data"] for o in answer["outputs"] if o["name"] == "digit")


def tree_cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of a process and its children (a service's workers)."""
    import psutil

    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(member.cpu_times()[:2])
    return total


async def _closed_loop(
    pid: int,
    port: int,
    requests: list[tuple[bytes, list[int]]],
    concurrency: int,
    duration: float,
    warmup: float,
    name: str,
    images_per_request: int,
    answer: Callable[[bytes], list[int]] | None = None,
) -> LoadResult:
    read_digits = answer or (lambda body: answered_digits(json.loads(body)))
    result = LoadResult(name, 0, 0, duration, images_per_request=images_per_request)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def cpu_window() -> None:
        import psutil

        process = psutil.Process(pid)
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        before = tree_cpu_seconds(process)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        result.service_cpu_s = tree_cpu_seconds(process) - before

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        index = offset
        try:
            while True:
                payload, labels = requests[index % len(requests)]
                index += concurrency
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(payload)
                status, body = await read_response(reader)
                done = time.perf_counter()
                if sent < measure_from:
                    continue
                if status != 200:
                    result.errors += 1
                    continue
                result.requests += 1
                result.latencies_ms.append((done - sent) * 1000)
                if not labels:
                    continue
                digits = read_digits(body)
                result.correct += sum(int(d == y) for d, y in zip(digits, labels, strict=True))
        finally:
            writer.close()

    await asyncio.gather(cpu_window(), *(worker(i) for i in range(concurrency)))
    return result


def run_load(
    service: tuple[int, int], requests: list[tuple[bytes, list[int]]], **kwargs: object
) -> LoadResult:
    """Closed-loop load on uvloop (falls back to asyncio)."""
    coroutine = _closed_loop(*service, requests, **kwargs)  # type: ignore[arg-type]
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


@contextmanager
def service_process(env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """A real `inkwell service` process logging to `log`; yields (pid, port) once it is ready."""
    port = free_port()
    args = [sys.executable, "-c", CLI, "service", "--port", str(port)]
    ready_url = f"http://{HOST}:{port}/readyz"
    with process(log.stem, args, env, log.parent, ready_url, timeout_s=120) as pid:
        yield pid, port


@dataclass(frozen=True)
class ForwardRate:
    """The bare forward pass: wall-clock images/s and CPU milliseconds per image."""

    images_per_s: float
    cpu_ms_per_image: float


def bare_forward_rate(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seconds: float
) -> ForwardRate:
    """`softmax(model(x))` alone (no HTTP, no parsing), same batch, same threads."""
    import torch

    with torch.inference_mode():
        model(x)
        count, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            torch.softmax(model(x), dim=1)
            count += 1
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    images = count * x.shape[0]
    return ForwardRate(images / elapsed, 1000 * cpu / images)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


PREDICT = "/v1/digits/predict"


def single_image_bodies(images: np.ndarray) -> dict[str, list[wrk.WrkRequest]]:
    """The same digits as a raw image/png body and as a multipart `image` field."""
    encoded = [png(image) for image in images]
    return {
        "raw image/png": [wrk.WrkRequest(data, "image/png") for data in encoded],
        "multipart image": [
            wrk.multipart("image", f"digit-{i}.png", data, "image/png")
            for i, data in enumerate(encoded)
        ],
    }


def compare_generators(
    service: tuple[int, int],
    bodies: dict[str, list[wrk.WrkRequest]],
    levels: list[int],
    *,
    rounds: int,
    duration: float,
    warmup: float,
    progress: Callable[[str], None],
) -> dict[tuple[str, int, str], wrk.LatencyStats]:
    """This bench's client and wrk in turns on one service: (body, connections, generator).

    Without wrk on PATH only this bench's client runs (the caller says why).
    """
    generators = ["bench client", "wrk"] if wrk.binary() else ["bench client"]
    runs: dict[tuple[str, int, str], list[wrk.LatencyStats]] = {}
    for body_name, requests in bodies.items():
        own: list[tuple[bytes, list[int]]] = [
            (http_request(PREDICT, r.body, r.content_type), []) for r in requests
        ]
        for level in levels:
            for index in range(rounds):
                shift = index % len(generators)  # each generator goes first in turn
                for generator in generators[shift:] + generators[:shift]:
                    progress(f"{body_name}, {level} connections, {generator} ...")
                    if generator == "wrk":
                        stats = wrk.LatencyStats.of_wrk(
                            wrk.run(
                                service[1],
                                PREDICT,
                                requests,
                                connections=level,
                                seconds=duration,
                                warmup=warmup,
                            )
                        )
                    else:
                        result = run_load(
                            service,
                            own,
                            concurrency=level,
                            duration=duration,
                            warmup=warmup,
                            name=generator,
                            images_per_request=1,
                        )
                        stats = wrk.LatencyStats.of_latencies(
                            result.latencies_ms, result.seconds, result.errors
                        )
                    runs.setdefault((body_name, level, generator), []).append(stats)
    return {key: wrk.median_of(values) for key, values in runs.items()}


def bench_service(
    duration: Annotated[float, typer.Option(help="Measured seconds per scenario.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each.")] = 2.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent single-image clients.")] = 16,
    batch_images: Annotated[int, typer.Option(help="Images per batch request.")] = 256,
    batch_concurrency: Annotated[int, typer.Option(help="Concurrent batch clients.")] = 2,
    variant: Annotated[str, typer.Option(help="Alias to benchmark: stable or canary.")] = "stable",
    max_wait_ms: Annotated[float, typer.Option(help="Micro-batch max wait.")] = 0.0,
    max_size: Annotated[int, typer.Option(help="Micro-batch max size.")] = 32,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds per configuration.")] = 3,
    payload: Annotated[
        str, typer.Option(help="Single-image body: png (decoded and normalised) or json pixels.")
    ] = "png",
    compare: Annotated[
        bool, typer.Option(help="Also run this client and wrk in turns (raw PNG and multipart).")
    ] = True,
    compare_connections: Annotated[
        list[int] | None, typer.Option(help="Connections for that comparison (repeat).")
    ] = None,
    workers: Annotated[
        list[int] | None,
        typer.Option(
            min=1,
            help="Worker processes of the micro-batched service (repeat, e.g. --workers 1 "
            "--workers 2, to compare them in the same interleaved rounds).",
        ),
    ] = None,
    peers: Annotated[
        bool,
        typer.Option(
            "--peers",
            help="Instead: Inkwell's micro-batched service and other serving stacks (each in "
            "its own venv under ~/.cache/inkwell/peers) on the same weights, PNG digits and "
            "load, in turns.",
        ),
    ] = False,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            help="With --peers: only these (repeat): textbook, litserve, mlserver, bentoml."
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="With --peers: also write the numbers here.")
    ] = None,
) -> None:
    """Single-image req/s and p50/p95/p99 (micro-batched vs naive), batch route vs bare model."""
    import torch
    from rich.table import Table

    from inkwell.console import check_choice, console
    from inkwell.data import load_split
    from inkwell.registry import Registry
    from service.model import optimize_for_cpu
    from service.settings import ServiceSettings

    settings = ServiceSettings()
    registry = Registry(settings)
    if variant not in ("stable", "canary"):
        raise typer.BadParameter("choose stable or canary", param_hint="--variant")
    if settings.seed_shipped:  # a fresh home benchmarks the shipped model, as a service would
        from inkwell.shipped import seed_registry

        seed_registry(settings, kinds=("digits",), registry=registry)
    loaded = registry.load_digit_model(variant)
    version = loaded.info.version
    test = load_split("test", settings.data_dir)
    images, labels = test.images[:512], test.labels[:512].tolist()
    if payload not in ("png", "json"):
        raise typer.BadParameter("choose png or json", param_hint="--payload")
    singles = [
        (
            http_request("/v1/digits/predict", png(img), "image/png")
            if payload == "png"
            else http_request(
                "/v1/digits/predict", json.dumps({"pixels": img.tolist()}).encode(), JSON
            ),
            [label],
        )
        for img, label in zip(images, labels, strict=True)
    ]
    if peers:
        from bench.peers import PEERS

        for name in peer or ():
            check_choice(name, tuple(PEERS), "--peer")
    elif peer or json_out:
        raise typer.BadParameter("--peer and --json go with --peers", param_hint="--peers")
    if not 1 <= batch_images <= 512:
        raise typer.BadParameter("1 to 512", param_hint="--batch-images")
    batch_sets: dict[str, list[tuple[bytes, list[int]]]] = {"v1 JSON": [], "v2 binary FP32": []}
    for start in range(0, 512 - batch_images + 1, batch_images):
        chunk, chunk_labels = (
            images[start : start + batch_images],
            labels[start : start + batch_images],
        )
        body = json.dumps({"images": chunk.tolist()}).encode()
        batch_sets["v1 JSON"].append(
            (http_request("/v1/digits/predict/batch", body, JSON), chunk_labels)
        )
        batch_sets["v2 binary FP32"].append(
            (v2_binary_request(chunk, settings.model_name), chunk_labels)
        )
    batch_routes = {
        "v1 JSON": "POST /v1/digits/predict/batch, JSON 0..255 arrays",
        "v2 binary FP32": f"POST /v2/models/{settings.model_name}/infer, binary FP32",
    }
    levels = compare_connections or [16, 64]
    if compare and wrk.binary() is None:
        console.print(f"[yellow]{wrk.MISSING}[/yellow] This client runs alone.")
    load1 = os.getloadavg()[0]
    console.print(
        f"model {loaded.info.name} v{version} ({variant}); {os.cpu_count()} CPUs, load average "
        f"{load1:.2f} before start; torch threads in the service: {settings.torch_threads}"
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("INKWELL_SERVICE_")}
    base_env.update(
        {
            "INKWELL_HOME": str(settings.home),
            "INKWELL_SERVICE_VARIANT": variant,
            "INKWELL_SERVICE_MAX_BATCH_IMAGES": str(max(batch_images, 256)),
            "INKWELL_SERVICE_POLL_INTERVAL_S": "60",
        }
    )
    worker_counts = workers or [1]
    if peers:
        run_peers(
            base_env,
            loaded.model,
            images,
            labels,
            peer or [],
            workers=worker_counts[0],
            max_size=max_size,
            max_wait_ms=max_wait_ms,
            rounds=rounds,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            torch_threads=settings.torch_threads,
            json_out=json_out,
        )
        return
    configs: dict[str, dict[str, str]] = {
        f"micro-batched (max {max_size}, wait {max_wait_ms:g} ms)"
        + (f", {count} worker(s)" if worker_counts != [1] else ""): {
            "INKWELL_SERVICE_MICROBATCH_MAX_SIZE": str(max_size),
            "INKWELL_SERVICE_MICROBATCH_MAX_WAIT_MS": str(max_wait_ms),
            "INKWELL_SERVICE_WORKERS": str(count),
        }
        for count in dict.fromkeys(worker_counts)
    }
    configs["naive per-request (max 1)"] = {"INKWELL_SERVICE_MICROBATCH_MAX_SIZE": "1"}
    batch_results: dict[str, LoadResult] = {}
    bare = ForwardRate(float("nan"), float("nan"))
    torch.set_num_threads(settings.torch_threads)
    x = torch.from_numpy(images[:batch_images].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    # The bare forward pass is the one the service runs: optimised when the service optimises.
    forward = optimize_for_cpu(loaded.model) if settings.optimize_model else loaded.model
    kind = "optimised" if settings.optimize_model else "eager"
    with tempfile.TemporaryDirectory(prefix="inkwell-bench-") as tmp, ExitStack() as stack:
        # Both configurations run side by side (the idle one costs nothing) and take turns,
        # round after round, so drifting load from other processes hits both alike.
        services = {
            name: stack.enter_context(
                service_process({**base_env, **extra}, Path(tmp) / f"service-{index}.log")
            )
            for index, (name, extra) in enumerate(configs.items())
        }
        rounds_of: dict[str, list[LoadResult]] = {name: [] for name in configs}
        for round_index in range(rounds):
            for name, service in services.items():
                console.print(
                    f"round {round_index + 1}/{rounds} [bold]{name}[/bold]: "
                    f"{concurrency} clients, {duration:g} s ..."
                )
                rounds_of[name].append(
                    run_load(
                        service,
                        singles,
                        concurrency=concurrency,
                        duration=duration,
                        warmup=warmup,
                        name=name,
                        images_per_request=1,
                    )
                )
        results = [LoadResult.merge(runs) for runs in rounds_of.values()]
        batched = next(iter(services.values()))
        bare_before = bare_forward_rate(forward, x, duration / 2)
        for batch_name, batch_requests in batch_sets.items():
            console.print(
                f"[bold]batch route, {batch_name}[/bold]: {batch_images} "
                f"images/request, {batch_concurrency} clients ..."
            )
            batch_results[batch_name] = run_load(
                batched,
                batch_requests,
                concurrency=batch_concurrency,
                duration=duration,
                warmup=warmup,
                name=batch_name,
                images_per_request=batch_images,
            )
        bare_after = bare_forward_rate(forward, x, duration / 2)
        bare = max(bare_before, bare_after, key=lambda r: r.images_per_s)
        compared: dict[tuple[str, int, str], wrk.LatencyStats] = {}
        if compare:
            compared = compare_generators(
                batched,
                single_image_bodies(images[:64]),
                levels,
                rounds=rounds,
                duration=duration,
                warmup=warmup,
                progress=lambda line: console.print(f"[bold]generators[/bold]: {line}"),
            )

    table = Table(
        "configuration", "req/s", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
        "accuracy %", "service CPU ms/req",
        title=f"single-image {payload} requests, concurrency {concurrency}, "
        f"{rounds} x {duration:g} s each, interleaved",
    )  # fmt: skip
    for r in results:
        table.add_row(
            r.name,
            f"{r.rate:,.0f}",
            f"{r.percentile(50):.1f}",
            f"{r.percentile(95):.1f}",
            f"{r.percentile(99):.1f}",
            f"{r.percentile(99.9):.1f}",
            f"{max(r.latencies_ms, default=float('nan')):.1f}",
            str(r.errors),
            f"{100 * r.correct / max(r.requests, 1):.1f}",
            f"{r.cpu_ms_per_request:.2f}",
        )
    console.print(table)
    if batch_results:
        batch_table = Table(
            "measure", "images/s", "p50 ms", "p99 ms", "errors", "CPU ms/image",
            "vs bare: images/s", "vs bare: CPU",
            title=f"batch routes ({batch_images} images/request) vs the bare forward pass",
        )  # fmt: skip
        for batch_name, result in batch_results.items():
            cpu_per_image = result.cpu_ms_per_request / batch_images
            batch_table.add_row(
                f"{batch_routes[batch_name]} ({batch_concurrency} clients)",
                f"{result.images_rate:,.0f}",
                f"{result.percentile(50):.1f}",
                f"{result.percentile(99):.1f}",
                str(result.errors),
                f"{cpu_per_image:.3f}",
                f"{100 * result.images_rate / bare.images_per_s:.0f} %",
                f"{100 * bare.cpu_ms_per_image / cpu_per_image:.0f} %",
            )
        batch_table.add_row(
            f"bare {kind} forward, batch {batch_images}, {settings.torch_threads} thread(s), "
            "best of 2",
            f"{bare.images_per_s:,.0f}",
            "",
            "",
            "",
            f"{bare.cpu_ms_per_image:.3f}",
            "100 %",
            "100 %",
        )
        console.print(batch_table)
        console.print(
            "vs bare: images/s = route images/s / bare images/s; CPU = bare CPU per image / "
            "service CPU per image (less sensitive to other load on the machine)."
        )
    if compared:
        generators_table = Table(
            "body", "connections", "load generator", *wrk.COLUMNS,
            title=f"single-image requests to the micro-batched service from this bench's client "
            f"and from wrk, in turns; median of {rounds} x {duration:g} s "
            "(max: the largest)",
        )  # fmt: skip
        for (body_name, level, generator), stats in compared.items():
            generators_table.add_row(body_name, str(level), generator, *stats.cells())
        console.print(generators_table)
    console.print(f"load average after: {os.getloadavg()[0]:.2f}")


def run_peers(
    base_env: dict[str, str],
    model: torch.nn.Module,
    images: np.ndarray,
    labels: list[int],
    names: list[str],
    *,
    workers: int,
    max_size: int,
    max_wait_ms: float,
    rounds: int,
    concurrency: int,
    duration: float,
    warmup: float,
    torch_threads: int,
    json_out: Path | None,
) -> None:
    """`--peers`: Inkwell's micro-batched service and the peers in turns; table and JSON."""
    from bench.peers import PEERS, compare_peers, ratio_line, summary, table
    from inkwell.console import console

    env = {
        **base_env,
        "INKWELL_SERVICE_MICROBATCH_MAX_SIZE": str(max_size),
        "INKWELL_SERVICE_MICROBATCH_MAX_WAIT_MS": str(max_wait_ms),
        "INKWELL_SERVICE_WORKERS": str(workers),
    }
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="inkwell-bench-peers-") as tmp,
        service_process(env, Path(tmp) / "service.log") as inkwell,
    ):
        runs = compare_peers(
            inkwell,
            model,
            images,
            labels,
            names or list(PEERS),
            Path(tmp),
            rounds=rounds,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            torch_threads=torch_threads,
            progress=console.print,
        )
    load_after = os.getloadavg()
    report = summary(runs)
    report.update(
        command=" ".join(["inkwell", "bench", "service", *sys.argv[3:]]),
        cpus=os.cpu_count(),
        load_average_before=[round(v, 2) for v in load_before],
        load_average_after=[round(v, 2) for v in load_after],
        rounds=rounds,
        duration_s=duration,
        concurrency=concurrency,
        torch_threads=torch_threads,
        inkwell_workers=workers,
    )
    title = (
        f"single-image PNG requests, {concurrency} clients, {rounds} x {duration:g} s each, "
        f"in turns; {torch_threads} torch thread(s) everywhere"
    )
    console.print(table(runs, title))
    console.print(ratio_line(report))
    for run in runs:
        if run.unavailable:
            console.print(f"[red]{run.title} unavailable:[/red] {run.unavailable}")
    console.print(
        f"load average (1, 5, 15 min) before {report['load_average_before']}, "
        f"after {report['load_average_after']}"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"numbers written to {json_out}")
