"""Outages under traffic (issue 18): a real service process keeps answering while what it
depends on fails, answers what it cannot do with a bounded, retryable error, and recovers by
itself; no acknowledged sample is lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from inkwell.settings import STABLE
from inkwell.store import SampleStore
from tests.outage import fill, slowloris, small_disk
from tests.postgres import SKIP_REASON, Cluster, find_bin, running_cluster
from tests.service.conftest import (
    API_KEY,
    LiveService,
    TrainedRegistry,
    encode,
    service_env,
)

pytestmark = pytest.mark.integration


@dataclass
class Traffic:
    """What one predicting and one uploading client saw, with when each answer came."""

    predictions: list[tuple[float, int, float]] = field(default_factory=list)  # at, status, s
    acknowledged: dict[int, bytes] = field(default_factory=dict)
    refused: list[tuple[float, httpx.Response, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def distinct_images(base: np.ndarray, count: int) -> Iterator[bytes]:
    """`count` PNGs of one digit, each a pixel different, so none is a duplicate."""
    for i in range(count):
        varied = base.copy()
        varied.flat[i % varied.size] ^= 1 + i // varied.size
        yield encode(varied)


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, since the test stops and restarts it."""
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip(SKIP_REASON)
    with running_cluster(bin_dir) as cluster:
        yield cluster


def run_traffic(
    service: LiveService, image: bytes, uploads: Iterator[bytes], stop: threading.Event
) -> tuple[Traffic, list[threading.Thread]]:
    """Start one client predicting and one uploading in a loop until `stop` is set."""
    traffic = Traffic()
    user = f"outage-{uuid.uuid4().hex[:8]}"

    def predict() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(
                        f"{service.url}/v1/digits/predict",
                        content=image,
                        headers={"Content-Type": "image/png"},
                    )
                except httpx.HTTPError as exc:
                    traffic.errors.append(f"predict: {exc!r}")
                    continue
                with traffic.lock:
                    traffic.predictions.append(
                        (started, response.status_code, time.monotonic() - started)
                    )
                time.sleep(0.02)

    def upload() -> None:
        with httpx.Client(timeout=30) as client:
            for number, data in enumerate(uploads):
                if stop.is_set():
                    return
                started = time.monotonic()
                try:
                    response = client.post(
                        f"{service.url}/v1/samples",
                        files={"image": ("d.png", data, "image/png")},
                        data={"label": "7", "user_id": user, "idempotency_key": f"k{number}"},
                        headers={"X-API-Key": API_KEY},
                    )
                except httpx.HTTPError as exc:
                    traffic.errors.append(f"upload: {exc!r}")
                    continue
                took = time.monotonic() - started
                with traffic.lock:
                    if response.status_code == 201:
                        traffic.acknowledged[response.json()["sample_id"]] = data
                    else:
                        traffic.refused.append((started, response, took))
                time.sleep(0.02)

    threads = [threading.Thread(target=predict), threading.Thread(target=upload)]
    for thread in threads:
        thread.start()
    return traffic, threads


@pytest.mark.slow
def test_postgresql_stopped_and_restarted_under_traffic_loses_no_acknowledged_sample(
    start_service: Callable[..., LiveService],
    trained_registry: TrainedRegistry,
    own_cluster: Cluster,
) -> None:
    database_url = own_cluster.new_database()
    env = service_env(trained_registry, upload_rate_per_s="0", store_retry_seconds="1")
    env["INKWELL_DATABASE_URL"] = database_url
    service = start_service(STABLE, env=env)
    image = encode(trained_registry.test_images[5])
    stop = threading.Event()
    traffic, threads = run_traffic(
        service, image, distinct_images(trained_registry.test_images[7], 5_000), stop
    )
    try:
        time.sleep(2.0)
        acked_before = len(traffic.acknowledged)
        own_cluster.stop("fast")
        down_at = time.monotonic()
        time.sleep(5.0)
        restarted_at = time.monotonic()
        own_cluster.start()
        deadline = time.monotonic() + 30
        while len(traffic.acknowledged) <= acked_before and time.monotonic() < deadline:
            time.sleep(0.1)
        with traffic.lock:
            refused_while_down = [r for at, r, _ in traffic.refused if down_at <= at]
            acked_while_down = len(traffic.acknowledged)
        deadline = time.monotonic() + 30
        while len(traffic.acknowledged) < acked_while_down + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    assert traffic.errors == []
    assert acked_before > 0, "uploads should succeed before the outage"
    # predictions never need the database: 200 before, during and after
    statuses = [status for _, status, _ in traffic.predictions]
    assert statuses and set(statuses) == {200}, statuses
    assert any(down_at <= at < restarted_at for at, _, _ in traffic.predictions)
    # while it was down: 503 store_unavailable with Retry-After, answered at once
    assert refused_while_down, "uploads during the outage should be refused"
    for _, response, took in traffic.refused:
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "store_unavailable", response.text
        assert int(response.headers["Retry-After"]) >= 1
        assert took < 3.0, f"a refusal took {took:.1f} s; it should not hang"
    # after the restart, without restarting the service, uploads are stored again
    assert len(traffic.acknowledged) >= acked_while_down + 5, service.log.read_text()[-3000:]
    assert service.process.poll() is None
    store = SampleStore(database_url)
    for sample_id, data in traffic.acknowledged.items():
        stored = store.get(sample_id)
        assert stored is not None, f"sample {sample_id} was acknowledged but is not stored"
        assert stored.image == data and stored.label == 7


