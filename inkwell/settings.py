"""Settings shared by every Inkwell process.

Each process has exactly one settings class (`CoreSettings` for the CLI, and one subclass per
component with its own env prefix). The fields defined here are shared by all of them and are
read from the same `INKWELL_*` variables whatever the component's prefix, so one environment
configures the whole system. Every default works on one machine with no server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STABLE = "stable"
CANARY = "canary"
VARIANTS = (STABLE, CANARY)


MIN_KEY_LENGTH = 16
# The values example files ship with (`change-me...`) and their usual spellings.
_PLACEHOLDER = re.compile(r"^(change|replace)[-_ ]?me|^your[-_ ]")
KEY_ADVICE = 'make one with: python3 -c "import secrets; print(secrets.token_urlsafe(32))"'


def check_key(key: str) -> str:
    """A key as configured, or ValueError if it is a placeholder or shorter than 16 chars."""
    if _PLACEHOLDER.search(key.strip().lower()):
        raise ValueError(
            f"this key is a placeholder ({key[:12]!r}...), not a secret: anyone who read the "
            f"example file knows it. Replace it with a random key; {KEY_ADVICE}"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"this key has {len(key)} characters; a key needs at least {MIN_KEY_LENGTH} so it "
            f"cannot be guessed. {KEY_ADVICE[0].upper()}{KEY_ADVICE[1:]}"
        )
    return key


def _check_secret(value: SecretStr) -> SecretStr:
    check_key(value.get_secret_value())
    return value


# Every API key a component reads from its settings: refused at start-up when it is a
# placeholder or too short.
ApiKey = Annotated[SecretStr, AfterValidator(_check_secret)]


def _shared(name: str, *extra: str) -> AliasChoices:
    """Env aliases for a field shared by all components (prefix-independent)."""
    return AliasChoices(f"INKWELL_{name}", *extra)


def default_home() -> Path:
    """Where embedded state lives by default (registry, artifacts, sample store)."""
    return Path.home() / ".inkwell"


class CoreSettings(BaseSettings):
    """Settings every process reads: where data, state and the model registry live."""

    # hide_input_in_errors: a refused key must not be printed in the start-up error
    model_config = SettingsConfigDict(
        env_prefix="INKWELL_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    home: Path = Field(default_factory=default_home, validation_alias=_shared("HOME"))
    data_dir: Path | None = Field(
        default=None,
        validation_alias=_shared("DATA_DIR"),
        description="Directory holding the four MNIST IDX .gz files.",
    )
    allow_download: bool = Field(
        default=True,
        validation_alias=_shared("ALLOW_DOWNLOAD"),
        description="Download MNIST with torchvision into <home>/data/mnist when no local copy "
        "is found (needs internet); false never touches the network.",
    )
    mnist_mirrors: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_shared("MNIST_MIRRORS"),
        description="Base URLs to download the MNIST .gz files from (comma-separated); "
        "default torchvision's mirrors.",
    )
    seed_shipped: bool = Field(
        default=True,
        validation_alias=_shared("SEED_SHIPPED"),
        description="Register the models shipped in the package as version 1 (alias stable) "
        "when the registry has no version of them.",
    )
    tracking_uri: str | None = Field(
        default=None,
        # Not MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() exports that variable, so a
        # second settings object in the same process would silently follow the first registry.
        validation_alias=_shared("TRACKING_URI"),
        description="MLflow tracking URI; default sqlite:///<home>/mlflow.db.",
    )
    # MLflow's own variables: its client sends them as HTTP basic auth to a server run with
    # `--app-name basic-auth` (docs/deploy.md). Read here only so a placeholder or a short
    # password stops the process at start instead of failing every registry call later.
    tracking_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_USERNAME"),
        description="MLflow user this process acts as (HTTP basic auth).",
    )
    tracking_password: ApiKey | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_PASSWORD"),
        description="That user's password (at least 16 characters, no placeholder).",
    )
    experiment: str = Field(default="inkwell", validation_alias=_shared("EXPERIMENT"))
    model_name: str = Field(default="inkwell-digits", validation_alias=_shared("MODEL_NAME"))
    cheque_model_name: str = Field(
        default="inkwell-cheques", validation_alias=_shared("CHEQUE_MODEL_NAME")
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=_shared("DATABASE_URL"),
        description="SQLAlchemy URL of the sample store; default sqlite:///<home>/inkwell.db.",
    )
    database_connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        validation_alias=_shared("DATABASE_CONNECT_TIMEOUT_S"),
        description="Give up connecting to the database (PostgreSQL) after this long.",
    )
    database_statement_timeout_s: float = Field(
        default=15.0,
        gt=0,
        validation_alias=_shared("DATABASE_STATEMENT_TIMEOUT_S"),
        description="Cancel one statement after this long (PostgreSQL statement_timeout; "
        "SQLite: how long to wait for a lock held by another process).",
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets `field` (its shared alias, else prefix + name)."""
        info = cls.model_fields[field]
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            return alias.choices[0]
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @model_validator(mode="after")
    def _tracking_credentials_in_pairs(self) -> CoreSettings:
        if (self.tracking_username is None) != (self.tracking_password is None):
            missing = "PASSWORD" if self.tracking_password is None else "USERNAME"
            raise ValueError(
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD go together: set "
                f"MLFLOW_TRACKING_{missing} as well, or neither for a server without auth."
            )
        return self

    @field_validator("mnist_mirrors", mode="before")
    @classmethod
    def _split_mirrors(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_tracking_uri(self) -> str:
        """The MLflow tracking URI, defaulting to a sqlite file under `home`."""
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Artifact store used with the embedded (sqlite) tracking URI."""
        return self.home / "mlartifacts"

    @property
    def resolved_database_url(self) -> str:
        """The sample-store URL, defaulting to a sqlite file under `home`."""
        return self.database_url or f"sqlite:///{self.home / 'inkwell.db'}"


class RegistryAccessSettings(CoreSettings):
    """`inkwell mlflow server` and `inkwell mlflow init-users`: MLflow's users and passwords.

    The admin credentials are MLflow's own variables, so the server (which creates the admin
    on its first start) and the init step read the same Secret. Each component then runs as
    one of three users: the trainer (EDIT), the router's rollout controller (MANAGE on the
    registered models only: it moves and removes aliases) and the services (READ).
    """

    model_config = SettingsConfigDict(
        env_prefix="INKWELL_MLFLOW_",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    admin_username: str = Field(
        default="admin", validation_alias=AliasChoices("MLFLOW_AUTH_ADMIN_USERNAME")
    )
    admin_password: ApiKey | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_AUTH_ADMIN_PASSWORD")
    )
    # MLflow's own variable: the server signs its CSRF tokens with it; every replica needs the
    # same one.
    flask_secret_key: ApiKey | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_FLASK_SERVER_SECRET_KEY")
    )
    auth_database_uri: str | None = Field(
        default=None,
        description="SQLAlchemy URL of MLflow's user store; default sqlite:///<home>/mlflow-auth.db.",
    )
    auth_cache_ttl_s: int = Field(
        default=60,
        ge=0,
        description="Seconds a checked username and password stay trusted by one server process "
        "(MLflow's auth_cache_ttl_seconds). Checking a password costs ~0.1 s of CPU (scrypt) and "
        "every component polls the registry, so 0 (check every request) keeps a core busy on "
        "passwords. A password changed through MLflow's API takes effect at once on the server "
        "process that took the change; on its other workers and replicas within this time.",
    )
    trainer_username: str = "inkwell-trainer"
    trainer_password: ApiKey | None = None
    router_username: str = "inkwell-router"
    router_password: ApiKey | None = None
    service_username: str = "inkwell-service"
    service_password: ApiKey | None = None

    @property
    def resolved_auth_database_uri(self) -> str:
        """Where MLflow keeps users and grants, defaulting to a sqlite file under `home`."""
        return self.auth_database_uri or f"sqlite:///{self.home / 'mlflow-auth.db'}"
