"""The trainer process's one settings class (env prefix `INKWELL_TRAINER_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from inkwell.optim import OPTIMIZERS
from inkwell.settings import ApiKey, CoreSettings
from inkwell.training import AugmentPolicy

BufferPolicy = Literal["class_balanced", "reservoir"]


class TrainerSettings(CoreSettings):
    """Trigger, data validation, replay, HPO and gate settings of the trainer worker."""

    model_config = SettingsConfigDict(
        env_prefix="INKWELL_TRAINER_", extra="ignore", populate_by_name=True
    )

    # ---- trigger ---------------------------------------------------------------------------
    min_new_samples: int = Field(
        default=64, ge=1, description="Retrain once this many are pending."
    )
    new_user_min_samples: int = Field(
        default=16, ge=1, description="A new user's first batch is complete at this many samples."
    )
    debounce_seconds: float = Field(
        default=3.0, ge=0, description="Wait this long after the last upload before retraining."
    )
    max_wait_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Retrain anyway once the oldest pending sample is this old.",
    )
    poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the worker polls the store."
    )
    max_samples_per_job: int = Field(
        default=4096,
        ge=1,
        description="Most new samples one retrain loads, oldest first; the rest wait for the "
        "next job (bounds a job's memory whatever the backlog).",
    )
    max_image_bytes_per_job: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="Most bytes of uploaded images one retrain loads (it checks each decodes); "
        "a flood of large images waits for later jobs instead of filling the trainer's memory.",
    )

    # ---- crash safety and outages ----------------------------------------------------------
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A job's owner renews its lease every third of this; a job whose lease ran "
        "out is taken over by the next worker that polls.",
    )
    database_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="While the sample database is unreachable at start-up, try again this often "
        "(the trainer serves /healthz meanwhile and answers 503 on /readyz).",
    )
    publish_attempts: int = Field(
        default=5, ge=1, description="Tries to register a computed job while MLflow fails."
    )
    publish_backoff_seconds: float = Field(
        default=2.0, ge=0, description="Pause after the first failed try; doubles each time."
    )

    # ---- replay buffer and strategy --------------------------------------------------------
    buffer_policy: BufferPolicy = "class_balanced"
    buffer_capacity: int = Field(
        default=2000, ge=10, description="Replay-buffer capacity (images)."
    )
    replay_ratio: float = Field(
        default=0.75,
        ge=0.0,
        lt=1.0,
        description="Fraction of each mini-batch drawn from the buffer.",
    )
    distill_weight: float = Field(
        default=1.0, ge=0.0, description="Weight of distillation from the stable model on replay."
    )
    distill_temperature: float = Field(default=2.0, gt=0.0)
    ewc_lambda: float = Field(default=0.0, ge=0.0, description="EWC penalty weight (0 = off).")
    epochs: int = Field(default=12, ge=1, description="Epochs over the new samples per retrain.")
    batch_size: int = Field(default=16, ge=1, description="New samples per mini-batch.")
    min_steps: int = Field(default=40, ge=1, description="At least this many optimizer steps.")
    augment_policy: AugmentPolicy = Field(
        default="affine",
        description="Augmentation of each retrain's mini-batches (see inkwell.training).",
    )
    holdout_fraction: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="Share of new samples held out for the gate."
    )
    validation_fraction: float = Field(
        default=0.15, ge=0.0, lt=1.0, description="Share of new samples held out for HPO scoring."
    )
    seed: int = 0
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads (default: torch's)."
    )

    # ---- HPO -------------------------------------------------------------------------------
    hpo_trials: int = Field(default=5, ge=0, description="Optuna trials (0 = no search).")
    hpo_seconds: float = Field(default=25.0, gt=0, description="Wall-clock budget of the search.")
    optimizers: tuple[str, ...] = OPTIMIZERS
    default_optimizer: str = "adam"
    default_lr: float = 1e-3

    # ---- data validation -------------------------------------------------------------------
    min_ink_pixels: int = Field(default=12, ge=0, description="Fewer inked pixels means blank.")
    max_ink_fraction: float = Field(
        default=0.6, gt=0, le=1.0, description="More ink means a smudge."
    )
    ood_distance_factor: float = Field(
        default=2.0, gt=0, description="Embedding distance above factor x the reference 99th pct."
    )
    ood_max_entropy: float = Field(
        default=2.2,
        gt=0,
        description="Stable-model entropy (nats) above which an image is not digit-like.",
    )
    label_conflict_confidence: float = Field(
        default=0.999,
        gt=0.5,
        le=1.0,
        description="Stable model this sure of another class: suspicious.",
    )
    user_disagreement_floor: float = Field(
        default=0.35, ge=0, le=1, description="A user's disagreement rate never flagged below this."
    )
    user_disagreement_factor: float = Field(
        default=3.0,
        ge=1,
        description="Flag a user above factor x the other users' disagreement rate.",
    )
    user_disagreement_min_samples: int = Field(default=8, ge=1)

    # ---- gate ------------------------------------------------------------------------------
    gate_max_old_drop_pp: float = Field(
        default=0.3, ge=0, description="MNIST test drop allowed (pp)."
    )
    gate_max_new_drop_pp: float = Field(
        default=0.0, ge=0, description="Held-out new-sample accuracy drop allowed (pp)."
    )
    gate_max_class_drop_pp: float = Field(
        default=1.0, ge=0, description="Per-class drop allowed (pp)."
    )
    gate_max_drift_pp: float | None = Field(
        default=0.3,
        ge=0,
        description="MNIST test drop allowed vs the lineage's base version (pp); unset: off.",
    )
    gate_min_holdout: int = Field(
        default=5,
        ge=0,
        description="Fewer held-out new samples than this skips the new-sample check.",
    )

    # ---- cheque reader retrains (issue 17) --------------------------------------------------
    cheque_min_new_fields: int = Field(
        default=100,
        ge=1,
        description="Retrain the cheque reader once this many reviewed "
        "fields wait past the last cheque job.",
    )
    cheque_holdout_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Share of reviewed fields held out (by image "
        "hash, so the same across jobs) for the cheque gate and recalibration; never trained on.",
    )
    cheque_min_holdout: int = Field(
        default=20, ge=1, description="Fewer held-out reviewed fields: the gate cannot judge."
    )
    cheque_steps: int = Field(
        default=150,
        ge=1,
        description="Fine-tuning steps of one cheque job, its time budget: ~1 s a step at batch "
        "32 on 2 shared cores, so a job with its gate stays under 5 min.",
    )
    cheque_batch_size: int = Field(default=32, ge=2, description="Fields per cheque batch.")
    cheque_lr: float = Field(default=5e-4, gt=0, description="Cheque fine-tuning peak LR.")
    cheque_distill_weight: float = Field(
        default=30.0,
        ge=0,
        description="Weight of the distillation on the replayed synthetic fields (learning "
        "without forgetting); 0 turns it off. 30 kept the whole 8-batch stream within 0.5 pp "
        "of the base on the synthetic test (docs/benchmarks.md).",
    )
    cheque_replay_max: int = Field(
        default=2000, ge=1, description="Most reviewed fields one cheque job trains on (newest)."
    )
    cheque_review_rate: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Share of held-out fields the recalibrated review threshold sends to review.",
    )
    cheque_max_synthetic_drop_pp: float = Field(
        default=0.5, ge=0, description="Drop allowed on the synthetic MNIST-test amounts (pp)."
    )
    cheque_max_base_synthetic_drop_pp: float | None = Field(
        default=0.5,
        ge=0,
        description="Synthetic MNIST-test drop allowed vs the lineage's base version (pp), so "
        "forgetting cannot add up over jobs; unset: off.",
    )
    cheque_distill_from: Literal["base", "stable"] = Field(
        default="base",
        description="Whose reading the replayed synthetic fields are distilled to: the lineage's "
        "base version (drift cannot add up over jobs) or stable.",
    )
    cheque_synthetic_test_fields: int = Field(
        default=2000, ge=1, description="Synthetic MNIST-test amounts the cheque gate reads."
    )
    cheque_digits: bool = Field(
        default=True,
        description="Cut the digits of accepted reviewed cheque fields into digit samples "
        "(user = the field's, key cheque:<id>:<position>) before the digit trigger is checked.",
    )
    cheque_digits_max_fields: int = Field(
        default=200, ge=1, description="Most reviewed fields cut into digits per poll."
    )
    cheque_digits_min_confidence: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="A cut digit whose aligned frames give it a lower peak posterior is skipped.",
    )

    # ---- admin API -------------------------------------------------------------------------
    admin_api_key: ApiKey | None = Field(
        default=None, description="Key for POST /v1/retrain (header X-API-Key); unset disables it."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8003, ge=0, le=65535)

    @model_validator(mode="after")
    def _check(self) -> TrainerSettings:
        unknown = [name for name in self.optimizers if name not in OPTIMIZERS]
        if unknown or not self.optimizers:
            raise ValueError(
                f"INKWELL_TRAINER_OPTIMIZERS has {unknown or 'nothing'}; choose from {OPTIMIZERS}"
            )
        if self.default_optimizer not in OPTIMIZERS:
            raise ValueError(f"default_optimizer must be one of {OPTIMIZERS}")
        if self.holdout_fraction + self.validation_fraction >= 0.9:
            raise ValueError("holdout_fraction + validation_fraction must stay below 0.9")
        return self

    @property
    def state_dir(self) -> Path:
        """Where the trainer keeps its working files (buffers, candidate checkpoints)."""
        return self.home / "trainer"
