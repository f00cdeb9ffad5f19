"""The trainer's admin API: auth, status, metrics, health and the manual trigger."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from inkwell.registry import Registry
from inkwell.settings import STABLE
from inkwell.store import SampleStore
from tests.postgres import Cluster
from tests.trainer.conftest import MnistArrays, upload
from trainer.app import create_app
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

KEY = "trainer-admin-secret-0123456789"


@pytest.fixture
def worker(trainer_home: object, monkeypatch: pytest.MonkeyPatch, store: SampleStore) -> Worker:
    monkeypatch.setenv("INKWELL_TRAINER_ADMIN_API_KEY", KEY)
    monkeypatch.setenv("INKWELL_TRAINER_MIN_NEW_SAMPLES", "1000")  # only manual triggers
    monkeypatch.setenv("INKWELL_TRAINER_NEW_USER_MIN_SAMPLES", "1000")
    settings = TrainerSettings()
    return Worker(Retrainer(settings, store=store), settings)


@pytest.fixture
def client(worker: Worker) -> Iterator[TestClient]:
    with TestClient(create_app(worker.settings, worker=worker, poll=False)) as test_client:
        yield test_client


def test_health_and_metrics_are_served(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    body = client.get("/metrics").text
    assert "inkwell_trainer_retrains_total" in body
    assert 'inkwell_trainer_quarantined_samples_total{reason="label_conflict"} 0.0' in body


def test_status_shows_watermark_pending_and_versions(client: TestClient) -> None:
    status = client.get("/v1/status").json()
    assert status["watermark"] == 0 and status["pending"]["count"] == 0
    assert status["running"] is False and status["canary_version"] is None


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "api_key_required"), ({"X-API-Key": "wrong"}, "invalid_api_key")],
)
def test_retrain_without_the_right_key_is_unauthorized(
    client: TestClient, headers: dict[str, str], code: str
) -> None:
    response = client.post("/v1/retrain", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == code and "X-API-Key" in response.json()["message"]


def test_retrain_is_disabled_without_a_configured_key(
    trainer_home: object, store: SampleStore
) -> None:
    settings = TrainerSettings()
    app = create_app(
        settings, worker=Worker(Retrainer(settings, store=store), settings), poll=False
    )
    with TestClient(app) as test_client:
        response = test_client.post("/v1/retrain", headers={"X-API-Key": "anything"})
    assert response.status_code == 503
    assert "INKWELL_TRAINER_ADMIN_API_KEY" in response.json()["message"]


def test_retrain_with_nothing_pending_is_a_conflict(client: TestClient) -> None:
    response = client.post("/v1/retrain", headers={"X-API-Key": KEY})
    assert response.status_code == 409 and response.json()["code"] == "nothing_to_train"


def test_unknown_route_gets_the_json_error_shape(client: TestClient) -> None:
    response = client.get("/v1/nope")
    assert response.status_code == 404 and set(response.json()) == {"code", "message"}


@pytest.mark.slow
def test_manual_trigger_retrains_at_the_next_poll(
    registered_base: str,
    client: TestClient,
    worker: Worker,
    store: SampleStore,
    mnist: MnistArrays,
) -> None:
    upload(store, "bob", mnist.test_images[300:324], mnist.test_labels[300:324])
    assert worker.poll_once() is None  # 24 < 1000 pending: the automatic rules wait

    response = client.post("/v1/retrain", headers={"X-API-Key": KEY})
    assert response.status_code == 202 and response.json()["pending"] == 24
    outcome = worker.poll_once()

    assert outcome is not None
    status = client.get("/v1/status").json()
    assert status["last_job"]["trigger"] == "manual"
    assert status["last_job"]["status"] == "done"
    if outcome.status == "passed":
        assert status["canary_version"] == outcome.version
    else:
        assert status["canary_version"] is None
    assert worker.retrainer.registry.find_version("inkwell-digits", outcome.version)


@pytest.mark.integration
def test_the_trainer_process_serves_its_admin_api(trainer_home: object) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from tests.trainer.conftest import REPO

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "import sys; from inkwell_app.cli import main; sys.argv = sys.argv[1:]; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "inkwell", "trainer", "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, "the trainer exited"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the trainer never answered"
                time.sleep(0.5)
        assert health == {"status": "ok", "ready": True, "worker_alive": True}
        status = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=10).json()
        assert status["pending"]["count"] == 0 and status["stable_version"] is None
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.integration
def test_trainer_seeds_an_empty_registry_and_says_what_retraining_needs(
    trainer_home: Path, store: SampleStore, tmp_path: Path
) -> None:
    settings = TrainerSettings(
        seed_shipped=True, data_dir=tmp_path / "no-mnist", allow_download=False
    )
    worker = Worker(Retrainer(settings, store=store), settings)
    with TestClient(create_app(settings, worker=worker, poll=False)) as client:
        status = client.get("/v1/status").json()
    assert status["stable_version"] == "1"  # the shipped base model, seeded at start
    # and the shipped cheque reader: the services may only read the registry (docs/deploy.md)
    cheques = Registry(settings).get_version(settings.cheque_model_name, STABLE)
    assert cheques.tags["source"] == "shipped"
    mnist = status["mnist"]
    assert mnist["found"] is False and mnist["path"] is None
    assert "Retraining needs MNIST" in mnist["message"]
    assert "INKWELL_DATA_DIR" in mnist["message"]


def test_status_shows_where_mnist_is(client: TestClient, mnist_path: Path) -> None:
    mnist = client.get("/v1/status").json()["mnist"]
    assert mnist == {"found": True, "path": str(mnist_path), "message": None}


@pytest.mark.integration
def test_trainer_starts_without_its_database_answers_not_ready_then_recovers_by_itself(
    trainer_home: object, monkeypatch: pytest.MonkeyPatch, postgres_cluster: Cluster
) -> None:
    # A real PostgreSQL server whose database does not exist yet: every connect is refused.
    name = f"inkwell_late_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("INKWELL_DATABASE_URL", postgres_cluster.url(name))
    monkeypatch.setenv("INKWELL_DATABASE_CONNECT_TIMEOUT_S", "2")
    settings = TrainerSettings(database_retry_seconds=0.2)
    with TestClient(create_app(settings, poll=False)) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["ready"] is False
        for path in ("/readyz", "/v1/status"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "trainer_not_ready"
            assert name in response.json()["message"] and "retry" in response.json()["message"]
            assert response.headers["Retry-After"] == "1"

        with psycopg.connect(
            f"host=127.0.0.1 port={postgres_cluster.port} user={postgres_cluster.user} "
            "dbname=postgres",
            autocommit=True,
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        deadline = time.monotonic() + 15
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200
        assert client.get("/healthz").json()["ready"] is True
        status = client.get("/v1/status")
        assert status.status_code == 200 and status.json()["pending"]["count"] == 0
