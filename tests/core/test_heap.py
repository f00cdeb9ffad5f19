"""An app's start-up freeze (inkwell/heap.py): owned, nested inside another, given back."""

from __future__ import annotations

import gc
import weakref

from inkwell.heap import StartupFreeze


class _Cycle:
    """An object in a reference cycle: only a collection frees it."""

    def __init__(self) -> None:
        self.me = self


def test_an_app_in_an_unfrozen_process_freezes_its_heap_and_thaws_it_when_stopping(
    unfrozen_heap: None,
) -> None:
    heap = StartupFreeze()
    frozen = heap.freeze()
    assert heap.owner and frozen == gc.get_freeze_count() > 10_000
    heap.thaw()
    assert not heap.owner and gc.get_freeze_count() == 0


def test_an_app_nested_in_a_frozen_process_leaves_the_hosts_freeze_alone(
    unfrozen_heap: None,
) -> None:
    host, app = StartupFreeze(), StartupFreeze()
    host.freeze()
    before = gc.get_freeze_count()
    garbage = _Cycle()
    dead = weakref.ref(garbage)
    del garbage
    assert app.freeze() == before and not app.owner
    assert dead() is not None  # nothing collected: a nested start walks no heap
    app.refreeze()
    app.thaw()
    assert gc.get_freeze_count() == before  # the host's heap is still frozen
    gc.collect()
    assert dead() is None  # the nested app's objects stayed with the collector
    host.thaw()
    assert gc.get_freeze_count() == 0


def test_refreeze_frees_cycles_that_died_inside_the_frozen_heap(unfrozen_heap: None) -> None:
    heap = StartupFreeze()
    model = _Cycle()
    dead = weakref.ref(model)
    heap.freeze()
    del model  # an old model: frozen, in a cycle, now unreachable
    gc.collect()
    assert dead() is not None
    assert heap.refreeze() > 10_000
    assert dead() is None and heap.owner
    heap.thaw()
