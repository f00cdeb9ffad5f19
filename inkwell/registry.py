"""The only module that talks to MLflow: tracking runs, registering versions, aliases, loading.

A registered version's artifacts are a folder `model/` with `weights.pt` (a `state_dict`, loaded
with `weights_only=True`) and `model.json` (architecture config, preprocessing, metadata), so
loading never unpickles code. Promotion uses aliases (`stable`, `canary`), never stages.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from inkwell.errors import ModelNotFoundError, RegistryUnavailableError
from inkwell.model import DigitNet, ModelConfig
from inkwell.preprocessing import PREPROCESSING_VERSION
from inkwell.settings import CoreSettings

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
ARTIFACT_DIR = "model"


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version as the rest of Inkwell sees it."""

    name: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LoadedDigitModel:
    """A digit model ready for inference, with where it came from."""

    model: DigitNet
    info: VersionInfo
    meta: dict[str, Any]


def save_digit_model(
    model: DigitNet, folder: Path, meta: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write `weights.pt` (state_dict) and `model.json` into `folder`: a digit model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, weights)
    full_meta = {
        "kind": "digits",
        "architecture": "DigitNet",
        "config": model.config.to_dict(),
        "preprocessing": PREPROCESSING_VERSION,
        "input": {"shape": [1, 28, 28], "range": [0.0, 1.0], "ink": "high"},
        **dict(meta or {}),
    }
    (folder / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str))
    return {WEIGHTS_FILE: weights, META_FILE: folder / META_FILE}


def load_digit_dir(folder: Path) -> tuple[DigitNet, dict[str, Any]]:
    """An eval-mode `DigitNet` and its metadata from a digit model folder."""
    missing = [name for name in (WEIGHTS_FILE, META_FILE) if not (folder / name).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"{folder} holds no digit model: {' and '.join(missing)} missing. Point at a "
            f"folder holding {WEIGHTS_FILE} and {META_FILE} (the registry's model/ folder, a "
            "benchmark's digits-model/), or make one with `inkwell train --out DIR`."
        )
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("kind", "digits") != "digits":
        raise ModelNotFoundError(
            f"{folder} holds a {meta.get('kind')!r} model, not a digit model. For cheque "
            "models use `inkwell cheques eval --model-dir`."
        )
    model = DigitNet(ModelConfig.from_dict(meta.get("config", {})))
    model.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model.eval()
    return model, meta


