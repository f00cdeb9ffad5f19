"""`inkwell service --workers N`: several processes on one port, metrics summed across them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from bench.service import http_request, png, run_load
from inkwell.settings import STABLE
from tests.harness import wait_until
from tests.service.conftest import LiveService, ServiceStarter, TrainedRegistry, service_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """A two-worker stable service for the tests that only send it requests (three processes
    start: seconds of CPU each); a test that moves an alias starts its own."""
    starter = ServiceStarter(trained_registry, tmp_path_factory.mktemp("two-workers"))
    try:
        yield starter.start(env=service_env(trained_registry, workers="2"))
    finally:
        starter.stop_all()


def scrape(url: str) -> dict[str, float]:
    """Every sample of one scrape, on a fresh connection (so any worker may answer)."""
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str, *labels: str) -> float:
    """The sum of the samples whose name starts with `prefix` and that carry all `labels`."""
    return sum(
        value
        for name, value in samples.items()
        if name.startswith(prefix) and all(label in name for label in labels)
    )


def workers_of(service: LiveService) -> list[psutil.Process]:
    children = psutil.Process(service.process.pid).children()
    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def test_two_workers_share_the_port_and_every_scrape_counts_all_their_requests(
    two_workers: LiveService, trained_registry: TrainedRegistry
) -> None:
    service = two_workers
    assert len(workers_of(service)) == 2
    predictions, requests = "inkwell_service_predictions_total{", "inkwell_service_requests_total{"
    route = 'route="/v1/digits/predict"'
    # Counted from what every worker had answered before (the service is the module's): a
    # worker counting only its own would give scrapes that disagree.
    before = scrape(service.url)
    images = trained_registry.test_images[:40]
    for image in images:  # a new connection each: the kernel spreads them over the workers
        response = httpx.post(
            f"{service.url}/v1/digits/predict",
            json={"pixels": image.tolist()},
            headers={"Connection": "close"},
        )
        assert response.status_code == 200, response.text
    for _ in range(6):
        samples = scrape(service.url)
        assert total(samples, predictions) == total(before, predictions) + len(images)
        assert total(samples, requests, route) == total(before, requests, route) + len(images)
        assert samples['inkwell_service_ready{variant="stable"}'] == 1
        # one model load per worker, each its own
        assert total(samples, "inkwell_service_model_reloads_total{") == 2


@pytest.mark.slow  # three processes of its own and a registry poll: tens of seconds with -n 3
def test_an_alias_move_reloads_the_model_in_every_worker(
    start_service: Callable[..., LiveService],
    trained_registry: TrainedRegistry,
    restore_aliases: None,
) -> None:
    service = start_service(env=service_env(trained_registry, workers="2"))
    v1, v2 = trained_registry.v1.version, trained_registry.v2.version
    trained_registry.registry().set_alias("inkwell-digits", STABLE, v2)
    reloads, version = "inkwell_service_model_reloads_total{", f'model_version="{v2}"'
    wait_until(
        lambda: total(scrape(service.url), reloads, version) == 2, timeout=60, what="2 reloads"
    )
    image = trained_registry.test_images[0].tolist()
    for _ in range(20):
        answer = httpx.post(
            f"{service.url}/v1/digits/predict",
            json={"pixels": image},
            headers={"Connection": "close"},
        ).json()
        assert answer["model_version"] == v2
    samples = scrape(service.url)
    info = "inkwell_service_model_info{"
    assert total(samples, info, f'model_version="{v2}"') == 1
    assert total(samples, info, f'model_version="{v1}"') == 0


def test_bench_counts_the_cpu_of_every_worker_of_a_multi_worker_service(
    two_workers: LiveService, trained_registry: TrainedRegistry
) -> None:
    port = int(two_workers.url.rsplit(":", 1)[1])
    requests = [
        (http_request("/v1/digits/predict", png(image), "image/png"), [int(label)])
        for image, label in zip(
            trained_registry.test_images[:16], trained_registry.test_labels[:16], strict=True
        )
    ]
    result = run_load(
        (two_workers.process.pid, port),
        requests,
        concurrency=4,
        duration=1.0,
        warmup=0.2,
        name="two workers",
        images_per_request=1,
    )
    assert result.requests > 0 and result.errors == 0
    # The parent only supervises; the decoding and the forward passes happen in the workers.
    assert result.cpu_ms_per_request > 0.2
