"""Memory of served predictions, so delayed labels become online accuracy per model version.

When a labelled upload arrives for an image the router served earlier (matched by content
hash), each remembered prediction of that image is scored once: correct or incorrect for the
variant and version that made it. The memory is a bounded LRU: old entries fall out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Served:
    """One prediction of an image by one variant/version."""

    variant: str
    version: str
    prediction: str


class ServedMemory:
    """Bounded LRU from image content hash to the predictions made for it."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, dict[tuple[str, str], Served]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: str, served: Served) -> None:
        """Record that `served.variant` predicted `served.prediction` for image `key`."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = {}
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        entry[(served.variant, served.version)] = served

    def take(self, key: str) -> list[Served]:
        """The predictions for `key`, forgotten afterwards so each label is scored once."""
        entry = self._entries.pop(key, None)
        return list(entry.values()) if entry else []


def score(served: list[Served], label: str) -> list[tuple[Served, bool]]:
    """Each remembered prediction with whether it matches the label."""
    truth = label.strip()
    return [(item, item.prediction == truth) for item in served]
