"""One registry model served by alias: followed by polling, swapped atomically, never broken.

The digit model and the cheque model both serve `<name>@<alias>` this way, so the logic lives
here once. The current model is one immutable snapshot; a swap replaces the reference in one
assignment, so a call that already took the old snapshot finishes on it and every later one
sees the new model. Nothing is swapped until the new version has loaded and passed its warm-up,
and any failure keeps the last good one.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from inkwell.errors import InkwellError, ModelNotFoundError
from inkwell.registry import Registry
from inkwell.settings import CoreSettings


class Versioned(Protocol):
    """What a served snapshot must tell: the registry version it was loaded from."""

    @property
    def version(self) -> str | None: ...


Served = TypeVar("Served", bound=Versioned)


@dataclass(frozen=True)
class RefreshOutcome:
    """What one look at the registry did: swapped to a version, kept the current one, or failed."""

    swapped: bool
    version: str | None
    error: InkwellError | None = None


class AliasFollowingModel(ABC, Generic[Served]):
    """A model served from `name@alias`: `load()` swaps when the alias moved, `refresh()` is
    `load()` for the poller (errors returned, never raised, so the last good model serves)."""

    # What the log and the load error call it ("model", "cheque model").
    kind = "model"
    # A missing version is logged quietly (an optional model not trained yet is not a fault).
    quiet_when_missing = False
    log = logging.getLogger("inkwell.service.model")

    def __init__(
        self, settings: CoreSettings, variant: str, *, pinned_version: str | None = None
    ) -> None:
        self.settings = settings
        self.variant = variant
        # serve exactly this version, whatever the aliases say (the variant still names it)
        self.pinned_version = pinned_version
        self._registry: Registry | None = None
        self._current: Served | None = None
        self._alias: str | None = None

    @property
    @abstractmethod
    def name(self) -> str:
        """The registered model name."""

    @abstractmethod
    def resolve(self, registry: Registry) -> tuple[str, str]:
        """(alias, version) to serve; ModelNotFoundError when no alias points anywhere."""

    def _target(self, registry: Registry) -> tuple[str, str]:
        """The pinned version when there is one, else what `resolve` finds."""
        if self.pinned_version is not None:
            return self.variant, registry.get_version(self.name, self.pinned_version).version
        return self.resolve(registry)

    @abstractmethod
    def load_version(self, registry: Registry, version: str) -> Served:
        """The snapshot of `version`, loaded but not yet served."""

    @abstractmethod
    def warm_up(self, candidate: Served) -> None:
        """Raise InkwellError unless `candidate` answers sensibly (called before the swap)."""

    @property
    def ready(self) -> bool:
        """Whether a model is loaded and serving."""
        return self._current is not None

    @property
    def version(self) -> str | None:
        """The served version, None before the first load."""
        current = self._current
        return current.version if current is not None else None

    @property
    def current(self) -> Served | None:
        """The served snapshot (take it once per request: it may be swapped at any time)."""
        return self._current

    @property
    def alias(self) -> str | None:
        """The alias the served version was found under."""
        return self._alias

    def load(self) -> RefreshOutcome:
        """Resolve the alias; load and swap when it points at a version we do not serve.

        Raises the registry's error (ModelNotFoundError, RegistryUnavailableError) on failure.
        """
        registry = self._registry_client()
        alias, version = self._target(registry)
        current = self._current
        if current is not None and current.version == version:
            self._alias = alias
            return RefreshOutcome(swapped=False, version=version)
        candidate = self.load_version(registry, version)
        self.warm_up(candidate)
        self._current, self._alias = candidate, alias  # the swap: reference assignments
        previous = current.version if current is not None else None
        self.log.info(
            "serving %s v%s (alias %s) as %s (was %s)",
            self.name,
            candidate.version,
            alias,
            self.variant,
            previous,
        )
        return RefreshOutcome(swapped=True, version=candidate.version)

    def refresh(self) -> RefreshOutcome:
        """`load()` that never raises: on failure the current model (if any) keeps serving."""
        try:
            return self.load()
        except ModelNotFoundError as exc:
            level = logging.DEBUG if self.quiet_when_missing else logging.WARNING
            self.log.log(level, "%s refresh found no version: %s", self.kind, exc.message)
            return RefreshOutcome(swapped=False, version=self.version, error=exc)
        except InkwellError as exc:
            self.log.warning(
                "%s refresh failed, keeping v%s: %s", self.kind, self.version, exc.message
            )
            return RefreshOutcome(swapped=False, version=self.version, error=exc)
        except Exception as exc:  # a broken artifact or an MLflow bug must not stop serving
            self.log.exception(
                "%s refresh failed unexpectedly, keeping v%s", self.kind, self.version
            )
            error = InkwellError(f"Loading the {self.kind} failed: {exc}", code="model_load_failed")
            return RefreshOutcome(swapped=False, version=self.version, error=error)

    def _registry_client(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.settings)
        return self._registry
