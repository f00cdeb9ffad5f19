"""`inkwell service --workers N`: several processes on one port, metrics summed across them."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import psutil
import pytest

from inkwell.settings import STABLE
from tests.harness import wait_until
from tests.service.conftest import LiveService, TrainedRegistry, service_env

pytestmark = pytest.mark.integration


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
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    service = start_service(env=service_env(trained_registry, workers="2"))
    assert len(workers_of(service)) == 2
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
        assert total(samples, "inkwell_service_predictions_total{") == len(images)
        requests = "inkwell_service_requests_total{"
        assert total(samples, requests, 'route="/v1/digits/predict"') == len(images)
        assert samples['inkwell_service_ready{variant="stable"}'] == 1
        # one model load per worker, each its own
        assert total(samples, "inkwell_service_model_reloads_total{") == 2


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
