"""The trainer's durable state, in the same database as the samples.

- `trainer_state`: per model name, the watermark (highest sample id a finished retrain has
  processed). It moves only in `commit_job`, in the same transaction that marks the samples
  trained or quarantined, and only after the version is registered: a crash at any moment
  leaves the watermark and the samples' states consistent with each other.
- `trainer_jobs`: one row per retrain. `running` while computing, `computed` once everything
  needed to publish it (weights, buffer, tags, sample verdicts) is on disk, then `done`;
  `interrupted` when a restart finds a running job whose process died. A partial unique index
  allows at most one active (`running`/`computed`) job per model: one retrain at a time, even
  across processes.

Ownership is a lease: the job row names its `owner` (host, pid and a random part) and a
`lease_until` time that the owner's heartbeat pushes forward while the job runs. Another worker
takes a job over only once the lease has expired (or, on the same host, once the owning process
is gone), claiming it with one conditional UPDATE so two workers can never both win; every
later write of the old owner is fenced by the same owner check and fails.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Index,
    Integer,
    String,
    Text,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import Mapped, defer, mapped_column

from inkwell.errors import ConflictError
from inkwell.store import (
    ACCEPTED,
    QUARANTINED,
    TRAINED,
    Base,
    Sample,
    SampleStore,
    create_schema,
)

RUNNING = "running"
COMPUTED = "computed"
DONE = "done"
INTERRUPTED = "interrupted"
FAILED = "failed"
ACTIVE = (RUNNING, COMPUTED)
log = logging.getLogger("inkwell.trainer")


def _now() -> datetime:
    return datetime.now(UTC)


class TrainerStateRow(Base):
    """Watermark per model name."""

    __tablename__ = "trainer_state"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    watermark: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TrainerJob(Base):
    """One retrain: who runs it, how far it got, and (once computed) its full plan."""

    __tablename__ = "trainer_jobs"
    __table_args__ = (
        Index(
            "uq_trainer_one_active_job",
            "model_name",
            unique=True,
            sqlite_where=text("status IN ('running', 'computed')"),
            postgresql_where=text("status IN ('running', 'computed')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    phase: Mapped[str] = mapped_column(String(32), default="starting")
    trigger: Mapped[str] = mapped_column(String(64))
    parent_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    plan: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(160), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass(frozen=True)
class JobView:
    """A detached snapshot of a job row."""

    id: int
    status: str
    phase: str
    trigger: str
    parent_version: str | None
    run_id: str | None
    version: str | None
    outcome: str | None
    plan: str | None  # the computed job's plan as stored (JSON; `trainer.plan` reads it)
    error: str | None
    host: str
    pid: int
    owner: str | None
    lease_until: datetime | None
    started_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: TrainerJob) -> JobView:
        return cls(
            id=row.id,
            status=row.status,
            phase=row.phase,
            trigger=row.trigger,
            parent_version=row.parent_version,
            run_id=row.run_id,
            version=row.version,
            outcome=row.outcome,
            plan=row.plan,
            error=row.error,
            host=row.host,
            pid=row.pid,
            owner=row.owner,
            lease_until=_aware(row.lease_until) if row.lease_until else None,
            started_at=row.started_at,
            updated_at=row.updated_at,
        )

    def public(self) -> dict[str, Any]:
        """What the admin API shows (no plan internals)."""
        return {
            "job_id": self.id,
            "status": self.status,
            "phase": self.phase,
            "trigger": self.trigger,
            "parent_version": self.parent_version,
            "version": self.version,
            "outcome": self.outcome,
            "run_id": self.run_id,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC timestamps; make every timestamp comparable."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def process_alive(host: str, pid: int) -> bool:
    """Whether a process on this host exists; another host's processes cannot be checked."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_expired(job: JobView, lease_seconds: float, now: datetime | None = None) -> bool:
    """Whether nobody holds the job any more: its lease ran out without a heartbeat.

    Rows written before leases existed carry none; their last update stands in for it.
    """
    now = now or _now()
    until = job.lease_until or _aware(job.updated_at) + timedelta(seconds=lease_seconds)
    return _aware(until) <= now


def _add_missing_columns(engine: Engine, table: Any) -> None:
    """Add columns a newer release defined to a table an older one created (no data moves)."""
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    for column in table.columns:
        if column.name in present:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
                )
        except DatabaseError:  # another process added it first
            present = {c["name"] for c in inspect(engine).get_columns(table.name)}
            if column.name not in present:
                raise


