"""`inkwell bench service`'s generator comparison against a real service process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench import wrk
from bench.service import compare_generators, http_request, png, run_load, single_image_bodies
from tests.service.conftest import LiveService, TrainedRegistry, service_env


def compare(service: LiveService, registry: TrainedRegistry, rounds: int) -> dict:
    port = int(service.url.rsplit(":", 1)[1])
    return compare_generators(
        (service.process.pid, port),
        single_image_bodies(registry.test_images[:8]),
        [2],
        rounds=rounds,
        duration=1,
        warmup=0.2,
        progress=lambda line: None,
    )


@pytest.mark.integration
def test_generator_comparison_without_wrk_runs_the_bench_client_alone(
    start_service: Callable[..., LiveService],
    trained_registry: TrainedRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    service = start_service()
    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk to be found
    results = compare(service, trained_registry, rounds=1)
    assert set(results) == {
        ("raw image/png", 2, "bench client"),
        ("multipart image", 2, "bench client"),
    }
    for stats in results.values():
        assert stats.rate > 0 and stats.errors == 0 and stats.p50 <= stats.p99 <= stats.max_ms


@pytest.mark.integration
@pytest.mark.skipif(wrk.binary() is None, reason=wrk.MISSING)
def test_generator_comparison_reports_both_generators_for_raw_and_multipart_bodies(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    results = compare(start_service(), trained_registry, rounds=2)
    assert {key[2] for key in results} == {"bench client", "wrk"} and len(results) == 4
    # Both bodies are answered (no 4xx from the multipart parser) by either generator.
    assert all(stats.rate > 0 and stats.errors == 0 for stats in results.values())


@pytest.mark.integration
def test_service_cpu_counts_every_worker_of_a_multi_worker_service(
    start_service: Callable[..., LiveService], trained_registry: TrainedRegistry
) -> None:
    service = start_service(env=service_env(trained_registry, workers="2"))
    port = int(service.url.rsplit(":", 1)[1])
    requests = [
        (http_request("/v1/digits/predict", png(image), "image/png"), [int(label)])
        for image, label in zip(
            trained_registry.test_images[:16], trained_registry.test_labels[:16], strict=True
        )
    ]
    result = run_load(
        (service.process.pid, port),
        requests,
        concurrency=4,
        duration=1.5,
        warmup=0.3,
        name="two workers",
        images_per_request=1,
    )
    assert result.requests > 0 and result.errors == 0
    # The parent only supervises; the decoding and the forward passes happen in the workers.
    assert result.cpu_ms_per_request > 0.2
