"""Durable store of labelled samples (SQLAlchemy): SQLite in WAL mode with full sync by
default, PostgreSQL by URL. A sample is committed before the API acknowledges it.

Two kinds of sample share the machinery: digit samples (`samples`) and reviewed cheque amount
fields (`cheque_samples`), plus the cheque readings a reviewed field may correct
(`cheque_readings`). Sample ids are monotonically increasing integers, so the trainer's
watermark is simply "the highest sample id already trained on".
"""

from __future__ import annotations

import errno
import hashlib
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from inkwell.cheques.review import ChequeSampleCheck
from inkwell.errors import (
    IdempotencyKeyReusedError,
    NotFoundError,
    StoreFullError,
    StoreUnavailableError,
)
from inkwell.settings import STABLE, CoreSettings

# what a database that is down, unreachable, or locked past its timeout raises
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)
SQLITE_FULL = 13  # "database or disk is full" (also PRAGMA max_page_count reached)
POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full: "could not extend file"


def disk_full(exc: BaseException) -> bool:
    """Whether a database error means its disk is full (SQLite, PostgreSQL, or the OS).

    The chain is searched: SQLite undoes the whole transaction on SQLITE_FULL, so the error
    that surfaces is the failed savepoint rollback, with the full disk as its context.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        cause = getattr(seen, "orig", None) or seen
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return True
        if getattr(cause, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        if getattr(cause, "sqlstate", None) == POSTGRES_DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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


def _now() -> datetime:
    return datetime.now(UTC)


class ChequeReadingRecord(Base):
    """One answer of `POST /v1/cheques/read`, so that a reviewed upload can say what it corrects.

    The image is kept only for readings that need review (the review queue shows them).
    """

    __tablename__ = "cheque_readings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    amount: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(Boolean, index=True)
    model_version: Mapped[str] = mapped_column(String(32))
    variant: Mapped[str] = mapped_column(String(16))
    alias: Mapped[str | None] = mapped_column(String(16), nullable=True)
    layout: Mapped[str] = mapped_column(String(16))
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    image: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ChequeSample(Base):
    """One reviewed amount field (or whole cheque): the image and the amount a person confirmed."""

    __tablename__ = "cheque_samples"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_cheque_user_idempotency"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    amount: Mapped[str] = mapped_column(String(12))  # digits only
    image: Mapped[bytes] = mapped_column(LargeBinary)
    layout: Mapped[str] = mapped_column(String(16))  # auto | field | cheque, as uploaded
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reading_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    # sha256 prefix of the API key that uploaded it (never the key): "many from one key" rules
    key_id: Mapped[str] = mapped_column(String(16), index=True)
    # the corrected reading was confident (not sent to review) and stable's: None when no reading
    confident_reading: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    contradicts_reading: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=ACCEPTED, index=True)
    reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trained_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class KeyUsage(Base):
    """Uploads counted against an API key's daily quota, shared by every service process."""

    __tablename__ = "key_usage"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[int] = mapped_column(Integer, primary_key=True)  # days since the epoch, UTC
    used: Mapped[int] = mapped_column(Integer, default=0)


KEY_USAGE_DAYS_KEPT = 7


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


def _insert_once(
    session: Session, row: Sample | ChequeSample, existing: Callable[[], AddResult | None]
) -> AddResult:
    """Insert `row` unless `existing()` finds the sample it repeats (replay or duplicate)."""
    found = existing()
    if found is not None:
        return found
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # a concurrent request with the same key won the race
        again = existing()
        if again is None:
            raise
        return again
    return AddResult(row.id, created=True)


