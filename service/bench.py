"""`inkwell bench service`: load-test real service processes on localhost.

Starts one service process per configuration (micro-batched, then naive per-request), drives
each with the same closed-loop load of single-image PNG requests at a fixed concurrency for a
fixed time, then measures the batch route against the bare model forward pass of the same
version with the same torch threads. The load generator is a minimal keep-alive HTTP/1.1 client
on asyncio streams: an HTTP library would spend more CPU per request than the service does,
and on a small machine the generator shares the cores with the service.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from PIL import Image

HOST = "127.0.0.1"


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

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def images_rate(self) -> float:
        return self.rate * self.images_per_request

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_request(path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _closed_loop(
    port: int,
    requests: list[tuple[bytes, list[int]]],
    concurrency: int,
    duration: float,
    warmup: float,
    name: str,
    images_per_request: int,
) -> LoadResult:
    result = LoadResult(name, 0, 0, duration, images_per_request=images_per_request)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

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
                status, body = await _read_response(reader)
                done = time.perf_counter()
                if sent < measure_from:
                    continue
                if status != 200:
                    result.errors += 1
                    continue
                result.requests += 1
                result.latencies_ms.append((done - sent) * 1000)
                answer = json.loads(body)
                digits = (
                    [answer["digit"]]
                    if "digit" in answer
                    else [p["digit"] for p in answer["predictions"]]
                )
                result.correct += sum(int(d == y) for d, y in zip(digits, labels, strict=True))
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return result


def run_load(port: int, requests: list[tuple[bytes, list[int]]], **kwargs: object) -> LoadResult:
    """Closed-loop load on uvloop (falls back to asyncio)."""
    coroutine = _closed_loop(port, requests, **kwargs)  # type: ignore[arg-type]
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


@contextmanager
def service_process(env: dict[str, str], log: Path) -> Iterator[int]:
    """A real `inkwell service` process; yields its port once /readyz answers."""
    import httpx

    port = free_port()
    code = "from inkwell.cli import main; main()"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code, "service", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service exited ({process.returncode}):\n{log.read_text()}")
            try:
                if httpx.get(f"http://{HOST}:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready:\n{log.read_text()}")
            time.sleep(0.3)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bare_forward_rate(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    """Images/s of `model(x)` alone (no HTTP, no parsing), same batch, same threads."""
    with torch.inference_mode():
        model(x)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.softmax(model(x), dim=1)
            count += 1
        elapsed = time.perf_counter() - start
    return count * x.shape[0] / elapsed


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def bench_service(
    duration: Annotated[float, typer.Option(help="Measured seconds per scenario.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each.")] = 2.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent single-image clients.")] = 16,
    batch_images: Annotated[int, typer.Option(help="Images per batch request.")] = 256,
    batch_concurrency: Annotated[int, typer.Option(help="Concurrent batch clients.")] = 2,
    model: Annotated[str, typer.Option(help="Alias or version to benchmark.")] = "stable",
    max_wait_ms: Annotated[float, typer.Option(help="Micro-batch max wait.")] = 2.0,
    max_size: Annotated[int, typer.Option(help="Micro-batch max size.")] = 32,
) -> None:
    """Single-image req/s and p50/p95/p99 (micro-batched vs naive), batch route vs bare model."""
    from rich.table import Table

    from inkwell.cli import console
    from inkwell.data import load_split
    from inkwell.registry import Registry
    from service.settings import ServiceSettings

    settings = ServiceSettings()
    registry = Registry(settings)
    loaded = registry.load_digit_model(model)
    version = loaded.info.version
    test = load_split("test", settings.data_dir)
    images, labels = test.images[:512], test.labels[:512].tolist()
    singles = [
        (http_request("/v1/digits/predict", png(img), "image/png"), [label])
        for img, label in zip(images, labels, strict=True)
    ]
    batches = []
    for start in range(0, 512, batch_images):
        chunk = images[start : start + batch_images]
        if len(chunk) < batch_images:
            break
        body = json.dumps({"images": chunk.tolist()}).encode()
        batch_request = http_request("/v1/digits/predict/batch", body, "application/json")
        batches.append((batch_request, labels[start : start + batch_images]))
    if not batches:
        raise typer.BadParameter("at most 512", param_hint="--batch-images")
    load1 = os.getloadavg()[0]
    console.print(
        f"model {loaded.info.name} v{version} ({model}); {os.cpu_count()} CPUs, load average "
        f"{load1:.2f} before start; torch threads in the service: {settings.torch_threads}"
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("INKWELL_SERVICE_")}
    base_env.update(
        {
            "INKWELL_HOME": str(settings.home),
            "INKWELL_SERVICE_VARIANT": model if model in ("stable", "canary") else "stable",
            "INKWELL_SERVICE_MAX_BATCH_IMAGES": str(max(batch_images, 256)),
            "INKWELL_SERVICE_POLL_INTERVAL_S": "60",
        }
    )
    configs = {
        f"micro-batched (max {max_size}, wait {max_wait_ms:g} ms)": {
            "INKWELL_SERVICE_MICROBATCH_MAX_SIZE": str(max_size),
            "INKWELL_SERVICE_MICROBATCH_MAX_WAIT_MS": str(max_wait_ms),
        },
        "naive per-request (max 1)": {"INKWELL_SERVICE_MICROBATCH_MAX_SIZE": "1"},
    }
    results: list[LoadResult] = []
    batch_result: LoadResult | None = None
    with tempfile.TemporaryDirectory(prefix="inkwell-bench-") as tmp:
        for index, (name, extra) in enumerate(configs.items()):
            console.print(f"[bold]{name}[/bold]: {concurrency} clients, {duration:g} s ...")
            with service_process({**base_env, **extra}, Path(tmp) / f"service-{index}.log") as port:
                results.append(
                    run_load(
                        port,
                        singles,
                        concurrency=concurrency,
                        duration=duration,
                        warmup=warmup,
                        name=name,
                        images_per_request=1,
                    )
                )
                if index == 0:
                    console.print(
                        f"[bold]batch route[/bold]: {batch_images} images/request, "
                        f"{batch_concurrency} clients ..."
                    )
                    batch_result = run_load(
                        port,
                        batches,
                        concurrency=batch_concurrency,
                        duration=duration,
                        warmup=warmup,
                        name="batch",
                        images_per_request=batch_images,
                    )
    torch.set_num_threads(settings.torch_threads)
    x = torch.from_numpy(images[:batch_images].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    bare = bare_forward_rate(loaded.model, x, duration)

    table = Table(
        "configuration", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "accuracy %",
        title=f"single-image PNG requests, concurrency {concurrency}, {duration:g} s each",
    )  # fmt: skip
    for r in results:
        table.add_row(
            r.name,
            f"{r.rate:,.0f}",
            f"{r.percentile(50):.1f}",
            f"{r.percentile(95):.1f}",
            f"{r.percentile(99):.1f}",
            str(r.errors),
            f"{100 * r.correct / max(r.requests, 1):.1f}",
        )
    console.print(table)
    if batch_result is not None:
        ratio = batch_result.images_rate / bare if bare else float("nan")
        batch_table = Table(
            "measure", "images/s", "p50 ms", "p99 ms",
            title=f"batch route ({batch_images} JSON images/request) vs bare forward pass",
        )  # fmt: skip
        batch_table.add_row(
            f"POST /v1/digits/predict/batch ({batch_concurrency} clients)",
            f"{batch_result.images_rate:,.0f}",
            f"{batch_result.percentile(50):.1f}",
            f"{batch_result.percentile(99):.1f}",
        )
        batch_table.add_row(
            f"bare model forward, batch {batch_images}, {settings.torch_threads} thread(s)",
            f"{bare:,.0f}",
            "",
            "",
        )
        console.print(batch_table)
        console.print(f"batch route / bare forward: {100 * ratio:.0f} %")
    console.print(f"load average after: {os.getloadavg()[0]:.2f}")
