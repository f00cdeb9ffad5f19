"""The router process's one settings class (env prefix `INKWELL_ROUTER_`)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from inkwell.settings import ApiKey, CoreSettings, check_key
from inkwell.web.http import key_file

ADMIN_KEY_FILE = "router-admin.key"
# Comma-separated PromQL label matchers (no braces): name op "value", ...
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(rf"(?:{_MATCHER}(?:,{_MATCHER})*,?\s*)?")


class RouterSettings(CoreSettings):
    """Where the stable and canary services are, how traffic is split, how rollouts proceed."""

    model_config = SettingsConfigDict(
        env_prefix="INKWELL_ROUTER_", extra="ignore", populate_by_name=True
    )

    # ---- network -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    stable_url: str = "http://127.0.0.1:8001"
    canary_url: str = "http://127.0.0.1:8002"
    trainer_url: str | None = Field(
        default="http://127.0.0.1:8003",
        description="The trainer's admin API; the web page shows its status (None: hidden).",
    )
    public_url: str | None = Field(
        default=None,
        description="How other processes reach this router (default http://host:port); used "
        "to scrape its own /metrics when no Prometheus is configured.",
    )
    connect_timeout_s: float = Field(default=1.0, gt=0)
    stable_timeout_s: float = Field(default=30.0, gt=0)
    canary_timeout_s: float = Field(
        default=2.0, gt=0, description="A slower canary answer is abandoned and retried on stable."
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Proxies (comma-separated IPs or CIDRs, e.g. the Ingress's) whose "
        "X-Forwarded-For names the client; default none: every client's own "
        "X-Forwarded-For is ignored and the router sends the peer's address.",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_connections: int = Field(default=256, gt=0)
    upstream_client: Literal["fast", "httpx"] = Field(
        default="fast",
        description="HTTP client for forwarding: `fast` (asyncio + httptools, ~20x less CPU "
        "per request) or `httpx` (the reference implementation).",
    )

    # ---- split ---------------------------------------------------------------------------
    canary_weight: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Percent of users sent to the canary when the rollout controller is off.",
    )
    controller: bool = Field(default=True, description="Run the rollout controller.")
    cheque_rollout: bool = Field(
        default=False,
        description="Also roll out the cheque model's canary alias on its own (needs CONTROLLER); "
        "/v1/cheques/* is then split by that rollout instead of the digit one.",
    )
    shadow: bool = Field(
        default=False,
        description="Mirror requests answered by stable to the canary and measure agreement.",
    )
    shadow_fraction: float = Field(default=1.0, ge=0, le=1)
    user_cookie: str = "inkwell_user"
    assign_user_cookie: bool = Field(
        default=True, description="Give anonymous clients a random user cookie (stickiness)."
    )

    # ---- circuit breaker on the canary ------------------------------------------------------
    breaker_consecutive_failures: int = Field(default=5, ge=1)
    breaker_error_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_min_requests: int = Field(default=20, ge=1)
    breaker_window_s: float = Field(default=10.0, gt=0)
    breaker_cooldown_s: float = Field(default=5.0, gt=0)

    # ---- online accuracy -----------------------------------------------------------------
    served_memory: int = Field(
        default=100_000,
        ge=1,
        description="Served predictions remembered for delayed labels (per install with "
        "served_store=database, per replica with memory).",
    )
    served_store: Literal["database", "memory"] = Field(
        default="database",
        description="Where served predictions wait for their label: `database` (the rollout "
        "database, shared by every replica, so a label scores the prediction whichever "
        "replica served it) or `memory` (this process only; one replica).",
    )
    served_ttl_s: float = Field(
        default=86_400.0, gt=0, description="A served prediction unlabelled this long is dropped."
    )
    served_flush_s: float = Field(
        default=0.5,
        gt=0,
        description="How often a replica writes the predictions it served to the database.",
    )

    # ---- admin ---------------------------------------------------------------------------
    admin_api_key: ApiKey | None = Field(
        default=None,
        description="Key for the admin API (header X-API-Key); default: generated once and "
        "kept in <home>/router-admin.key.",
    )
    tester_api_key: ApiKey | None = Field(
        default=None,
        description="A second key that may send X-Inkwell-Variant overrides (header "
        "X-Inkwell-Override-Key) but not call the admin API; the admin key may too.",
    )
    admin_url: str | None = Field(
        default=None, description="Router the `inkwell rollout` commands call (default: local)."
    )

    # ---- rollout controller --------------------------------------------------------------
    prometheus_url: str | None = Field(
        default=None, description="Read analysis metrics with PromQL from this Prometheus."
    )
    prometheus_selector: str = Field(
        default="",
        description="PromQL label matchers scoping every query to this install, e.g. "
        '`namespace="inkwell"` (two installs on one Prometheus must not mix series).',
    )
    metrics_targets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="`/metrics` URLs scraped when no Prometheus is set (default: this router, "
        "stable and canary). Comma-separated in the environment.",
    )
    rollout_steps: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Canary weights (percent), one per analysis interval. Comma-separated.",
    )
    analysis_interval_s: float = Field(default=60.0, gt=0)
    tick_s: float | None = Field(
        default=None, gt=0, description="Controller loop period (default interval/4, ≤ 1 s)."
    )
    registry_poll_s: float = Field(default=5.0, gt=0)
    state_refresh_s: float = Field(default=0.5, gt=0)
    probe_interval_s: float = Field(
        default=1.0, gt=0, description="How often to ask each service which version it serves."
    )
    canary_capacity: Literal["off", "kubernetes"] = Field(
        default="off",
        description="Before each step, raise the canary HPA's minReplicas to the step's share "
        "of the ready pods and wait until the canary has them (`kubernetes`: through the API "
        "with the pod's service account; needs k8s/components/canary-capacity).",
    )
    kubernetes_api_url: str = Field(
        default="https://kubernetes.default.svc", description="The Kubernetes API server."
    )
    kubernetes_namespace: str | None = Field(
        default=None, description="Namespace of the Deployments (default: the pod's own)."
    )
    canary_deployment: str = Field(
        default="inkwell-service-canary",
        description="The canary Deployment and its HPA (same name).",
    )
    stable_deployment: str = Field(
        default="inkwell-service-stable", description="The stable Deployment."
    )
    canary_ready_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="A canary service that does not serve the new version this long after the "
        "rollout starts (a broken artifact) is rolled back.",
    )
    reload_timeout_s: float = Field(
        default=120.0, gt=0, description="How long promotion waits for stable to hot-reload."
    )

    # ---- analysis thresholds (canary compared against the stable baseline) ---------------
    min_requests: int = Field(
        default=20,
        ge=1,
        description="Canary requests needed before a step can pass or a request check fail.",
    )
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    error_rate_margin: float = Field(
        default=0.02, ge=0, le=1, description="Canary error rate may exceed stable's by this."
    )
    client_error_margin: float = Field(
        default=0.05, ge=0, le=1, description="Canary 4xx rate may exceed stable's by this."
    )
    latency_ratio: float = Field(default=1.5, ge=1, description="Canary p95 ≤ ratio × stable p95")
    latency_margin_ms: float = Field(default=25.0, ge=0, description="... + this margin.")
    max_p95_ms: float | None = Field(default=None, gt=0, description="Absolute p95 ceiling.")
    confidence_drop: float = Field(
        default=0.1, ge=0, le=1, description="Canary mean confidence ≥ stable's minus this."
    )
    min_agreement: float = Field(default=0.9, ge=0, le=1)
    min_shadow: int = Field(default=20, ge=1, description="Shadow pairs needed to judge agreement")
    accuracy_drop: float = Field(
        default=0.05, ge=0, le=1, description="Canary online accuracy ≥ stable's minus this."
    )
    min_labels: int = Field(default=20, ge=1, description="Labels per variant to judge accuracy")

    @field_validator("metrics_targets", mode="before")
    @classmethod
    def _split_targets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("prometheus_selector", mode="after")
    @classmethod
    def _valid_selector(cls, value: str) -> str:
        if not _SELECTOR.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a list of PromQL label matchers; write them without braces, "
                'e.g. namespace="inkwell",job=~"inkwell-.*"'
            )
        return value.strip().rstrip(",")

    @field_validator("rollout_steps", mode="before")
    @classmethod
    def _split_steps(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rollout_steps", mode="after")
    @classmethod
    def _valid_steps(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one rollout step, e.g. 5,25,50,100")
        if any(not 0 <= step <= 100 for step in value):
            raise ValueError("rollout steps are canary weights in percent (0-100)")
        if any(b < a for a, b in itertools.pairwise(value)):
            raise ValueError("rollout steps must not decrease (users never move back)")
        return value

    @field_validator(
        "stable_url", "canary_url", "trainer_url", "prometheus_url", "public_url", "admin_url"
    )
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. http://127.0.0.1:8001")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _distinct_backends(self) -> RouterSettings:
        if self.stable_url == self.canary_url:
            raise ValueError("stable_url and canary_url must differ")
        return self

    # ---- derived -------------------------------------------------------------------------
    @property
    def self_url(self) -> str:
        """How this router is reached by its own controller (scraping) and the CLI."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def resolved_admin_url(self) -> str:
        return self.admin_url or self.self_url

    @property
    def resolved_metrics_targets(self) -> list[str]:
        return self.metrics_targets or [
            f"{self.self_url}/metrics",
            f"{self.stable_url}/metrics",
            f"{self.canary_url}/metrics",
        ]

    @property
    def resolved_tick_s(self) -> float:
        return self.tick_s or min(1.0, self.analysis_interval_s / 4)

    def resolved_admin_key(self, *, create: bool = True) -> str | None:
        """The admin key: from settings, else from `<home>/router-admin.key` (made on first use
        with `create`, readable by the owner only)."""
        if self.admin_api_key is not None:
            return self.admin_api_key.get_secret_value()
        path = Path(self.home) / ADMIN_KEY_FILE
        if not path.exists():
            if not create:
                return None
            key_file(path)
        return _key_from_file(path)


def _key_from_file(path: Path) -> str | None:
    """The admin key kept in `path`; a hand-written weak one is refused like a setting."""
    key = path.read_text().strip()
    if not key:
        return None
    try:
        return check_key(key)
    except ValueError as exc:
        raise ValueError(f"the router's admin key in {path}: {exc}") from exc