def _grouped(session: Session, key: Any, column: Any, *where: Any) -> dict[str, int]:
    query = select(column, func.count(key)).group_by(column)
    for clause in where:
        query = query.where(clause)
    return {str(k): int(v) for k, v in session.execute(query).all()}


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
        if disk_full(exc):
            return StoreFullError(
                f"The sample database ({where}) is out of disk space, so nothing was stored. "
                "Its volume must be grown or cleaned by an operator; samples already "
                "acknowledged are kept, and predictions still answer. Retry later."
            )
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

    def take_daily_quota(self, key_id: str, day: int, quota: int) -> bool:
        """Count one upload of `key_id` on `day` if it has fewer than `quota` there; False when
        the quota is used up. Atomic in the database, so every process shares one count."""
        for _ in range(2):  # a concurrent first upload of the day can win the insert
            with self.session() as session:
                result = session.execute(
                    update(KeyUsage)
                    .where(KeyUsage.key_id == key_id, KeyUsage.day == day, KeyUsage.used < quota)
                    .values(used=KeyUsage.used + 1)
                )
                if getattr(result, "rowcount", 0):
                    return True
                if session.get(KeyUsage, (key_id, day)) is not None:
                    return False  # the row exists and is full
                if quota < 1:
                    return False
                try:
                    with session.begin_nested():
                        session.add(KeyUsage(key_id=key_id, day=day, used=1))
                        session.flush()
                except IntegrityError:
                    continue
                session.execute(
                    delete(KeyUsage).where(
                        KeyUsage.key_id == key_id, KeyUsage.day < day - KEY_USAGE_DAYS_KEPT
                    )
                )
                return True
        return False

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
        row = Sample(
            user_id=user_id,
            label=label,
            image=image,
            pixels=pixels,
            content_sha256=digest,
            idempotency_key=idempotency_key,
            state=state,
            reason=reason,
        )
        with self.session() as session:
            return _insert_once(
                session,
                row,
                lambda: self._existing(session, user_id, digest, idempotency_key, label),
            )

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
            return {
                "total": int(session.scalar(select(func.count(Sample.id))) or 0),
                "by_state": _grouped(session, Sample.id, Sample.state),
                "by_label": _grouped(session, Sample.id, Sample.label),
                "by_user": _grouped(session, Sample.id, Sample.user_id),
                "quarantine_reasons": _grouped(
                    session, Sample.id, Sample.reason, Sample.state == QUARANTINED
                ),
            }

    # -- cheques ------------------------------------------------------------------------------

    def add_reading(
        self,
        *,
        amount: str,
        confidence: float,
        needs_review: bool,
        model_version: str,
        variant: str,
        alias: str | None,
        layout: str,
        image: bytes,
    ) -> str:
        """Record a cheque reading; its id lets a reviewer's upload say what it corrects."""
        record = ChequeReadingRecord(
            id=uuid.uuid4().hex,
            amount=amount,
            confidence=confidence,
            needs_review=needs_review,
            model_version=model_version,
            variant=variant,
            alias=alias,
            layout=layout,
            content_sha256=content_hash(image),
            image=image if needs_review else None,
        )
        with self.session() as session:
            session.add(record)
        return record.id

    def reading(self, reading_id: str) -> ChequeReadingRecord | None:
        with self.session() as session:
            return session.get(ChequeReadingRecord, reading_id)

    def first_review(self, reading_id: str) -> int | None:
        """The id of the first accepted sample that reviewed this reading, if any."""
        with self.session() as session:
            return session.scalar(
                select(func.min(ChequeSample.id)).where(
                    ChequeSample.reading_id == reading_id, ChequeSample.state == ACCEPTED
                )
            )

    def pending_reviews(self, limit: int = 50) -> list[ChequeReadingRecord]:
        """Readings sent to review that no reviewed upload has corrected yet, newest first."""
        reviewed = select(ChequeSample.reading_id).where(ChequeSample.reading_id.is_not(None))
        with self.session() as session:
            rows = session.scalars(
                select(ChequeReadingRecord)
                .where(
                    ChequeReadingRecord.needs_review.is_(True),
                    ChequeReadingRecord.image.is_not(None),
                    ChequeReadingRecord.id.not_in(reviewed),
                )
                .order_by(ChequeReadingRecord.created_at.desc(), ChequeReadingRecord.id)
                .limit(limit)
            )
            return list(rows)

    def add_cheque_sample(
        self,
        *,
        user_id: str,
        amount: str,
        image: bytes,
        layout: str,
        key_id: str,
        idempotency_key: str | None = None,
        reading_id: str | None = None,
        decide: Callable[[ChequeSampleCheck], str | None] = lambda _check: None,
    ) -> AddResult:
        """Store a reviewed field durably, quarantined when `decide` names a reason.

        A repeated idempotency key (per user), or the same image with the same amount (from
        anyone), returns the existing sample. An unknown `reading_id` is a `NotFoundError`.
        """
        digest = content_hash(image)

        def existing() -> AddResult | None:
            return self._existing_cheque(session, user_id, digest, amount, idempotency_key)

        with self.session() as session:
            found = existing()
            if found is not None:
                return found
            check = self._cheque_check(session, digest, amount, key_id, reading_id)
            reading = check.reading_amount
            reason = decide(check)
            row = ChequeSample(
                user_id=user_id,
                amount=amount,
                image=image,
                layout=layout,
                content_sha256=digest,
                idempotency_key=idempotency_key,
                reading_id=reading_id,
                key_id=key_id,
                confident_reading=check.reading_confident if reading is not None else None,
                contradicts_reading=(reading != amount) if reading is not None else None,
                state=QUARANTINED if reason else ACCEPTED,
                reason=reason,
            )
            return _insert_once(session, row, existing)

    @staticmethod
    def _existing_cheque(
        session: Session, user_id: str, digest: str, amount: str, key: str | None
    ) -> AddResult | None:
        if key is not None:
            found = session.scalar(
                select(ChequeSample.id).where(
                    ChequeSample.user_id == user_id, ChequeSample.idempotency_key == key
                )
            )
            if found is not None:
                return AddResult(found, created=False)
        dup = session.scalar(
            select(ChequeSample.id)
            .where(ChequeSample.content_sha256 == digest, ChequeSample.amount == amount)
            .order_by(ChequeSample.id)
        )
        if dup is not None:
            return AddResult(dup, created=False, duplicate_of=dup)
        return None

    @staticmethod
    def _cheque_check(
        session: Session, digest: str, amount: str, key_id: str, reading_id: str | None
    ) -> ChequeSampleCheck:
        reading = None
        if reading_id is not None:
            reading = session.get(ChequeReadingRecord, reading_id)
            if reading is None:
                raise NotFoundError(
                    f"No cheque reading has the id {reading_id!r}. Send the reading_id that "
                    "POST /v1/cheques/read returned, or leave reading_id out.",
                    code="reading_not_found",
                )
        conflicting = session.scalars(
            select(ChequeSample.amount)
            .where(ChequeSample.content_sha256 == digest, ChequeSample.amount != amount)
            .distinct()
        )
        confident = ChequeSample.confident_reading.is_(True)
        rows = session.execute(
            select(
                ChequeSample.key_id,
                func.count(ChequeSample.id),
                func.sum(case((ChequeSample.contradicts_reading.is_(True), 1), else_=0)),
            )
            .where(confident)
            .group_by(ChequeSample.key_id)
        ).all()
        counts = {str(k): (int(n), int(c or 0)) for k, n, c in rows}
        own = counts.pop(key_id, (0, 0))
        return ChequeSampleCheck(
            reading_amount=reading.amount if reading is not None else None,
            reading_confident=(
                reading is not None and not reading.needs_review and reading.alias == STABLE
            ),
            conflicting_amounts=sorted(conflicting),
            key_confident=own[0],
            key_contradicted=own[1],
            other_keys=counts,
        )

    def cheque_sample(self, sample_id: int) -> ChequeSample | None:
        with self.session() as session:
            return session.get(ChequeSample, sample_id)

    def cheque_stats(self) -> dict[str, Any]:
        """Reviewed cheque fields: counts by user, by state, by amount length, and reasons."""
        key = ChequeSample.id
        with self.session() as session:
            return {
                "total": int(session.scalar(select(func.count(key))) or 0),
                "by_state": _grouped(session, key, ChequeSample.state),
                "by_user": _grouped(session, key, ChequeSample.user_id),
                "by_length": _grouped(session, key, func.length(ChequeSample.amount)),
                "corrections": {
                    "with_reading": int(
                        session.scalar(
                            select(func.count(key)).where(ChequeSample.reading_id.is_not(None))
                        )
                        or 0
                    ),
                    "contradicting_reading": int(
                        session.scalar(
                            select(func.count(key)).where(
                                ChequeSample.contradicts_reading.is_(True)
                            )
                        )
                        or 0
                    ),
                },
                "quarantine_reasons": _grouped(
                    session, key, ChequeSample.reason, ChequeSample.state == QUARANTINED
                ),
            }