def test_a_full_disk_under_the_sample_database_refuses_uploads_with_507_and_recovers(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        database_url = f"sqlite:///{disk / 'inkwell.db'}"
        env = service_env(trained_registry, upload_rate_per_s="0", store_retry_seconds="1")
        env["INKWELL_DATABASE_URL"] = database_url
        service = start_service(STABLE, env=env)
        image = encode(trained_registry.test_images[5])
        uploads = distinct_images(trained_registry.test_images[7], 2_000)
        acknowledged: dict[int, bytes] = {}

        def upload(client: httpx.Client) -> tuple[httpx.Response, float]:
            data = next(uploads)
            started = time.monotonic()
            response = client.post(
                f"{service.url}/v1/samples",
                files={"image": ("d.png", data, "image/png")},
                data={"label": "7", "user_id": "full-disk"},
                headers={"X-API-Key": API_KEY},
            )
            if response.status_code == 201:
                acknowledged[response.json()["sample_id"]] = data
            return response, time.monotonic() - started

        with httpx.Client(timeout=30) as client:
            for _ in range(20):
                assert upload(client)[0].status_code == 201
            filler = fill(disk, leave_bytes=0)
            for _ in range(1_500):  # the database's free pages and WAL fill up first
                refused, took = upload(client)
                if refused.status_code != 201:
                    break
            assert refused.status_code == 507, refused.text
            body = refused.json()
            assert body["code"] == "store_full" and "out of disk space" in body["message"]
            assert int(refused.headers["Retry-After"]) >= 1
            assert took < 3.0
            again, took = upload(client)  # within store_retry_seconds: refused at once
            assert again.status_code == 507 and again.json()["code"] == "store_full"
            predicted = client.post(
                f"{service.url}/v1/digits/predict",
                content=image,
                headers={"Content-Type": "image/png"},
            )
            assert predicted.status_code == 200, predicted.text

            filler.unlink()  # an operator frees space; the service is not restarted
            deadline = time.monotonic() + 30
            while upload(client)[0].status_code != 201:
                assert time.monotonic() < deadline, "uploads should succeed once space is freed"
                time.sleep(0.2)
        store = SampleStore(database_url)
        for sample_id, data in acknowledged.items():
            stored = store.get(sample_id)
            assert stored is not None, f"sample {sample_id} was acknowledged but is not stored"
            assert stored.image == data
        store.engine.dispose()
        service.kill()


def test_slow_clients_holding_connections_leave_health_checks_and_predictions_answering(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    service = start_service(STABLE)
    image = encode(trained_registry.test_images[5])
    probes: list[tuple[str, int, float]] = []
    with slowloris(service.url, connections=300) as slow, httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for path in ("/healthz", "/v1/digits/predict"):
                started = time.monotonic()
                if path == "/healthz":
                    response = client.get(f"{service.url}{path}")
                else:
                    response = client.post(
                        f"{service.url}{path}", content=image, headers={"Content-Type": "image/png"}
                    )
                probes.append((path, response.status_code, time.monotonic() - started))
            time.sleep(0.05)
    assert slow.connected == 300
    assert probes and all(status == 200 for _, status, _ in probes), probes
    assert max(took for _, _, took in probes) < 1.0, sorted(probes, key=lambda p: -p[2])[:5]
    assert service.process.poll() is None