class TrainerState:
    """Watermark and job bookkeeping on top of a `SampleStore`'s database."""

    def __init__(self, store: SampleStore, model_name: str, *, lease_seconds: float = 60.0) -> None:
        self.store = store
        self.model_name = model_name
        self.lease_seconds = lease_seconds
        # unique per instance: a second worker in the same process is another owner
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        create_schema(
            store.engine,
            Base.metadata,
            [TrainerStateRow.__table__, TrainerJob.__table__],  # type: ignore[list-item]
        )
        _add_missing_columns(store.engine, TrainerJob.__table__)

    def _lease_end(self) -> datetime:
        return _now() + timedelta(seconds=self.lease_seconds)

    def watermark(self) -> int:
        with self.store.session() as session:
            row = session.get(TrainerStateRow, self.model_name)
            return int(row.watermark) if row is not None else 0

    def begin_job(self, trigger: str, parent_version: str | None) -> JobView:
        """Insert a running job; ConflictError if another retrain is active."""
        try:
            with self.store.session() as session:
                row = TrainerJob(
                    model_name=self.model_name,
                    status=RUNNING,
                    trigger=trigger,
                    parent_version=parent_version,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    owner=self.owner,
                    lease_until=self._lease_end(),
                )
                session.add(row)
                session.flush()
                return JobView.of(row)
        except IntegrityError as exc:
            active = self.active_job()
            raise ConflictError(
                f"A retrain is already in progress (job {active.id if active else '?'}, "
                f"phase {active.phase if active else '?'}); wait for it to finish "
                "(GET /v1/status) and try again."
            ) from exc

    def set_phase(self, job_id: int, phase: str, **fields: Any) -> None:
        with self.store.session() as session:
            session.execute(
                update(TrainerJob)
                .where(TrainerJob.id == job_id)
                .values(phase=phase, updated_at=_now(), **fields)
            )

    def _owned_update(self, job_id: int, **values: Any) -> bool:
        """Update the job only while this instance owns it; False when the lease was lost."""
        with self.store.session() as session:
            result = session.execute(
                update(TrainerJob)
                .where(
                    TrainerJob.id == job_id,
                    TrainerJob.owner == self.owner,
                    TrainerJob.status.in_(ACTIVE),
                )
                .values(updated_at=_now(), **values)
            )
            return bool(getattr(result, "rowcount", 0))

    def renew(self, job_id: int) -> bool:
        """Push this owner's lease forward; False when the job is no longer ours or active."""
        return self._owned_update(job_id, lease_until=self._lease_end())

    def claim(self, job: JobView) -> bool:
        """Take over a job whose owner is gone: one conditional UPDATE, so one claimant wins."""
        with self.store.session() as session:
            owner = (
                TrainerJob.owner.is_(None) if job.owner is None else TrainerJob.owner == job.owner
            )
            result = session.execute(
                update(TrainerJob)
                .where(TrainerJob.id == job.id, TrainerJob.status == job.status, owner)
                .values(
                    owner=self.owner,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    lease_until=self._lease_end(),
                    updated_at=_now(),
                )
            )
            return bool(getattr(result, "rowcount", 0))

    @contextmanager
    def heartbeat(self, job_id: int) -> Iterator[threading.Event]:
        """Renew the lease every third of its length while the block runs.

        Yields an event that is set when the lease was lost (another worker took the job over).
        """
        stop, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_seconds / 3):
                try:
                    if not self.renew(job_id):
                        lost.set()
                        log.error("job %s: lease lost; another worker owns it now", job_id)
                        return
                except Exception:  # a database hiccup: the next beat tries again
                    log.exception("job %s: lease renewal failed", job_id)

        thread = threading.Thread(target=beat, name=f"lease-{job_id}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()

    def mark_computed(self, job_id: int, plan: str) -> None:
        """Persist the full plan (JSON text); from here a restart can finish the job without
        recomputing."""
        if not self._owned_update(job_id, phase="computed", status=COMPUTED, plan=plan):
            raise ConflictError(
                f"Retrain job {job_id} was taken over by another worker (its lease expired); "
                "this worker's result is discarded. Raise INKWELL_TRAINER_LEASE_SECONDS if the "
                "trainer is too busy to renew it in time."
            )

    def end_job(self, job_id: int, status: str, *, error: str | None = None) -> None:
        """Close a job that will not be committed (interrupted, failed or nothing to do)."""
        self.set_phase(job_id, status, status=status, error=error)

    def commit_job(
        self,
        job_id: int,
        *,
        version: str | None,
        outcome: str,
        trained: Iterable[int],
        quarantined: Mapping[int, str],
        watermark: int,
    ) -> None:
        """One transaction: sample states, the watermark and the job's end."""
        trained = list(trained)
        with self.store.session() as session:
            job = session.get(TrainerJob, job_id)
            if job is None or job.status == DONE:
                return
            if job.owner not in (None, self.owner):
                raise ConflictError(
                    f"Retrain job {job_id} is owned by {job.owner}, not this worker; it will "
                    "commit the job itself."
                )
            if trained:
                session.execute(
                    update(Sample)
                    .where(Sample.id.in_(trained))
                    .values(state=TRAINED, reason=None, trained_version=version)
                )
            by_reason: dict[str, list[int]] = {}
            for sample_id, reason in quarantined.items():
                by_reason.setdefault(reason, []).append(int(sample_id))
            for reason, ids in by_reason.items():
                session.execute(
                    update(Sample)
                    .where(Sample.id.in_(ids))
                    .values(state=QUARANTINED, reason=reason, trained_version=version)
                )
            row = session.get(TrainerStateRow, self.model_name)
            if row is None:
                row = TrainerStateRow(model_name=self.model_name, watermark=0)
                session.add(row)
            row.watermark = max(int(row.watermark or 0), int(watermark))
            row.updated_at = _now()
            job.status, job.phase, job.version, job.outcome = DONE, "done", version, outcome
            job.updated_at = _now()

    def active_job(self) -> JobView | None:
        with self.store.session() as session:
            row = session.scalar(
                select(TrainerJob)
                .where(TrainerJob.model_name == self.model_name, TrainerJob.status.in_(ACTIVE))
                .order_by(TrainerJob.id.desc())
            )
            return JobView.of(row) if row is not None else None

    def last_job(self) -> JobView | None:
        with self.store.session() as session:
            row = session.scalar(
                select(TrainerJob)
                .where(TrainerJob.model_name == self.model_name)
                .order_by(TrainerJob.id.desc())
            )
            return JobView.of(row) if row is not None else None

    def new_samples(
        self,
        snapshot: int,
        lineage: Iterable[str],
        limit: int | None = None,
        max_image_bytes: int | None = None,
    ) -> list[Sample]:
        """What a retrain from a stable model learns: accepted samples up to `snapshot`, plus
        samples trained into candidates outside the stable model's lineage (never promoted, or
        rolled back), oldest first; at most `limit`, and at most `max_image_bytes` of uploaded
        images (always at least one sample); the rest wait for the next job."""
        lineage = list(lineage)
        learnable = (Sample.state == ACCEPTED) | (
            (Sample.state == TRAINED)
            & (Sample.trained_version.is_(None) | Sample.trained_version.notin_(lineage))
        )
        with self.store.session() as session:
            if max_image_bytes is not None:
                sizes = session.execute(
                    select(Sample.id, func.length(Sample.image))
                    .where(Sample.id <= snapshot, learnable)
                    .order_by(Sample.id)
                    .limit(limit)
                ).all()
                total, taken = 0, 0
                for _, size in sizes:
                    total += int(size or 0)
                    if taken and total > max_image_bytes:
                        break
                    taken += 1
                limit = taken
            rows = session.scalars(
                select(Sample)
                .where(Sample.id <= snapshot, learnable)
                .order_by(Sample.id)
                .limit(limit)
            )
            return list(rows)

    def lineage_samples(self, lineage: Iterable[str]) -> list[Sample]:
        """Samples already learned by the stable model or its ancestors (pixels, not the
        original upload bytes: validation and transfer metrics need only the 28x28 pixels)."""
        with self.store.session() as session:
            rows = session.scalars(
                select(Sample)
                .options(defer(Sample.image, raiseload=True))
                .where(Sample.state == TRAINED, Sample.trained_version.in_(list(lineage)))
                .order_by(Sample.id)
            )
            return list(rows)

    def pending(self) -> list[tuple[int, str, datetime]]:
        """(id, user, created_at) of every accepted sample waiting for a retrain."""
        with self.store.session() as session:
            rows = session.execute(
                select(Sample.id, Sample.user_id, Sample.created_at)
                .where(Sample.state == ACCEPTED)
                .order_by(Sample.id)
            ).all()
            return [(int(i), str(u), c) for i, u, c in rows]

    def known_users(self, users: Iterable[str]) -> set[str]:
        """Which of `users` already have trained samples (they are not new users)."""
        with self.store.session() as session:
            rows = session.scalars(
                select(Sample.user_id)
                .where(Sample.user_id.in_(list(users)), Sample.state == TRAINED)
                .distinct()
            )
            return set(rows)

    def job(self, job_id: int) -> JobView | None:
        with self.store.session() as session:
            row = session.get(TrainerJob, job_id)
            return JobView.of(row) if row is not None else None
