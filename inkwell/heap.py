"""Keep the cyclic garbage collector off the long-lived start-up heap of a serving process.

A service or router process holds about half a million objects once torch, MLflow, FastAPI and
the model are loaded. Python's full (generation 2) collection walks all of them while holding
the GIL: 0.4-0.7 s on a busy 2-core machine, during which no request moves, and under load one
comes every 10-20 s. Freezing the heap once start-up is done (`gc.freeze()`) moves those
objects to a permanent generation that collections skip, so a full collection only walks what
was created since: tens of milliseconds at most. Frozen objects are still freed by reference
counting; only reference cycles among them are not, so whatever replaces a large part of that
heap (a model swap: an eager `nn.Module` sits in a cycle) calls `refreeze()` to let them go.
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Collect once, then freeze every surviving object; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def refreeze() -> int:
    """Unfreeze, collect what became garbage since (an old model's cycles), and freeze again."""
    gc.unfreeze()
    return freeze_long_lived()


def thaw() -> None:
    """Give frozen objects back to the collector (an app stopping inside a longer process)."""
    gc.unfreeze()
