"""`inkwell bench service`'s generator comparison against a real service process."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import wrk
from bench.service import compare_generators, single_image_bodies
from tests.service.conftest import LiveService, TrainedRegistry


def compare(
    service: LiveService, registry: TrainedRegistry, rounds: int, warmup: float = 0.2
) -> dict:
    port = int(service.url.rsplit(":", 1)[1])
    return compare_generators(
        (service.process.pid, port),
        single_image_bodies(registry.test_images[:8]),
        [2],
        rounds=rounds,
        duration=0.5,  # wrk measures whole seconds: it runs 1 s
        warmup=warmup,
        progress=lambda line: None,
    )


@pytest.mark.integration
def test_generator_comparison_without_wrk_runs_the_bench_client_alone(
    shared_service: LiveService,
    trained_registry: TrainedRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk to be found
    results = compare(shared_service, trained_registry, rounds=1)
    assert set(results) == {
        ("raw image/png", 2, "bench client"),
        ("multipart image", 2, "bench client"),
    }
    for stats in results.values():
        assert stats.rate > 0 and stats.errors == 0 and stats.p50 <= stats.p99 <= stats.max_ms


@pytest.mark.integration
@pytest.mark.skipif(wrk.binary() is None, reason=wrk.MISSING)
def test_generator_comparison_reports_both_generators_for_raw_and_multipart_bodies(
    shared_service: LiveService, trained_registry: TrainedRegistry
) -> None:
    # No warm-up: wrk would round it up to a whole second per run (the test above has one).
    results = compare(shared_service, trained_registry, rounds=2, warmup=0)
    assert {key[2] for key in results} == {"bench client", "wrk"} and len(results) == 4
    # Both bodies are answered (no 4xx from the multipart parser) by either generator.
    assert all(stats.rate > 0 and stats.errors == 0 for stats in results.values())
