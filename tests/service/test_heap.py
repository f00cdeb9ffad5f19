"""The started service keeps its start-up heap out of the cyclic garbage collector's walks."""

from __future__ import annotations

import gc
import weakref

from fastapi.testclient import TestClient

from inkwell.settings import CANARY, STABLE
from service.context import ServiceContext
from service.main import create_app
from tests.service.conftest import TrainedRegistry


def test_started_service_freezes_its_startup_heap_so_full_collections_skip_it(
    trained_registry: TrainedRegistry, unfrozen_heap: None
) -> None:
    app = create_app(trained_registry.settings(poll_interval_s=60))
    with TestClient(app):
        frozen = gc.get_freeze_count()
        # A full collection walks only what the collector still tracks.
        assert frozen > 100_000 and len(gc.get_objects()) < frozen / 10
    assert gc.get_freeze_count() == 0  # stopping gives the heap back (tests, one-process runs)


def test_a_model_swap_collects_nothing_and_later_models_are_freed_by_ordinary_collections(
    trained_registry: TrainedRegistry, unfrozen_heap: None
) -> None:
    app = create_app(trained_registry.settings(poll_interval_s=60))
    context: ServiceContext = app.state.context
    registry = trained_registry.registry()
    v1, v2 = trained_registry.v1.version, trained_registry.v2.version
    try:
        with TestClient(app) as client:
            frozen = gc.get_freeze_count()

            # how many objects were frozen whenever the collector ran during a swap
            walks: list[int] = []

            def record(phase: str, info: dict[str, int]) -> None:
                if phase == "start":
                    walks.append(gc.get_freeze_count())

            def swap_to(version: str) -> weakref.ref[object]:
                served = context.model.current
                assert served is not None
                old = weakref.ref(served.model)
                del served
                registry.set_alias("inkwell-digits", STABLE, version)
                gc.callbacks.append(record)
                try:
                    outcome = client.portal.call(context.refresh_model)  # type: ignore[union-attr]
                finally:
                    gc.callbacks.remove(record)
                assert outcome.swapped and context.model.version == version
                return old

            # no unfreeze and full walk at a swap (0.35-0.7 s holding the GIL, just when the
            # new version's first requests are measured): every collection skips the frozen
            # heap, and the replaced model is freed all the same, the one loaded at start-up
            # (frozen) as well as one loaded later
            for version in (v2, v1):
                replaced = swap_to(version)
                assert all(count > frozen * 0.9 for count in walks), (frozen, walks)
                gc.collect()
                assert replaced() is None
    finally:
        registry.set_alias("inkwell-digits", STABLE, v1)
        registry.set_alias("inkwell-digits", CANARY, v2)
