"""The served cheque-amount model: `inkwell-cheques@<variant>`, followed and swapped atomically.

No HTTP here. The stable process serves `inkwell-cheques@stable`; the canary process serves
`inkwell-cheques@canary` when that alias exists and otherwise `@stable`, so a digit-model
canary never leaves cheque reading without a model. The cheque model is optional: while none
is registered the service runs, `/v1/cheques/read` answers 503 `model_not_ready`, and the
poller keeps looking (quietly: a missing cheque model is not a fault).
"""

from __future__ import annotations

import logging

import numpy as np

from inkwell.cheques.reader import ChequeReader, ChequeReading
from inkwell.errors import InkwellError, ModelNotFoundError, ModelNotReadyError
from inkwell.preprocessing import ImageLimits
from inkwell.registry import Registry
from inkwell.settings import STABLE, CoreSettings
from service.model import RefreshOutcome

log = logging.getLogger("inkwell.service.cheques")


class ChequeModel:
    """Model contract for cheque amounts: load(), read(), ready, name, version, alias."""

    def __init__(self, settings: CoreSettings, variant: str) -> None:
        self.settings = settings
        self.variant = variant
        self._registry: Registry | None = None
        self._current: ChequeReader | None = None
        self._alias: str | None = None

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def name(self) -> str:
        return self.settings.cheque_model_name

    @property
    def version(self) -> str | None:
        current = self._current
        return current.version if current is not None else None

    @property
    def alias(self) -> str | None:
        """The alias the served version was found under (the variant, or stable)."""
        return self._alias

    def _resolve(self, registry: Registry) -> tuple[str, str]:
        aliases = [self.variant] if self.variant == STABLE else [self.variant, STABLE]
        for alias in aliases:
            info = registry.find_version(self.name, alias)
            if info is not None:
                return alias, info.version
        raise ModelNotFoundError(
            f"No {self.name} version has the alias {' or '.join(aliases)!s}. Train one with "
            "`inkwell cheques train` (the first version becomes stable)."
        )

    def load(self) -> RefreshOutcome:
        """Resolve the alias; load and swap when it points at a version we do not serve."""
        registry = self._registry_client()
        alias, version = self._resolve(registry)
        current = self._current
        if current is not None and current.version == version:
            self._alias = alias
            return RefreshOutcome(swapped=False, version=version)
        candidate = ChequeReader.load(version, registry=registry)
        self._warm_up(candidate)
        self._current, self._alias = candidate, alias  # the swap: reference assignments
        log.info("serving %s v%s (alias %s) for cheques", self.name, version, alias)
        return RefreshOutcome(swapped=True, version=version)

    def refresh(self) -> RefreshOutcome:
        """`load()` that never raises; the current reader (if any) keeps serving on failure."""
        try:
            return self.load()
        except ModelNotFoundError as exc:
            log.debug("no cheque model yet: %s", exc.message)
            return RefreshOutcome(swapped=False, version=self.version, error=exc)
        except InkwellError as exc:
            log.warning("cheque model refresh failed, keeping v%s: %s", self.version, exc.message)
            return RefreshOutcome(swapped=False, version=self.version, error=exc)
        except Exception as exc:  # a broken artifact must not stop the service
            log.exception("cheque model refresh failed unexpectedly, keeping v%s", self.version)
            error = InkwellError(
                f"Loading the cheque model failed: {exc}", code="model_load_failed"
            )
            return RefreshOutcome(swapped=False, version=self.version, error=error)

    def read(self, data: bytes, *, layout: str, decoder: str, limits: ImageLimits) -> ChequeReading:
        """Read one image's courtesy amount with the current reader (CPU-bound: call off-loop)."""
        reader = self._current
        if reader is None:
            raise ModelNotReadyError(
                f"No {self.name} model is loaded. Train one with `inkwell cheques train` (the "
                "first version becomes stable); the service picks it up within one poll interval."
            )
        return reader.read(data, layout=layout, decoder=decoder, limits=limits)

    def _registry_client(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.settings)
        return self._registry

    @staticmethod
    def _warm_up(candidate: ChequeReader) -> None:
        """One forward pass before the swap, so a broken model never serves a request."""
        logits = candidate.field_logits([np.zeros((candidate.model.config.height, 64), np.float32)])
        if logits[0].shape != (16, 11) or not np.isfinite(logits[0]).all():
            raise InkwellError(
                f"{candidate.name} v{candidate.version} produced invalid output on warm-up.",
                code="model_load_failed",
            )
