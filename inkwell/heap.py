"""Keep the cyclic garbage collector off the long-lived start-up heap of a serving process.

A service or router process holds about half a million objects once torch, MLflow, FastAPI and
the model are loaded. Python's full (generation 2) collection walks all of them while holding
the GIL: 0.4-0.7 s on a busy 2-core machine, during which no request moves, and under load one
comes every 10-20 s. Freezing the heap once start-up is done (`gc.freeze()`) moves those
objects to a permanent generation that collections skip, so a full collection only walks what
was created since: tens of milliseconds at most. Frozen objects are still freed by reference
counting; only reference cycles among them are not.

A model swap after start-up collects nothing: a replaced model is freed by reference counting,
or, loaded after the freeze, by the ordinary collections (cheap: they walk only what was
created since). Were a model loaded at start-up to sit in a reference cycle, it would stay,
frozen: a few MB, once per process (tests/service/test_heap.py checks the served digit model
is freed). Unfreezing and collecting at every swap (as this did before) holds the GIL for a
full walk, 0.35 s on an idle 2-core machine and 0.6-0.7 s on a busy one, exactly when the
canary's first requests on the new version are measured: enough to fail a good canary's p95
check at a 5 % step.

The freeze is process-wide (there is one permanent generation), so it nests: an app started in
a process whose heap is already frozen (a test session, or another app in the same process)
leaves that freeze to its owner. It neither freezes nor unfreezes; its own objects stay with
the collector, which frees them as usual. Otherwise the app's stop would unfreeze its host's
heap, and every later start in that process would walk all of it again.
"""

from __future__ import annotations

import gc


class StartupFreeze:
    """One app's freeze of its start-up heap: `freeze()` once started, `thaw()` when stopping."""

    def __init__(self) -> None:
        self.owner = False  # whether this app froze the heap (False: not frozen, or nested)

    def freeze(self) -> int:
        """Collect once, then freeze every surviving object, unless the heap is already frozen
        by someone else; returns how many objects are frozen."""
        if not self.owner and gc.get_freeze_count():
            return gc.get_freeze_count()
        gc.collect()
        gc.freeze()
        self.owner = True
        return gc.get_freeze_count()

    def thaw(self) -> None:
        """Give the objects this app froze back to the collector (an app stopping inside a longer
        process); a nested app leaves its host's freeze alone."""
        if self.owner:
            self.owner = False
            gc.unfreeze()
