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


def test_model_swap_after_start_frees_the_old_models_frozen_cycles(
    trained_registry: TrainedRegistry, unfrozen_heap: None
) -> None:
    app = create_app(trained_registry.settings(poll_interval_s=60))
    context: ServiceContext = app.state.context
    registry = trained_registry.registry()
    try:
        with TestClient(app) as client:
            served = context.model.current
            assert served is not None and served.version == trained_registry.v1.version
            # The eager nn.Module sits in a reference cycle: only a collection can free it.
            old_model = weakref.ref(served.model)
            del served
            registry.set_alias("inkwell-digits", STABLE, trained_registry.v2.version)
            outcome = client.portal.call(context.refresh_model)  # type: ignore[union-attr]
            assert outcome.swapped and context.model.version == trained_registry.v2.version
            assert old_model() is None
            assert gc.get_freeze_count() > 100_000  # the new model is frozen with the rest
    finally:
        registry.set_alias("inkwell-digits", STABLE, trained_registry.v1.version)
        registry.set_alias("inkwell-digits", CANARY, trained_registry.v2.version)
