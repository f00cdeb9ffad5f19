"""Rollout state in the database, shared by every router replica.

One row per model name holds the current phase, weight and versions, with an integer `version`
column for optimistic concurrency: a replica changes the row only if nobody changed it since it
read it (`UPDATE ... WHERE version = :read`), so replicas never apply two transitions from the
same state. Every transition also appends a row to `rollout_events` (the audit trail).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, Integer, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from inkwell.store import create_schema, make_engine


class Phase(StrEnum):
    IDLE = "idle"
    CANARY = "canary"  # stepping through the weights
    PAUSED = "paused"  # weight held, no automatic decision
    PROMOTING = "promoting"  # stable alias moved; waiting for the stable service to reload
    ROLLING_BACK = "rolling_back"  # weight 0; removing the canary alias
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


PHASES = tuple(str(p) for p in Phase)
TERMINAL = (Phase.IDLE, Phase.PROMOTED, Phase.ROLLED_BACK)
# Phases in which users in the canary's share are answered by the canary.
SERVING = (Phase.CANARY, Phase.PAUSED, Phase.PROMOTING)


class Base(DeclarativeBase):
    """The router's own tables (kept apart from the sample store's)."""


class RolloutRow(Base):
    __tablename__ = "rollout_state"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    phase: Mapped[str] = mapped_column(String(16), default=Phase.IDLE.value)
    rollout_id: Mapped[int] = mapped_column(Integer, default=0)
    canary_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    stable_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step_index: Mapped[int] = mapped_column(Integer, default=-1)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[float] = mapped_column(Float, default=0.0)
    step_started_at: Mapped[float] = mapped_column(Float, default=0.0)
    canary_ready_at: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")
    analysis: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class RolloutEvent(Base):
    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    rollout_id: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)
    from_phase: Mapped[str] = mapped_column(String(16))
    to_phase: Mapped[str] = mapped_column(String(16))
    weight: Mapped[float] = mapped_column(Float)
    canary_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    analysis: Mapped[str] = mapped_column(Text, default="")


class CanaryWeightRow(Base):
    """The split an admin (or an Argo step) set while the rollout controller is off.

    Its own table, not the rollout row: that row's weight is the controller's, and a router
    switched between the two modes must not read one as the other."""

    __tablename__ = "canary_weight"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    weight: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(Float)


# `from_phase`/`to_phase` of the audit events that record a manual weight change.
MANUAL = "manual"


@dataclass(frozen=True)
class RolloutState:
    """A consistent read of the rollout row (times are wall-clock epoch seconds)."""

    model_name: str
    version: int = 0
    phase: Phase = Phase.IDLE
    rollout_id: int = 0
    canary_version: str | None = None
    stable_version: str | None = None
    step_index: int = -1
    weight: float = 0.0
    started_at: float = 0.0
    step_started_at: float = 0.0
    canary_ready_at: float = 0.0  # when the canary service first served the version (0: not yet)
    reason: str = ""
    analysis: dict[str, Any] | None = None
    updated_at: float = 0.0

    @property
    def serving_canary(self) -> bool:
        """Whether users in the canary's share are answered by the canary now."""
        return self.phase in SERVING and self.canary_version is not None

    def evolve(self, **changes: Any) -> RolloutState:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = str(self.phase)
        return data


def _to_state(row: RolloutRow) -> RolloutState:
    return RolloutState(
        model_name=row.model_name,
        version=row.version,
        phase=Phase(row.phase),
        rollout_id=row.rollout_id,
        canary_version=row.canary_version,
        stable_version=row.stable_version,
        step_index=row.step_index,
        weight=row.weight,
        started_at=row.started_at,
        step_started_at=row.step_started_at,
        canary_ready_at=row.canary_ready_at,
        reason=row.reason,
        analysis=json.loads(row.analysis) if row.analysis else None,
        updated_at=row.updated_at,
    )


@dataclass(frozen=True)
class Event:
    at: float
    rollout_id: int
    from_phase: str
    to_phase: str
    weight: float
    canary_version: str | None
    actor: str
    reason: str