class Registry:
    """MLflow tracking + model registry bound to one tracking URI."""

    def __init__(self, settings: CoreSettings | None = None) -> None:
        self.settings = settings or CoreSettings()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri = self.settings.resolved_tracking_uri
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # ---- tracking -------------------------------------------------------------------------
    def experiment_id(self, name: str | None = None) -> str:
        """Get or create the experiment; embedded stores keep artifacts under `home`."""
        name = name or self.settings.experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if not self.tracking_uri.startswith(("http://", "https://", "databricks")):
            self.settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self.settings.artifact_root.as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except MlflowException:  # created concurrently by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    @contextmanager
    def start_run(
        self,
        run_name: str,
        *,
        nested: bool = False,
        tags: Mapping[str, str] | None = None,
        experiment: str | None = None,
    ) -> Iterator[Run]:
        """Start a (possibly nested) MLflow run in the Inkwell experiment."""
        with mlflow.start_run(
            run_name=run_name,
            experiment_id=self.experiment_id(experiment),
            nested=nested,
            tags=dict(tags or {}),
        ) as run:
            yield run

    def terminate_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run left open (e.g. by a killed process): FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def run_status(self, run_id: str) -> str | None:
        """A run's status (RUNNING, FINISHED, ...), or None when it does not exist.

        Any other failure raises RegistryUnavailableError: "unknown" is not "absent".
        """
        try:
            return str(self.client.get_run(run_id).info.status)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryUnavailableError(f"MLflow registry error: {exc}") from exc
        except Exception as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"MLflow at {self.tracking_uri} is unreachable ({exc}). Check INKWELL_TRACKING_URI."
        )

    @staticmethod
    def log_params(params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: v for k, v in params.items() if v is not None})

    @staticmethod
    def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    @staticmethod
    def log_dict(data: Any, artifact_file: str) -> None:
        mlflow.log_dict(data, artifact_file)

    @staticmethod
    def log_artifact(path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    @staticmethod
    def set_tags(tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    # ---- registry -------------------------------------------------------------------------
    def register_files(
        self,
        name: str,
        run_id: str,
        files: Mapping[str, Path],
        meta: Mapping[str, Any],
        *,
        tags: Mapping[str, str] | None = None,
        aliases: tuple[str, ...] = (),
    ) -> VersionInfo:
        """Log `files` + `model.json` under the run's `model/` and register them as a version."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / ARTIFACT_DIR
            folder.mkdir()
            for target, path in files.items():
                (folder / target).write_bytes(Path(path).read_bytes())
            (folder / META_FILE).write_text(json.dumps(dict(meta), indent=2, default=str))
            self.client.log_artifacts(run_id, str(folder), ARTIFACT_DIR)
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        version = self.client.create_model_version(
            name, source=f"{artifact_uri}/{ARTIFACT_DIR}", run_id=run_id, tags=dict(tags or {})
        )
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, version.version)
        return self.get_version(name, str(version.version))

    def register_digit_model(
        self,
        model: DigitNet,
        run_id: str,
        *,
        meta: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        aliases: tuple[str, ...] = (),
        name: str | None = None,
        extra_files: Mapping[str, Path] | None = None,
    ) -> VersionInfo:
        """Register a trained `DigitNet` (state_dict + config + preprocessing) as a new version.

        `extra_files` (name in `model/` -> local path) travel with the weights, e.g. the
        trainer's replay buffer.
        """
        with tempfile.TemporaryDirectory() as tmp:
            written = save_digit_model(model, Path(tmp), meta)
            full_meta = json.loads(written[META_FILE].read_text())
            return self.register_files(
                name or self.settings.model_name,
                run_id,
                {WEIGHTS_FILE: written[WEIGHTS_FILE], **dict(extra_files or {})},
                full_meta,
                tags=tags,
                aliases=aliases,
            )

    def _wrap(self, name: str, mv: Any) -> VersionInfo:
        return VersionInfo(
            name=name,
            version=str(mv.version),
            run_id=mv.run_id,
            source=str(mv.source),
            aliases=tuple(getattr(mv, "aliases", ()) or ()),
            tags=dict(mv.tags or {}),
        )

    def get_version(self, name: str, ref: str) -> VersionInfo:
        """Resolve `ref` (an alias such as `stable`, or a version number) to a version."""
        try:
            if ref.isdigit():
                mv = self.client.get_model_version(name, ref)
            else:
                mv = self.client.get_model_version_by_alias(name, ref)
        except MlflowException as exc:  # RestException too: a 500 is not "no such version"
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise ModelNotFoundError(
                    f"Model {name!r} has no version {ref!r}. Train one with `inkwell train`, or "
                    "check the alias/version (see `inkwell models`)."
                ) from exc
            raise RegistryUnavailableError(f"MLflow registry error: {exc}") from exc
        except Exception as exc:  # network errors from a remote tracking server
            raise self._unreachable(exc) from exc
        return self._wrap(name, mv)

    def find_version(self, name: str, ref: str) -> VersionInfo | None:
        """Like `get_version`, but None when it does not exist."""
        try:
            return self.get_version(name, ref)
        except ModelNotFoundError:
            return None

    def lineage(self, info: VersionInfo) -> list[str]:
        """The version and its ancestors via `parent_version` tags, newest first (the last one
        is the base its lineage started from)."""
        chain: list[str] = []
        current: VersionInfo | None = info
        while current is not None and current.version not in chain:
            chain.append(current.version)
            parent = current.tags.get("parent_version", "")
            current = self.find_version(info.name, parent) if parent.isdigit() else None
        return chain

    def list_versions(self, name: str) -> list[VersionInfo]:
        """All versions of `name`, newest first (none when the model is not registered).

        A registry that cannot be read raises RegistryUnavailableError: crash recovery decides
        whether to register a job's version from this list, so an error must never read as
        "no versions".
        """
        try:
            found = self.client.search_model_versions(f"name='{name}'")
            # search results carry no aliases; fetch each version to get them
            versions = [
                self._wrap(name, self.client.get_model_version(name, mv.version)) for mv in found
            ]
        except MlflowException as exc:
            raise RegistryUnavailableError(
                f"Could not list the versions of {name!r}: {exc}. Check that MLflow at "
                f"{self.tracking_uri} answers."
            ) from exc
        except Exception as exc:
            raise self._unreachable(exc) from exc
        return sorted(versions, key=lambda v: int(v.version), reverse=True)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    def delete_version(self, name: str, version: str) -> None:
        """Delete one version (its artifacts stay with the run)."""
        self.client.delete_model_version(name, version)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    def download(self, info: VersionInfo, dst: Path | None = None) -> Path:
        """Download a version's `model/` folder; returns the local folder."""
        target = dst or Path(tempfile.mkdtemp(prefix=f"inkwell-{info.name}-v{info.version}-"))
        for attempt in range(3):
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=info.source, dst_path=str(target), tracking_uri=self.tracking_uri
                )
                return Path(local)
            except Exception as exc:
                if attempt == 2:
                    raise RegistryUnavailableError(
                        f"Could not download {info.name} v{info.version} from {info.source}: {exc}"
                    ) from exc
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def load_digit_model(self, ref: str = "stable", name: str | None = None) -> LoadedDigitModel:
        """Load `inkwell-digits@ref` (alias or version) as an eval-mode `DigitNet`."""
        name = name or self.settings.model_name
        info = self.get_version(name, ref)
        with tempfile.TemporaryDirectory() as tmp:
            model, meta = load_digit_dir(self.download(info, Path(tmp)))
        return LoadedDigitModel(model=model, info=info, meta=meta)


# ---- access control on an MLflow server with `--app-name basic-auth` ---------------------------
READ = "READ"
EDIT = "EDIT"
MANAGE = "MANAGE"
EXPERIMENT = "experiment"
REGISTERED_MODEL = "registered_model"


@dataclass(frozen=True)
class RegistryUser:
    """One MLflow user and what it may do: `experiments`/`models` are READ, EDIT or MANAGE."""

    username: str
    password: str
    experiments: str
    models: str


class RegistryAdmin:
    """The admin side of MLflow's basic-auth app: users, grants, the resources they protect.

    Takes its credentials explicitly (never from `MLFLOW_TRACKING_*`), so a process can
    provision users while its own registry client runs as someone else.
    """

    def __init__(self, tracking_uri: str, username: str, password: str) -> None:
        from mlflow.utils.rest_utils import MlflowHostCreds

        if not tracking_uri.startswith(("http://", "https://")):
            raise ValueError(
                f"MLflow users live on a tracking server, not in {tracking_uri!r}: set "
                "INKWELL_TRACKING_URI to the server's http(s) URL."
            )
        self.tracking_uri = tracking_uri
        self._creds = MlflowHostCreds(tracking_uri, username=username, password=password)

    def _call(
        self, method: str, endpoint: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        args: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
        try:
            response = http_request(self._creds, endpoint, method, max_retries=2, **args)
        except Exception as exc:
            if isinstance(exc, MlflowException):
                raise
            raise RegistryUnavailableError(
                f"MLflow at {self.tracking_uri} is unreachable ({exc})."
            ) from exc
        verify_rest_response(response, endpoint)
        return dict(response.json()) if response.content else {}

    def _exists(self, method: str, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            return self._call(method, endpoint, body)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def ensure_experiment(self, name: str) -> str:
        """The experiment's id, creating it when missing."""
        found = self._exists(
            "GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": name}
        )
        if found is not None:
            return str(found["experiment"]["experiment_id"])
        created = self._call("POST", "/api/2.0/mlflow/experiments/create", {"name": name})
        return str(created["experiment_id"])

    def ensure_registered_model(self, name: str) -> None:
        """Create the registered model when missing (grants need it to exist)."""
        if self._exists("GET", "/api/2.0/mlflow/registered-models/get", {"name": name}) is None:
            self._call("POST", "/api/2.0/mlflow/registered-models/create", {"name": name})

    def ensure_user(self, username: str, password: str) -> bool:
        """Create the user, or set its password to `password`; True when it was created."""
        if self._exists("GET", "/api/2.0/mlflow/users/get", {"username": username}) is None:
            self._call(
                "POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password}
            )
            return True
        self._call(
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            {"username": username, "password": password},
        )
        return False

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """Give `username` exactly `permission` on one resource (replacing an earlier grant)."""
        body = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        try:
            self._call(
                "POST",
                "/api/3.0/mlflow/users/permissions/grant",
                {**body, "permission": permission},
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            self._call("POST", "/api/3.0/mlflow/users/permissions/revoke", body)
            self._call(
                "POST",
                "/api/3.0/mlflow/users/permissions/grant",
                {**body, "permission": permission},
            )

    def provision(
        self, users: list[RegistryUser], experiments: list[str], models: list[str]
    ) -> list[str]:
        """Make the server hold exactly these users and grants; safe to run again (one line each).

        Creates the experiments and registered models first: MLflow grants name an existing
        experiment id or model name.
        """
        ids = [self.ensure_experiment(name) for name in experiments]
        for name in models:
            self.ensure_registered_model(name)
        lines = []
        for user in users:
            created = self.ensure_user(user.username, user.password)
            for experiment_id in ids:
                self.grant(user.username, EXPERIMENT, experiment_id, user.experiments)
            for name in models:
                self.grant(user.username, REGISTERED_MODEL, name, user.models)
            lines.append(
                f"{user.username}: {'created' if created else 'password set'}; "
                f"{user.experiments} on experiments {', '.join(experiments)}; "
                f"{user.models} on models {', '.join(models)}"
            )
        return lines
