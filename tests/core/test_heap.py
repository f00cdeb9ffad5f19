"""An app's start-up freeze (inkwell/heap.py) nested in a process whose heap is already frozen.

Owning a freeze (an app alone in its process: freeze, a model swap that collects nothing, thaw)
is tested on the real apps: tests/service/test_heap.py and the router's test in
test_router_proxy.py.
"""

from __future__ import annotations

import gc
import weakref

from inkwell.heap import StartupFreeze


class _Cycle:
    """An object in a reference cycle: only a collection frees it."""

    def __init__(self) -> None:
        self.me = self


def test_an_app_nested_in_a_frozen_process_leaves_the_hosts_freeze_alone() -> None:
    before = gc.get_freeze_count()
    assert before > 10_000  # the test session froze its heap (tests/conftest.py)
    app = StartupFreeze()
    garbage = _Cycle()
    dead = weakref.ref(garbage)
    del garbage
    assert app.freeze() == before and not app.owner
    assert dead() is not None  # nothing collected: a nested start walks no heap
    app.thaw()
    assert gc.get_freeze_count() == before  # the host's heap is still frozen
    gc.collect()
    assert dead() is None  # the nested app's objects stayed with the collector
