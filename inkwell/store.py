"""Durable store of labelled samples (SQLAlchemy): SQLite in WAL mode with full sync by
default, PostgreSQL by URL. A sample is committed before the API acknowledges it.

Sample ids are monotonically increasing integers, so the trainer's watermark is simply "the
highest sample id already trained on".
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from inkwell.errors import IdempotencyKeyReusedError, StoreUnavailableError
from inkwell.settings import CoreSettings

# what a database that is down, unreachable, or locked past its timeout raises
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)

ACCEPTED = "accepted"
QUARANTINED = "quarantined"
TRAINED = "trained"
STATES = (ACCEPTED, QUARANTINED, TRAINED)


class Base(DeclarativeBase):
    """Declarative base shared by every table Inkwell keeps in its database."""


class Sample(Base):
    """One labelled upload: the original bytes, the MNIST-format pixels, and its state."""

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key", name="uq_user_idempotency"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    label: Mapped[int] = mapped_column(Integer)
    image: Mapped[bytes] = mapped_column(LargeBinary)
    pixels: Mapped[bytes] = mapped_column(LargeBinary)  # 28*28 uint8, ink = 255
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=ACCEPTED, index=True)
    reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trained_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


@dataclass(frozen=True)
class AddResult:
    """The stored sample's id and whether this call created it (False: duplicate/replay)."""

    sample_id: int
    created: bool
    duplicate_of: int | None = None


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def make_engine(
    url: str, *, connect_timeout_s: float = 5.0, statement_timeout_s: float = 15.0
) -> Engine:
    """An engine for `url` that gives up in bounded time when the database is down or busy.

    SQLite gets WAL, full sync and a busy timeout of `statement_timeout_s`; PostgreSQL gets a
    connect timeout, a server-side `statement_timeout`, and a pool that checks connections
    before use and waits at most `connect_timeout_s` for a free one.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": statement_timeout_s}
        )
        _sqlite_pragmas(engine, int(statement_timeout_s * 1000))
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args = {
            "connect_timeout": max(1, math.ceil(connect_timeout_s)),
            "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}",
        }
    return create_engine(
        url, pool_pre_ping=True, pool_timeout=connect_timeout_s, connect_args=connect_args
    )


def create_schema(
    engine: Engine,
    metadata: MetaData,
    tables: list[Table] | None = None,
    *,
    attempts: int = 5,
) -> None:
    """`metadata.create_all` that tolerates other processes creating the same tables at once.

    The service variants, the trainer and the router share one database and start together;
    `create_all` checks for each table and then creates it, so two starters can both find it
    missing and the slower one fails with "table ... already exists". Checking again settles it.
    """
    for attempt in range(1, attempts + 1):
        try:
            metadata.create_all(engine, tables=tables)
            return
        except DatabaseError:
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)


def content_hash(data: bytes) -> str:
    """sha256 of the uploaded bytes (duplicate detection)."""
    return hashlib.sha256(data).hexdigest()


class SampleStore:
    """Labelled samples in a SQL database."""

    def __init__(
        self, url: str, *, connect_timeout_s: float = 5.0, statement_timeout_s: float = 15.0
    ) -> None:
        self.url = url
        try:
            self.engine = make_engine(
                url, connect_timeout_s=connect_timeout_s, statement_timeout_s=statement_timeout_s
            )
            with self.engine.connect():  # a dead server fails once, not per schema retry
                pass
            create_schema(self.engine, Base.metadata)
        except (*UNAVAILABLE, OSError) as exc:
            raise self._unavailable(exc) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def open(cls, settings: CoreSettings) -> SampleStore:
        """The store `settings` point at, with their connect and statement timeouts."""
        return cls(
            settings.resolved_database_url,
            connect_timeout_s=settings.database_connect_timeout_s,
            statement_timeout_s=settings.database_statement_timeout_s,
        )

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        where = self.url.split("@")[-1]  # never echo a password
        return StoreUnavailableError(
            f"The sample database ({where}) is unavailable or busy: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Nothing was stored; retry later."
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error.

        A database that is down, unreachable or locked past its timeout raises
        StoreUnavailableError (503), never a bare driver error.
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    def add(
        self,
        *,
        user_id: str,
        label: int,
        image: bytes,
        pixels: bytes,
        idempotency_key: str | None = None,
        state: str = ACCEPTED,
        reason: str | None = None,
    ) -> AddResult:
        """Store a sample durably; a repeated idempotency key or identical content from the
        same user returns the existing sample instead of a new one.

        Raises IdempotencyKeyReusedError when the key was first used with another label or image.
        """
        digest = content_hash(image)
        with self.session() as session:
            existing = self._existing(session, user_id, digest, idempotency_key, label)
            if existing is not None:
                return existing
            sample = Sample(
                user_id=user_id,
                label=label,
                image=image,
                pixels=pixels,
                content_sha256=digest,
                idempotency_key=idempotency_key,
                state=state,
                reason=reason,
            )
            try:
                with session.begin_nested():
                    session.add(sample)
                    session.flush()
            except IntegrityError:  # a concurrent request with the same key won the race
                again = self._existing(session, user_id, digest, idempotency_key, label)
                if again is None:
                    raise
                return again
            return AddResult(sample.id, created=True)

    @staticmethod
    def _existing(
        session: Session, user_id: str, digest: str, key: str | None, label: int
    ) -> AddResult | None:
        if key is not None:
            found = session.execute(
                select(Sample.id, Sample.label, Sample.content_sha256).where(
                    Sample.user_id == user_id, Sample.idempotency_key == key
                )
            ).first()
            if found is not None:
                if (found.label, found.content_sha256) != (label, digest):
                    # A replay must be the same request; anything else is a client bug that
                    # would otherwise lose the new sample silently.
                    changed = " and ".join(
                        name
                        for name, same in (
                            ("label", found.label == label),
                            ("image", found.content_sha256 == digest),
                        )
                        if not same
                    )
                    raise IdempotencyKeyReusedError(
                        f"The idempotency key {key!r} was already used for sample {found.id} "
                        f"with a different {changed}. Use a new key for a new sample; resend "
                        "the same image and label only to retry."
                    )
                return AddResult(found.id, created=False)
        dup = session.scalar(
            select(Sample.id).where(Sample.user_id == user_id, Sample.content_sha256 == digest)
        )
        if dup is not None:
            return AddResult(dup, created=False, duplicate_of=dup)
        return None

    def get(self, sample_id: int) -> Sample | None:
        with self.session() as session:
            return session.get(Sample, sample_id)

    def after(self, watermark: int, *, states: Iterable[str] = (ACCEPTED,)) -> list[Sample]:
        """Samples with id > watermark in the given states, oldest first."""
        with self.session() as session:
            rows = session.scalars(
                select(Sample)
                .where(Sample.id > watermark, Sample.state.in_(list(states)))
                .order_by(Sample.id)
            )
            return list(rows)

    def by_ids(self, ids: Iterable[int]) -> list[Sample]:
        with self.session() as session:
            return list(session.scalars(select(Sample).where(Sample.id.in_(list(ids)))))

    def count(self, *, state: str | None = None, after: int = 0) -> int:
        with self.session() as session:
            query = select(func.count(Sample.id)).where(Sample.id > after)
            if state is not None:
                query = query.where(Sample.state == state)
            return int(session.scalar(query) or 0)

    def max_id(self) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.max(Sample.id))) or 0)

    def set_state(
        self,
        ids: Iterable[int],
        state: str,
        *,
        reason: str | None = None,
        version: str | None = None,
    ) -> None:
        """Move samples to `state` (quarantined with a reason, or trained in a version)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        values: dict[str, Any] = {"state": state, "reason": reason}
        if version is not None:
            values["trained_version"] = version
        with self.session() as session:
            session.execute(update(Sample).where(Sample.id.in_(list(ids))).values(**values))

    def stats(self) -> dict[str, Any]:
        """Counts by user, by label, by state, and quarantine reasons."""
        with self.session() as session:

            def grouped(column: Any, *where: Any) -> dict[str, int]:
                query = select(column, func.count(Sample.id)).group_by(column)
                for clause in where:
                    query = query.where(clause)
                return {str(k): int(v) for k, v in session.execute(query).all()}

            return {
                "total": int(session.scalar(select(func.count(Sample.id))) or 0),
                "by_state": grouped(Sample.state),
                "by_label": grouped(Sample.label),
                "by_user": grouped(Sample.user_id),
                "quarantine_reasons": grouped(Sample.reason, Sample.state == QUARANTINED),
            }