class RolloutStore:
    """Reads and compare-and-swaps the rollout state (same database as the sample store)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        create_schema(self.engine, Base.metadata)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def load(self, model_name: str) -> RolloutState:
        """The current state (an idle row is created the first time)."""
        with self._session() as session:
            row = session.get(RolloutRow, model_name)
            if row is not None:
                return _to_state(row)
        try:
            with self._session() as session:
                session.add(RolloutRow(model_name=model_name, version=0, updated_at=time.time()))
        except IntegrityError:
            pass  # another replica created it first
        with self._session() as session:
            row = session.get(RolloutRow, model_name)
            if row is None:
                raise RuntimeError(f"rollout state row for {model_name!r} vanished")
            return _to_state(row)

    def swap(self, read: RolloutState, new: RolloutState, *, actor: str) -> RolloutState | None:
        """Write `new` if the row is still at `read.version`; None when another replica won."""
        now = time.time()
        values = {
            "version": read.version + 1,
            "phase": new.phase.value,
            "rollout_id": new.rollout_id,
            "canary_version": new.canary_version,
            "stable_version": new.stable_version,
            "step_index": new.step_index,
            "weight": new.weight,
            "started_at": new.started_at,
            "step_started_at": new.step_started_at,
            "canary_ready_at": new.canary_ready_at,
            "reason": new.reason,
            "analysis": json.dumps(new.analysis) if new.analysis is not None else "",
            "updated_at": now,
        }
        with self._session() as session:
            result = session.execute(
                update(RolloutRow)
                .where(RolloutRow.model_name == read.model_name)
                .where(RolloutRow.version == read.version)
                .values(**values)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
            if new.phase != read.phase or new.weight != read.weight or new.reason != read.reason:
                session.add(
                    RolloutEvent(
                        model_name=read.model_name,
                        rollout_id=new.rollout_id,
                        at=now,
                        from_phase=read.phase.value,
                        to_phase=new.phase.value,
                        weight=new.weight,
                        canary_version=new.canary_version,
                        actor=actor,
                        reason=new.reason,
                        analysis=values["analysis"],
                    )
                )
        return new.evolve(version=read.version + 1, updated_at=now)

    def manual_weight(self, model_name: str) -> float | None:
        """The weight last set through the admin API, None when none was."""
        with self._session() as session:
            row = session.get(CanaryWeightRow, model_name)
            return row.weight if row is not None else None

    def set_manual_weight(self, model_name: str, weight: float, *, actor: str) -> float | None:
        """Store `weight` for every replica (and restarts); returns the weight it replaced.

        The change is also an audit event, so `/admin/rollout/events` shows who moved it."""
        try:
            return self._set_manual_weight(model_name, weight, actor)
        except IntegrityError:  # another replica inserted the first row meanwhile
            return self._set_manual_weight(model_name, weight, actor)

    def _set_manual_weight(self, model_name: str, weight: float, actor: str) -> float | None:
        now = time.time()
        with self._session() as session:
            row = session.get(CanaryWeightRow, model_name, with_for_update=True)
            previous = row.weight if row is not None else None
            if row is None:
                row = CanaryWeightRow(
                    model_name=model_name, weight=weight, actor=actor, updated_at=now
                )
                session.add(row)
            else:
                row.weight, row.actor, row.updated_at = weight, actor, now
            was = "unset" if previous is None else f"{previous:g} %"
            session.add(
                RolloutEvent(
                    model_name=model_name,
                    rollout_id=0,
                    at=now,
                    from_phase=MANUAL,
                    to_phase=MANUAL,
                    weight=weight,
                    canary_version=None,
                    actor=actor,
                    reason=f"canary weight set to {weight:g} % (was {was})",
                    analysis="",
                )
            )
        return previous

    def events(self, model_name: str, limit: int = 50) -> list[Event]:
        """The most recent transitions, newest first."""
        with self._session() as session:
            rows = session.scalars(
                select(RolloutEvent)
                .where(RolloutEvent.model_name == model_name)
                .order_by(RolloutEvent.id.desc())
                .limit(limit)
            )
            return [
                Event(
                    at=r.at,
                    rollout_id=r.rollout_id,
                    from_phase=r.from_phase,
                    to_phase=r.to_phase,
                    weight=r.weight,
                    canary_version=r.canary_version,
                    actor=r.actor,
                    reason=r.reason,
                )
                for r in rows
            ]

    def dispose(self) -> None:
        self.engine.dispose()
