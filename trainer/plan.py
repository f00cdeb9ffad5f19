"""The plan of a computed digit retrain: everything publishing needs, nothing to recompute.

A plan is stored as JSON in the job row when the job is marked `computed` and read back by
whoever publishes it (the same worker, or a restarted one). The JSON layout is the one the
trainer has always written (a flat object; `no_candidate` marks a job whose every sample was
quarantined), so a plan persisted by an earlier version still loads. A plan that cannot be read
(corrupt JSON, a missing or mistyped field, a newer `plan_version`) raises `UnreadablePlanError`
saying which field is wrong; the pipeline then closes the job unpublished and its samples stay
pending, so the next retrain plans them again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from inkwell.errors import DataError

PLAN_VERSION = 1  # plans written before the field existed have the same layout: version 1
PASSED = "passed"
REJECTED = "rejected"
ALL_QUARANTINED = "quarantined"  # a job whose every new sample was quarantined

T = TypeVar("T")


class UnreadablePlanError(DataError):
    """A stored job plan is corrupt, incomplete or from a newer trainer."""


@dataclass(frozen=True)
class CandidatePlan:
    """The candidate of a job: its files on disk and what its version is registered with."""

    model_config: dict[str, Any]
    weights: Path
    buffer: Path
    tags: dict[str, str]
    meta: dict[str, Any]


@dataclass(frozen=True)
class JobPlan:
    """Everything needed to publish and commit a computed job without recomputing anything."""

    job_id: int
    run_id: str
    parent_version: str
    passed: bool
    reasons: tuple[str, ...]
    trained: tuple[int, ...]  # sample ids marked trained (empty unless the gate passed)
    quarantined: dict[int, str]  # sample id → reason
    watermark: int
    counts: dict[str, int]  # quarantine reason → count, from validation
    metrics: dict[str, float]
    candidate: CandidatePlan | None  # None: every sample was quarantined, nothing was trained

    @property
    def outcome(self) -> str:
        """`passed`, `rejected` or `quarantined` (no candidate)."""
        if self.candidate is None:
            return ALL_QUARANTINED
        return PASSED if self.passed else REJECTED

    def to_dict(self) -> dict[str, Any]:
        """The plan as the JSON object stored in the job row."""
        data: dict[str, Any] = {
            "plan_version": PLAN_VERSION,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "parent_version": self.parent_version,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "trained": list(self.trained),
            "quarantined": {str(k): v for k, v in self.quarantined.items()},
            "watermark": self.watermark,
            "counts": dict(self.counts),
            "metrics": dict(self.metrics),
        }
        if self.candidate is None:
            data["no_candidate"] = True
        else:
            c = self.candidate
            data.update(
                model_config=c.model_config,
                weights=str(c.weights),
                buffer=str(c.buffer),
                tags=c.tags,
                meta=c.meta,
            )
        return data

    def to_json(self) -> str:
        """The plan as JSON (numpy scalars and paths in `meta` written as text, as always)."""
        return json.dumps(self.to_dict(), default=str)

    @classmethod
    def from_json(cls, text: str) -> JobPlan:
        """A plan read back from `to_json` (or an earlier JSON layout), checked field by field."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise UnreadablePlanError(f"The stored job plan is not valid JSON ({exc}).") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> JobPlan:
        """A plan from its JSON object; `UnreadablePlanError` names the first bad field."""
        if not isinstance(data, dict):
            raise UnreadablePlanError(
                f"The stored job plan is a JSON {type(data).__name__}, not an object."
            )
        version = _field(data, "plan_version", int, default=PLAN_VERSION)
        if version > PLAN_VERSION:
            raise UnreadablePlanError(
                f"The stored job plan has plan_version {version}; this trainer reads up to "
                f"{PLAN_VERSION}. Run the trainer version that wrote it, or let this one re-plan."
            )
        candidate = None
        if not _field(data, "no_candidate", bool, default=False):
            candidate = CandidatePlan(
                model_config=_field(data, "model_config", dict),
                weights=Path(_field(data, "weights", str)),
                buffer=Path(_field(data, "buffer", str)),
                tags=_mapping(data, "tags", str, str),
                meta=_field(data, "meta", dict),
            )
        return cls(
            job_id=_field(data, "job_id", int),
            run_id=_field(data, "run_id", str),
            parent_version=_field(data, "parent_version", str),
            passed=_field(data, "passed", bool),
            reasons=tuple(_items(data, "reasons", str)),
            trained=tuple(_items(data, "trained", int)),
            quarantined=_mapping(data, "quarantined", int, str),
            watermark=_field(data, "watermark", int),
            counts=_mapping(data, "counts", str, int),
            metrics=_mapping(data, "metrics", str, float),
            candidate=candidate,
        )


_MISSING = object()
K = TypeVar("K")


def _convert(value: Any, kind: type[T], where: str) -> T:
    """`value` as `kind`: an int is a fine float, a bool is never a number."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise UnreadablePlanError(
        f"The stored job plan's field {where!r} should be of type {kind.__name__}, "
        f"got {value!r:.80}."
    )


def _field(data: dict[str, Any], key: str, kind: type[T], default: Any = _MISSING) -> T:
    if key not in data:
        if default is _MISSING:
            raise UnreadablePlanError(
                f"The stored job plan has no {key!r} field: it is incomplete or not a plan."
            )
        return default
    return _convert(data[key], kind, key)


def _items(data: dict[str, Any], key: str, kind: type[T]) -> list[T]:
    return [_convert(v, kind, f"{key}[{i}]") for i, v in enumerate(_field(data, key, list))]


def _mapping(data: dict[str, Any], key: str, key_kind: type[K], kind: type[T]) -> dict[K, T]:
    """A JSON object; its keys are text, so integer keys (sample ids) are parsed from it."""
    out: dict[K, T] = {}
    for k, v in _field(data, key, dict).items():
        if key_kind is int:
            if not (isinstance(k, str) and k.lstrip("-").isdigit()):
                raise UnreadablePlanError(
                    f"The stored job plan's field {key!r} has key {k!r}, not a sample id."
                )
            out[int(k)] = _convert(v, kind, f"{key}[{k}]")  # type: ignore[index]
        else:
            out[k] = _convert(v, kind, f"{key}[{k}]")
    return out
