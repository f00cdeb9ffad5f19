"""Service test fixtures: a real MLflow sqlite registry holding the small shipped digit model."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from inkwell.data import load_split
from inkwell.registry import Registry, VersionInfo, load_digit_dir
from inkwell.settings import CANARY, STABLE, CoreSettings
from inkwell.shipped import shipped_model
from inkwell.train import split_tensors
from inkwell.training import evaluate
from service.main import create_app
from service.settings import ServiceSettings
from tests.conftest import copy_mlflow_db
from tests.harness import free_port

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"


@dataclass(frozen=True)
class TrainedRegistry:
    """A home with an MLflow sqlite registry: v1 (stable) and v2 (canary), the shipped model."""

    home: Path
    data_dir: Path
    v1: VersionInfo
    v2: VersionInfo
    accuracy: float
    test_images: np.ndarray  # uint8 (N, 28, 28), ink = 255
    test_labels: np.ndarray

    def settings(self, **overrides: object) -> ServiceSettings:
        values: dict[str, object] = {
            "home": self.home,
            "data_dir": self.data_dir,
            "api_keys": [API_KEY],
            "poll_interval_s": 0.5,
            "torch_threads": 1,
            "seed_shipped": False,  # the versions under test are registered above
        }
        values.update(overrides)
        return ServiceSettings(**values)  # type: ignore[arg-type]

    def registry(self) -> Registry:
        return Registry(CoreSettings(home=self.home, data_dir=self.data_dir))


@pytest.fixture(scope="session")
def trained_registry(
    tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, empty_mlflow_db: Path
) -> TrainedRegistry:
    """The shipped digit model registered as v1 (stable) and v2 (canary) in a home of its own.

    The shipped model is trained on all of MNIST and loads in milliseconds, where training even a
    tiny one in every test process took seconds of CPU; these tests follow versions and requests,
    not what a training recipe achieves (tests/core/test_shipped.py guards the shipped model).
    """
    data_dir = mnist_dir
    home = copy_mlflow_db(empty_mlflow_db, tmp_path_factory.mktemp("service-home"))
    torch.set_num_threads(1)
    test = load_split("test", data_dir)
    registry = Registry(CoreSettings(home=home, data_dir=data_dir))
    test_x, test_y = split_tensors(test)
    shipped = shipped_model("digits")
    assert shipped is not None, "the package ships no digit model"
    model, _meta = load_digit_dir(shipped.folder)
    accuracy = evaluate(model, test_x[:1000], test_y[:1000]).accuracy
    versions = []
    # v2 (canary) has the same weights: these tests follow versions, not accuracy differences.
    for alias in (STABLE, CANARY):
        with registry.start_run(f"service-test-{alias}") as run:
            versions.append(
                registry.register_digit_model(
                    model, run.info.run_id, meta={"test_accuracy": accuracy}, aliases=(alias,)
                )
            )
    return TrainedRegistry(
        home=home,
        data_dir=data_dir,
        v1=versions[0],
        v2=versions[1],
        accuracy=accuracy,
        test_images=test.images[:200],
        test_labels=test.labels[:200],
    )


@pytest.fixture
def restore_aliases(trained_registry: TrainedRegistry) -> Iterator[None]:
    """Put stable and canary back on v1 and v2 after a test that moves them."""
    yield
    registry = trained_registry.registry()
    registry.set_alias("inkwell-digits", STABLE, trained_registry.v1.version)
    registry.set_alias("inkwell-digits", CANARY, trained_registry.v2.version)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str = "L") -> bytes:
    """Encode a uint8 image (H, W) or (H, W, C) in `fmt`."""
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def png_of_zeros(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A valid PNG of the given size whose pixels compress to almost nothing (a pixel bomb).

    `color_type` is the PNG one: 0 gray, 2 RGB, 4 gray + alpha, 6 RGBA.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def as_photo(digit: np.ndarray, size: int = 140) -> np.ndarray:
    """An MNIST digit as a 'scan': dark ink on light paper, upscaled, off-centre with margins."""
    big = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR))
    paper = np.full((size + 60, size + 100), 235, dtype=np.uint8)
    paper[20 : 20 + size, 70 : 70 + size] = 235 - (big.astype(np.int32) * 200 // 255)
    return paper


@dataclass
class LiveService:
    """A real `inkwell service` process (uvicorn) on a free port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


def service_env(registry: TrainedRegistry, **settings: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INKWELL_") and k != "MLFLOW_TRACKING_URI"
    }
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "INKWELL_HOME": str(registry.home),
            "INKWELL_DATA_DIR": str(registry.data_dir),
            "INKWELL_SERVICE_API_KEYS": API_KEY,
            "INKWELL_SERVICE_TORCH_THREADS": "1",
            "INKWELL_SERVICE_POLL_INTERVAL_S": "0.5",
        }
    )
    env.update({f"INKWELL_SERVICE_{k.upper()}": v for k, v in settings.items()})
    return env


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"service at {url} not ready in {timeout} s:\n{log.read_text()}")


class ServiceStarter:
    """Starts real service processes through the `inkwell service` CLI and stops them all."""

    def __init__(self, registry: TrainedRegistry, log_dir: Path) -> None:
        self.registry = registry
        self.log_dir = log_dir
        self.started: list[LiveService] = []

    def start(
        self, variant: str = STABLE, *, env: dict[str, str] | None = None, wait: bool = True
    ) -> LiveService:
        """Start one service process; wait until it is ready unless `wait` is false."""
        port = free_port()
        log = self.log_dir / f"service-{len(self.started)}.log"
        code = "from inkwell_app.cli import main; main()"
        process = subprocess.Popen(
            [sys.executable, "-c", code, "service", "--variant", variant, "--port", str(port)],
            env=env or service_env(self.registry),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        service = LiveService(process, f"http://127.0.0.1:{port}", log)
        self.started.append(service)
        if wait:
            wait_ready(service.url, process, log)
        return service

    def stop_all(self) -> None:
        """Stop every process started here that still runs (SIGTERM, then SIGKILL)."""
        for service in self.started:
            if service.process.poll() is None:
                service.process.terminate()
                try:
                    service.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    service.process.kill()
                    service.process.wait(timeout=10)


@pytest.fixture
def start_service(
    trained_registry: TrainedRegistry, tmp_path: Path
) -> Iterator[Callable[..., LiveService]]:
    """Start real service processes of the test's own (to kill, restart or configure)."""
    starter = ServiceStarter(trained_registry, tmp_path)
    yield starter.start
    starter.stop_all()


@pytest.fixture(scope="module")
def shared_service(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """One stable service with the default test settings, shared by a module's tests that
    neither kill it, restart it nor move its aliases (a start costs seconds of CPU)."""
    starter = ServiceStarter(trained_registry, tmp_path_factory.mktemp("shared-service"))
    try:
        yield starter.start(STABLE)
    finally:
        starter.stop_all()


@pytest.fixture(scope="module")
def client(trained_registry: TrainedRegistry) -> Iterator[TestClient]:
    """The stable service app in-process (lifespan run), with an API key configured."""
    app = create_app(trained_registry.settings(poll_interval_s=60))
    with TestClient(app) as test_client:
        yield test_client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The response is the error map's JSON with this status and code, and a real message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert {"code", "message"} <= set(body), body
    assert len(body["message"]) > 20, body
    return body
