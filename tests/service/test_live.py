"""Real `inkwell service` processes (uvicorn) against the real sqlite registry and sample store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from inkwell.settings import CANARY, STABLE
from inkwell.store import SampleStore
from tests.cheques.helpers import field_image
from tests.harness import free_port, png, wait_until
from tests.service.conftest import (
    API_KEY,
    LiveService,
    TrainedRegistry,
    as_photo,
    encode,
    png_of_zeros,
    service_env,
    wait_ready,
)

pytestmark = pytest.mark.integration


def predict(client: httpx.Client, url: str, image: bytes) -> httpx.Response:
    return client.post(
        f"{url}/v1/digits/predict", content=image, headers={"Content-Type": "image/png"}
    )


def test_alias_move_hot_reloads_while_a_client_keeps_requesting(
    start_service: Callable[..., LiveService],
    trained_registry: TrainedRegistry,
    restore_aliases: None,
) -> None:
    # Both variants run side by side as real uvicorn processes; then stable's alias moves.
    service = start_service(STABLE, wait=False)
    canary = start_service(CANARY, wait=False)
    for started in (service, canary):
        wait_ready(started.url, started.process, started.log)
    image = encode(trained_registry.test_images[3])
    with httpx.Client(timeout=10) as client:
        one = predict(client, service.url, image).json()
        other = predict(client, canary.url, image).json()
    assert (one["variant"], one["model_version"]) == (STABLE, trained_registry.v1.version)
    assert (other["variant"], other["model_version"]) == (CANARY, trained_registry.v2.version)
    assert one["digit"] == other["digit"] == int(trained_registry.test_labels[3])
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def keep_requesting() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    response = predict(client, service.url, image)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    versions.append(response.json()["model_version"])

    v1, v2 = trained_registry.v1.version, trained_registry.v2.version
    worker = threading.Thread(target=keep_requesting)
    worker.start()
    try:
        wait_until(lambda: len(versions) >= 10 or bool(failures), 30, "answers from v1")
        trained_registry.registry().set_alias("inkwell-digits", STABLE, v2)
        # then keep requesting until v2 has answered 10 times in a row (or something failed)
        wait_until(lambda: versions[-10:] == [v2] * 10 or bool(failures), 30, "10 answers from v2")
    finally:
        stop.set()
        worker.join(timeout=30)
    assert failures == []
    assert len(versions) >= 20, "the client should have kept requesting through the swap"
    assert versions[0] == v1 and versions[-1] == v2
    switch = versions.index(v2)
    assert set(versions[:switch]) == {v1} and set(versions[switch:]) == {v2}  # one clean swap
    metrics = httpx.get(f"{service.url}/metrics").text
    assert f'inkwell_service_model_reloads_total{{model_version="{v2}",variant="stable"}} 1.0' in (
        metrics
    )
    assert 'route="/v1/digits/predict",status="200",variant="stable"' in metrics


def test_sample_is_durable_when_the_service_is_killed_right_after_201(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    service = start_service(STABLE)
    user = f"kill-{uuid.uuid4().hex[:8]}"
    image = encode(trained_registry.test_images[21])
    response = httpx.post(
        f"{service.url}/v1/samples",
        files={"image": ("d.png", image, "image/png")},
        data={"label": "1", "user_id": user},
        headers={"X-API-Key": API_KEY},
    )
    service.kill(signal.SIGKILL)  # no shutdown hook, no flush: only what was committed survives
    assert response.status_code == 201, response.text
    assert service.process.returncode == -signal.SIGKILL
    sample_id = response.json()["sample_id"]

    restarted = start_service(STABLE)
    stats = httpx.get(f"{restarted.url}/v1/samples/stats", headers={"X-API-Key": API_KEY})
    assert stats.json()["by_user"][user] == 1
    stored = SampleStore(trained_registry.settings().resolved_database_url).get(sample_id)
    assert stored is not None and stored.image == image and stored.user_id == user


@pytest.mark.slow
def test_every_acknowledged_upload_survives_a_kill_9_during_1000_concurrent_uploads(
    start_service: Callable[..., LiveService],
    trained_registry: TrainedRegistry,
    database_url: str,
) -> None:
    # SQLite and a real PostgreSQL cluster; no rate limit, so every upload reaches the store.
    env = service_env(trained_registry, upload_rate_per_s="0")
    env["INKWELL_DATABASE_URL"] = database_url
    service = start_service(STABLE, env=env)
    user = f"kill9-{uuid.uuid4().hex[:8]}"
    base = trained_registry.test_images[7]
    images: list[bytes] = []
    for i in range(1000):  # 1,000 distinct images, so none is a duplicate of another
        varied = base.copy()
        varied.flat[i % varied.size] ^= 1 + i // varied.size
        images.append(encode(varied))
    pending = list(enumerate(images))
    lock = threading.Lock()
    acknowledged: dict[int, bytes] = {}
    refused: list[str] = []
    kill_after = 300

    def upload() -> None:
        with httpx.Client(timeout=10) as client:
            while True:
                with lock:
                    if not pending:
                        return
                    i, image = pending.pop()
                try:
                    response = client.post(
                        f"{service.url}/v1/samples",
                        files={"image": (f"{i}.png", image, "image/png")},
                        data={"label": "7", "user_id": user},
                        headers={"X-API-Key": API_KEY},
                    )
                except httpx.HTTPError:
                    continue  # the service is gone: nothing was acknowledged for this one
                with lock:
                    if response.is_success:
                        acknowledged[response.json()["sample_id"]] = image
                    else:
                        refused.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=upload) for _ in range(32)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < kill_after and time.monotonic() < deadline:
        time.sleep(0.01)
    service.kill(signal.SIGKILL)  # mid-flight: 32 uploads are in some stage of being stored
    for thread in threads:
        thread.join(timeout=60)
    assert service.process.returncode == -signal.SIGKILL
    assert refused == []
    assert kill_after <= len(acknowledged) < len(images), "the kill should land mid-run"

    store = SampleStore(database_url)
    for sample_id, image in acknowledged.items():
        stored = store.get(sample_id)
        assert stored is not None, f"sample {sample_id} was acknowledged but is not in the store"
        assert stored.image == image and stored.user_id == user and stored.label == 7


def test_cheque_sample_is_durable_when_the_service_is_killed_right_after_201(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    service = start_service(STABLE)
    branch = f"kill-{uuid.uuid4().hex[:8]}"
    image = png(field_image())
    response = httpx.post(
        f"{service.url}/v1/cheques/samples",
        files={"image": ("amount.png", image, "image/png")},
        data={"amount": "4.250,-", "user_id": branch},
        headers={"X-API-Key": API_KEY},
    )
    service.kill(signal.SIGKILL)
    assert response.status_code == 201, response.text
    assert service.process.returncode == -signal.SIGKILL

    restarted = start_service(STABLE)
    stats = httpx.get(f"{restarted.url}/v1/cheques/samples/stats", headers={"X-API-Key": API_KEY})
    assert stats.json()["by_user"][branch] == 1
    store = SampleStore(trained_registry.settings().resolved_database_url)
    stored = store.cheque_sample(response.json()["sample_id"])
    assert stored is not None and stored.image == image and stored.amount == "4250"


@pytest.mark.slow
def test_unreachable_mlflow_keeps_the_last_good_model(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    port = free_port()
    db = trained_registry.registry().tracking_uri
    log = tmp_path / "mlflow.log"
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: uvicorn workers die with it
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        env = service_env(trained_registry, poll_interval_s="0.3")
        env["INKWELL_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        service = start_service(STABLE, env=env)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    image = encode(trained_registry.test_images[4])
    with httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + 60
        metrics = ""
        while "registry_unavailable" not in metrics and time.monotonic() < deadline:
            response = predict(client, service.url, image)
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == trained_registry.v1.version
            metrics = client.get(f"{service.url}/metrics").text
            time.sleep(0.2)
        assert 'inkwell_service_model_load_failures_total{reason="registry_unavailable"' in metrics
        assert client.get(f"{service.url}/readyz").status_code == 200
        assert predict(client, service.url, image).status_code == 200


def test_healthz_keeps_answering_while_large_images_and_pixel_bombs_arrive(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    # Decoding happens off the event loop and bombs are refused from their header, so the
    # loop stays free for health checks (the old code decoded small files on the loop: seconds).
    service = start_service(STABLE)
    bomb = png_of_zeros(4_000, 4_000, bit_depth=8, color_type=6)
    photo = encode(as_photo(trained_registry.test_images[0], size=1_800))  # 3.5 Mpx, allowed
    uploads = [bomb, photo] * 3
    statuses: list[int] = []
    latencies: list[float] = []

    def upload(data: bytes) -> None:
        with httpx.Client(timeout=60) as client:
            statuses.append(predict(client, service.url, data).status_code)

    threads = [threading.Thread(target=upload, args=(data,)) for data in uploads]
    for thread in threads:
        thread.start()
    with httpx.Client(timeout=30) as client:
        while any(thread.is_alive() for thread in threads):
            started = time.perf_counter()
            assert client.get(f"{service.url}/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    for thread in threads:
        thread.join()
    assert latencies and max(latencies) < 1.0, latencies
    assert sorted(statuses) == [200] * 3 + [413] * 3


def test_overload_is_shed_with_503_and_retry_after_while_health_checks_answer(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    env = service_env(trained_registry, max_in_flight="2", retry_after_s="3")
    service = start_service(STABLE, env=env)
    photo = encode(as_photo(trained_registry.test_images[0], size=1_800))  # ~0.1-0.5 s to decode
    answers: list[httpx.Response] = []
    probes: list[tuple[int, float]] = []

    def upload() -> None:
        with httpx.Client(timeout=60) as client:
            answers.append(predict(client, service.url, photo))

    threads = [threading.Thread(target=upload) for _ in range(16)]
    for thread in threads:
        thread.start()
    with httpx.Client(timeout=30) as client:
        while any(thread.is_alive() for thread in threads):
            for path in ("/healthz", "/readyz"):
                started = time.perf_counter()
                status = client.get(f"{service.url}{path}").status_code
                probes.append((status, time.perf_counter() - started))
            time.sleep(0.02)
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) == {200, 503}, statuses
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.headers["Retry-After"] == "3"
    assert shed.json()["code"] == "overloaded" and "limit 2" in shed.json()["message"]
    assert probes and all(status == 200 for status, _ in probes), probes
    assert max(latency for _, latency in probes) < 1.0, probes
    with httpx.Client(timeout=30) as client:
        assert predict(client, service.url, photo).status_code == 200  # recovered by itself
        metrics = client.get(f"{service.url}/metrics").text
    shed_count = statuses.count(503)
    assert (
        f'inkwell_service_requests_shed_total{{reason="in_flight",variant="stable"}} '
        f"{float(shed_count)}" in metrics
    ), metrics
