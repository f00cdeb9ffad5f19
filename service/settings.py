"""The service's one settings class, read from `INKWELL_SERVICE_*` (plus the shared `INKWELL_*`)."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from inkwell.cheques.review import ChequeSampleRules
from inkwell.preprocessing import ImageLimits
from inkwell.settings import CANARY, STABLE, CoreSettings, check_key
from service.keys import KeyGrant, KeyRateLimiter, QuotaCounter, SharedDailyQuota, split_scope

Variant = Literal["stable", "canary"]  # the values of inkwell.settings.VARIANTS
DEFAULT_PORTS = {STABLE: 8001, CANARY: 8002}


def default_torch_threads() -> int:
    """Leave one core to the event loop (HTTP, decoding); at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def default_decode_threads() -> int:
    """One decode per core, at most four: more only adds memory, not throughput."""
    return max(1, min(4, os.cpu_count() or 1))


def _check_scoped_key(value: SecretStr) -> SecretStr:
    key, _ = split_scope(value.get_secret_value())
    check_key(key)
    return value


# `KEY` or `KEY:SCOPE` (see service.keys); the key part is refused at start-up when it is a
# placeholder or too short.
ScopedApiKey = Annotated[SecretStr, AfterValidator(_check_scoped_key)]


class ServiceSettings(CoreSettings):
    """Everything one service process needs; every default works on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="INKWELL_SERVICE_", extra="ignore", populate_by_name=True
    )

    variant: Variant = Field(
        default="stable", description="Which alias of the digit model this process serves."
    )
    model_version: str | None = Field(
        default=None,
        pattern=r"^[1-9][0-9]*$",
        description="Serve exactly this registry version of the digit model instead of "
        "following the variant's alias (pod-level canaries, reproducible rollbacks). The "
        "service refuses to start when the registry has no such version.",
    )
    cheque_model_version: str | None = Field(
        default=None,
        pattern=r"^[1-9][0-9]*$",
        description="Serve exactly this registry version of the cheque model instead of "
        "following the variant's alias (INKWELL_SERVICE_MODEL_VERSION's twin for cheques). The "
        "service refuses to start when the registry has no such version.",
    )
    host: str = "127.0.0.1"
    workers: int = Field(
        default=1,
        ge=1,
        description="Service processes sharing the port, each with its own model, "
        "micro-batcher and alias poller; metrics are summed across them.",
    )
    port: int | None = Field(
        default=None, ge=0, le=65535, description="Default 8001 (stable) or 8002 (canary)."
    )
    max_batch_images: int = Field(
        default=256, ge=1, description="Most images one batch request may carry."
    )
    microbatch_max_size: int = Field(
        default=32, ge=1, description="Most images one model forward pass combines (1 = naive)."
    )
    microbatch_max_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        description="How long the oldest queued request waits for company. Under load, "
        "batches form from what queues during a forward pass, so waiting only adds latency.",
    )
    max_queued_images: int = Field(
        default=2048,
        ge=1,
        description="Most images waiting for the model at once; more are refused with 503.",
    )
    request_deadline_ms: float = Field(
        default=5000.0,
        gt=0.0,
        description="A request that waited this long for the model gets 503, not a late answer.",
    )
    max_in_flight: int = Field(
        default=256,
        ge=1,
        description="Most requests processed at once (health checks and metrics not counted); "
        "more are refused with 503 and Retry-After.",
    )
    retry_after_s: int = Field(
        default=1, ge=0, description="Retry-After (seconds) on requests shed under overload."
    )
    decode_threads: int = Field(
        default_factory=default_decode_threads,
        ge=1,
        description="Most images decoded at once (bounds decoding memory); others wait.",
    )
    torch_threads: int = Field(default_factory=default_torch_threads, ge=1)
    optimize_model: bool = Field(
        default=True,
        description="Serve a frozen, oneDNN-fused TorchScript copy (checked against eager).",
    )
    api_keys: Annotated[list[ScopedApiKey], NoDecode] = Field(
        default_factory=list,
        description="Keys accepted in the X-API-Key header (comma-separated in the environment). "
        "KEY:alice|branch-7-* binds a key to the upload user ids it may use (exact ids, or "
        "prefixes ending in *); a plain KEY may upload as any user id.",
    )
    upload_rate_per_s: float = Field(
        default=10.0,
        ge=0.0,
        description="Uploads per second one key may send, on average (0: no limit); over it "
        "answers 429 with Retry-After. Counted per process.",
    )
    upload_burst: int = Field(
        default=200, ge=1, description="Uploads one key may send at once before the rate applies."
    )
    upload_daily_quota: int = Field(
        default=0,
        ge=0,
        description="Uploads one key may send per UTC day, counted in the sample database "
        "(shared by every worker and replica; 0: no quota).",
    )
    predict_requires_key: bool = Field(
        default=False, description="Predictions are open by default; true makes them keyed."
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(
        default=4_000_000,
        ge=1,
        description="Most pixels one image may declare (a digit or an amount field needs far "
        "fewer); checked from the header before any pixel is decoded.",
    )
    max_image_side: int = Field(default=4_000, ge=1, description="Longest side of one image.")
    max_batch_pixels: int = Field(
        default=16_000_000,
        ge=1,
        description="Most pixels the images of one batch request may declare together.",
    )
    max_sample_image_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Largest original image an upload may store with its sample (bytes); the "
        "trainer loads these, so they are kept small.",
    )
    store_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="After the sample database failed, uploads answer 503 at once for this "
        "long before the next call tries it again.",
    )
    poll_interval_s: float = Field(
        default=5.0, gt=0.0, description="How often the model alias is checked for a move."
    )
    access_log: bool = False
    cheques_enabled: bool = Field(
        default=True,
        description="Serve /v1/cheques/read with inkwell-cheques@<variant> (falling back to "
        "@stable) when such a model is registered.",
    )
    cheque_contradiction_min: int = Field(
        default=8,
        ge=1,
        description="Corrections of confident stable cheque readings a key makes before its "
        "contradiction rate can quarantine its uploads.",
    )
    cheque_contradiction_floor: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="A key contradicting confident readings more often than this (and than "
        "the factor below times other keys' median rate) has such uploads quarantined.",
    )
    cheque_contradiction_factor: float = Field(default=3.0, ge=1.0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def resolved_port(self) -> int:
        """The port to listen on: explicit, or the variant's embedded default."""
        return self.port if self.port is not None else DEFAULT_PORTS[self.variant]

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_image_pixels, max_side=self.max_image_side)

    @property
    def cheque_sample_rules(self) -> ChequeSampleRules:
        return ChequeSampleRules(
            min_corrections=self.cheque_contradiction_min,
            contradiction_floor=self.cheque_contradiction_floor,
            contradiction_factor=self.cheque_contradiction_factor,
        )

    @cached_property
    def key_grants(self) -> list[KeyGrant]:
        """The configured keys with the user ids each may upload for."""
        return [KeyGrant(*split_scope(known.get_secret_value())) for known in self.api_keys]

    def grant_for(self, key: str | None) -> KeyGrant | None:
        """The configured key `key` is (constant-time compare), or None."""
        from inkwell.web.http import matching_key

        grants = self.key_grants
        index = matching_key(key, [grant.key for grant in grants])
        return None if index is None else grants[index]

    def accepts_key(self, key: str | None) -> bool:
        """Whether `key` is one of the configured API keys."""
        return self.grant_for(key) is not None

    def upload_limiter(self) -> KeyRateLimiter:
        """A fresh per-key rate limiter for uploads, from the settings above."""
        return KeyRateLimiter(rate_per_s=self.upload_rate_per_s, burst=self.upload_burst)

    def upload_quota(self, take: QuotaCounter) -> SharedDailyQuota | None:
        """The daily upload quota per key, counted by `take` (None when there is no quota)."""
        if self.upload_daily_quota <= 0:
            return None
        return SharedDailyQuota(self.upload_daily_quota, take)
