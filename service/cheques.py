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
from inkwell.settings import STABLE
from service.hotswap import AliasFollowingModel

log = logging.getLogger("inkwell.service.cheques")


class ChequeModel(AliasFollowingModel[ChequeReader]):
    """Model contract for cheque amounts: load(), read(), ready, name, version, alias."""

    kind = "cheque model"
    quiet_when_missing = True
    log = log

    @property
    def name(self) -> str:
        """The registered cheque model name."""
        return self.settings.cheque_model_name

    def resolve(self, registry: Registry) -> tuple[str, str]:
        """The variant's alias, else stable's: a digit canary never leaves cheques unserved."""
        aliases = [self.variant] if self.variant == STABLE else [self.variant, STABLE]
        for alias in aliases:
            info = registry.find_version(self.name, alias)
            if info is not None:
                return alias, info.version
        raise ModelNotFoundError(
            f"No {self.name} version has the alias {' or '.join(aliases)!s}. Train one with "
            "`inkwell cheques train` (the first version becomes stable)."
        )

    def load_version(self, registry: Registry, version: str) -> ChequeReader:
        """The version's reader (weights and calibration), loaded but not yet served."""
        return ChequeReader.load(version, registry=registry)

    def read(self, data: bytes, *, layout: str, decoder: str, limits: ImageLimits) -> ChequeReading:
        """Read one image's courtesy amount with the current reader (CPU-bound: call off-loop)."""
        reader = self._current
        if reader is None:
            raise ModelNotReadyError(
                f"No {self.name} model is loaded. Train one with `inkwell cheques train` (the "
                "first version becomes stable); the service picks it up within one poll interval."
            )
        return reader.read(data, layout=layout, decoder=decoder, limits=limits)

    def warm_up(self, candidate: ChequeReader) -> None:
        """One forward pass before the swap, so a broken model never serves a request."""
        logits = candidate.field_logits([np.zeros((candidate.model.config.height, 64), np.float32)])
        if logits[0].shape != (16, 11) or not np.isfinite(logits[0]).all():
            raise InkwellError(
                f"{candidate.name} v{candidate.version} produced invalid output on warm-up.",
                code="model_load_failed",
            )
