"""The trained models shipped in the package, and seeding an empty registry from them.

`digits/` and `cheques/` each hold a registry artifact folder (`weights.pt` + `model.json`) and a
`MODEL_CARD.md` (data, recipe, the command that reproduces it, accuracy, sha256). On first start
a registry with no version of a model gets the shipped one as version 1, alias `stable`, tagged
`source=shipped` and `sha256=<weights>`, in seconds and without MNIST or a network.

Several processes start together (`inkwell up` starts two services and the trainer), so seeding
is serialised by a file lock under `INKWELL_HOME`, and processes that do not share a home (a
remote tracking server) reconcile after registering: the lowest shipped version wins and any
later duplicate is deleted before it is ever aliased.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inkwell.registry import META_FILE, WEIGHTS_FILE, Registry, VersionInfo
from inkwell.settings import STABLE, CoreSettings

log = logging.getLogger("inkwell.shipped")

SHIPPED_DIR = Path(__file__).resolve().parent
SOURCE_TAG = "source"
SHIPPED = "shipped"
KINDS = ("digits", "cheques")


@dataclass(frozen=True)
class ShippedModel:
    """One model shipped in the package: its kind, folder and the weights' sha256."""

    kind: str
    folder: Path

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def meta(self) -> dict[str, object]:
        return dict(json.loads((self.folder / META_FILE).read_text()))

    @property
    def sha256(self) -> str:
        return sha256_of(self.weights)


def sha256_of(path: Path) -> str:
    """sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_model(kind: str, root: Path = SHIPPED_DIR) -> ShippedModel | None:
    """The shipped model of `kind` (digits or cheques), or None when the package has none."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = root / kind
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / META_FILE).is_file():
        return None
    return ShippedModel(kind, folder)


def registry_name(kind: str, settings: CoreSettings) -> str:
    """The registered model name a kind is seeded under (INKWELL_MODEL_NAME, ...)."""
    return settings.model_name if kind == "digits" else settings.cheque_model_name


@contextmanager
def _home_lock(settings: CoreSettings, name: str) -> Iterator[None]:
    """An exclusive lock shared by every process with this INKWELL_HOME (released on exit)."""
    folder = settings.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"seed-{name}.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _shipped_versions(registry: Registry, name: str) -> list[VersionInfo]:
    """Versions of `name` registered from the package, oldest first."""
    found = [v for v in registry.list_versions(name) if v.tags.get(SOURCE_TAG) == SHIPPED]
    return sorted(found, key=lambda v: int(v.version))


def seed_model(
    kind: str,
    settings: CoreSettings | None = None,
    *,
    registry: Registry | None = None,
    root: Path = SHIPPED_DIR,
) -> VersionInfo | None:
    """Register the shipped `kind` model as `stable` when the registry has no version of it.

    Returns the version it registered, or None when there was nothing to do (a version exists,
    or the package ships no such model)."""
    settings = settings or CoreSettings()
    shipped = shipped_model(kind, root)
    if shipped is None:
        return None
    registry = registry or Registry(settings)
    name = registry_name(kind, settings)
    with _home_lock(settings, name):
        if registry.list_versions(name):
            return None
        digest = shipped.sha256
        meta = {**shipped.meta, "source": SHIPPED, "sha256": digest}
        tags = {SOURCE_TAG: SHIPPED, "sha256": digest, "validation_status": "base"}
        with registry.start_run(f"shipped-{kind}", tags={"inkwell.kind": SHIPPED}) as run:
            mine = registry.register_files(
                name, run.info.run_id, {WEIGHTS_FILE: shipped.weights}, meta, tags=tags
            )
        first = next(iter(_shipped_versions(registry, name)), mine)
        if first.version != mine.version:  # another home seeded the same registry first
            registry.delete_version(name, mine.version)
            log.info(
                "%s v%s was seeded concurrently: v%s dropped", name, first.version, mine.version
            )
            return None
        if registry.find_version(name, STABLE) is None:
            registry.set_alias(name, STABLE, mine.version)
        log.info("seeded %s v%s (%s) from the shipped model", name, mine.version, digest[:12])
        return registry.get_version(name, mine.version)


def seed_registry(
    settings: CoreSettings | None = None,
    *,
    kinds: tuple[str, ...] = KINDS,
    registry: Registry | None = None,
    root: Path = SHIPPED_DIR,
) -> list[VersionInfo]:
    """Seed every model kind in `kinds` that the registry lacks; returns what was registered."""
    settings = settings or CoreSettings()
    registry = registry or Registry(settings)
    seeded = [seed_model(kind, settings, registry=registry, root=root) for kind in kinds]
    return [info for info in seeded if info is not None]
