"""The served digit model: loads `inkwell-digits@<alias>`, follows the alias, swaps atomically.

No HTTP here: tensors in, probabilities out. The current model is one immutable `ServedModel`
snapshot, followed and swapped by `service.hotswap` (shared with the cheque model).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from inkwell.errors import InkwellError, ModelNotReadyError, ModelOutputError
from inkwell.model import DigitNet
from inkwell.registry import Registry
from inkwell.settings import CoreSettings
from service.hotswap import AliasFollowingModel

log = logging.getLogger("inkwell.service.model")


Forward = Callable[[torch.Tensor], torch.Tensor]
# How far the optimised module's probabilities may stray from the eager model's.
OPTIMIZED_TOLERANCE = 1e-4


def optimize_for_cpu(model: DigitNet) -> Forward:
    """A frozen TorchScript copy of `model` with oneDNN-fused convolutions, checked against it.

    On CPU it costs about a third of the eager model's CPU time per image at batch 16-32. The
    TorchScript API is deprecated in favour of `torch.compile`, which needs a C++ toolchain at
    run time and minutes of compilation on a small machine for every hot swap; this needs
    neither. Raises if the result disagrees with the eager model (the caller then serves eager).
    """
    model.eval()
    probe = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", FutureWarning)
        optimized: Forward = torch.jit.optimize_for_inference(torch.jit.trace(model, probe))
        for size in (1, 8, 3):  # let the JIT specialise before the first request arrives
            optimized(probe[:size])
        gap = (torch.softmax(optimized(probe), 1) - torch.softmax(model(probe), 1)).abs().max()
    if not float(gap) <= OPTIMIZED_TOLERANCE:
        raise RuntimeError(f"optimised model disagrees with eager by {float(gap):.2e}")
    return optimized


@dataclass(frozen=True)
class ServedModel:
    """One loaded version: the network, the forward pass actually served, and its origin."""

    model: DigitNet
    forward: Forward
    optimized: bool
    name: str
    version: str
    variant: str
    run_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Prediction:
    """Class probabilities (N, 10) for a batch, and the snapshot that computed them."""

    probabilities: np.ndarray
    served: ServedModel


class DigitModel(AliasFollowingModel[ServedModel]):
    """`inkwell-digits@<variant>` (or one pinned version) as a model contract: load(),
    predict(), ready, name, version.

    `refresh()` is what the poller calls: it resolves the alias and loads the version only if
    the alias moved; errors are returned, not raised, so the last good model keeps serving.
    """

    log = log

    def __init__(
        self,
        settings: CoreSettings,
        variant: str,
        *,
        optimize: bool = True,
        pinned_version: str | None = None,
    ) -> None:
        super().__init__(settings, variant, pinned_version=pinned_version)
        self.optimize = optimize

    @property
    def name(self) -> str:
        """The registered digit model name."""
        return self.settings.model_name

    def resolve(self, registry: Registry) -> tuple[str, str]:
        """The variant's own alias (a digit model never falls back to another alias)."""
        return self.variant, registry.get_version(self.name, self.variant).version

    def load_version(self, registry: Registry, version: str) -> ServedModel:
        """The version's network with the forward pass it will serve (optimised when it can)."""
        loaded = registry.load_digit_model(version, name=self.name)
        forward, optimized = self._forward_for(loaded.model)
        return ServedModel(
            model=loaded.model,
            forward=forward,
            optimized=optimized,
            name=loaded.info.name,
            version=loaded.info.version,
            variant=self.variant,
            run_id=loaded.info.run_id,
            meta=loaded.meta,
        )

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> Prediction:
        """(N, 28, 28) float32 in [0, 1], ink = 1 → probabilities (N, 10), all from one model."""
        served = self._current
        if served is None:
            raise ModelNotReadyError(
                f"No {self.name}@{self.variant} model is loaded yet. Wait for /readyz, or register "
                f"a model and give it the alias {self.variant!r}."
            )
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        logits = served.forward(batch.reshape(-1, 1, 28, 28))
        probabilities = torch.softmax(logits, dim=1).numpy()
        if not np.isfinite(probabilities).all():
            raise ModelOutputError(
                f"{self.name} v{served.version} ({self.variant}) returned NaN or infinite scores; "
                "no prediction was made. Roll back to the previous version or re-register the "
                "model; the input itself was valid."
            )
        return Prediction(probabilities, served)

    # ---- internals ----------------------------------------------------------------------
    def _forward_for(self, model: DigitNet) -> tuple[Forward, bool]:
        if not self.optimize:
            return model, False
        try:
            return optimize_for_cpu(model), True
        except Exception:  # any TorchScript/oneDNN problem: the eager model is always correct
            log.exception("could not optimise the model for CPU; serving it eagerly")
            return model, False

    @torch.inference_mode()
    def warm_up(self, candidate: ServedModel) -> None:
        """One forward pass before the swap, so a broken model never serves a request."""
        out = candidate.forward(torch.zeros(2, 1, 28, 28))
        if out.shape != (2, 10) or not torch.isfinite(out).all():
            raise InkwellError(
                f"{candidate.name} v{candidate.version} produced invalid output on warm-up.",
                code="model_load_failed",
            )
