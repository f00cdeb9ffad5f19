"""The shared database's schema when several processes open a new database at once."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import DatabaseError

from inkwell.errors import IdempotencyKeyReusedError, StoreFullError, StoreUnavailableError
from inkwell.store import Base, SampleStore, create_schema, make_engine
from router.state import RolloutStore
from trainer.state import TrainerState


def _open_together(opener: Callable[[], object], n: int = 6) -> list[Exception]:
    barrier = threading.Barrier(n)
    errors: list[Exception] = []

    def open_it() -> None:
        barrier.wait()
        try:
            opener()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.parametrize("attempt", range(5))
def test_service_trainer_and_router_opening_a_new_database_together_all_succeed(
    tmp_path: Path, attempt: int
) -> None:
    # Before create_schema, about 3 of 6 simultaneous openers failed with "table samples
    # already exists" on nearly every try (a live-system test failed in CI on it).
    url = f"sqlite:///{tmp_path / f'inkwell-{attempt}.db'}"

    def open_like_a_component() -> None:
        store = SampleStore(url)
        TrainerState(store, "inkwell-digits")
        RolloutStore(url)

    assert _open_together(open_like_a_component) == []
    store = SampleStore(url)
    added = store.add(user_id="u", label=3, image=b"png", pixels=bytes(784))
    assert store.get(added.sample_id) is not None


def test_a_file_that_is_not_a_database_is_still_reported(tmp_path: Path) -> None:
    path = tmp_path / "inkwell.db"
    path.write_bytes(b"this is not a SQLite database, it is a text file " * 100)

    with pytest.raises(DatabaseError, match="not a database"):
        create_schema(make_engine(f"sqlite:///{path}"), Base.metadata, attempts=2)


def test_a_postgresql_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="unavailable") as raised:
            SampleStore(
                f"postgresql+psycopg://inkwell:s3cret@127.0.0.1:{port}/inkwell",
                connect_timeout_s=1,
            )
        assert time.monotonic() - started < 8
        assert "s3cret" not in raised.value.message


@contextmanager
def _write_lock(url: str) -> Iterator[None]:
    """Another process holds the samples table's write lock for the duration."""
    if url.startswith("sqlite"):
        holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as holder:
        holder.execute("LOCK TABLE samples IN ACCESS EXCLUSIVE MODE")
        yield
        holder.rollback()


def test_a_database_locked_by_another_process_fails_after_the_statement_timeout(
    database_url: str,
) -> None:
    store = SampleStore(database_url, statement_timeout_s=0.3)
    with _write_lock(database_url):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.add(user_id="u", label=1, image=b"png", pixels=bytes(784))
        assert time.monotonic() - started < 3
    assert store.add(user_id="u", label=1, image=b"png", pixels=bytes(784)).created
    store.engine.dispose()


def test_samples_are_stored_once_per_content_and_idempotency_key(database_url: str) -> None:
    store = SampleStore(database_url)
    first = store.add(user_id="alice", label=7, image=b"a", pixels=bytes(784), idempotency_key="k")
    replay = store.add(user_id="alice", label=7, image=b"a", pixels=bytes(784), idempotency_key="k")
    with pytest.raises(IdempotencyKeyReusedError):
        store.add(user_id="alice", label=7, image=b"b", pixels=bytes(784), idempotency_key="k")
    same = store.add(user_id="alice", label=7, image=b"a", pixels=bytes(784))
    other = store.add(user_id="bob", label=7, image=b"a", pixels=bytes(784))
    assert first.created and not replay.created and replay.sample_id == first.sample_id
    assert same.duplicate_of == first.sample_id and other.created
    store.set_state([first.sample_id], "quarantined", reason="blank")
    assert [s.id for s in store.after(0)] == [other.sample_id]
    stats = store.stats()
    assert stats["total"] == 2 and stats["quarantine_reasons"] == {"blank": 1}
    store.engine.dispose()


def test_concurrent_uploads_with_one_idempotency_key_store_one_sample(database_url: str) -> None:
    store = SampleStore(database_url)
    results = []
    barrier = threading.Barrier(8)

    def add() -> None:  # eight retries of one request racing each other
        barrier.wait()
        results.append(
            store.add(user_id="u", label=3, image=b"image", pixels=bytes(784), idempotency_key="k")
        )

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len({r.sample_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert store.count() == 1
    store.engine.dispose()


def test_a_full_sqlite_database_refuses_with_store_full_and_keeps_what_it_stored(
    tmp_path: Path,
) -> None:
    store = SampleStore(f"sqlite:///{tmp_path / 'inkwell.db'}")
    kept = store.add(user_id="u", label=1, image=b"first", pixels=bytes(784)).sample_id
    with store.engine.connect() as connection:
        pages = int(connection.exec_driver_sql("PRAGMA page_count").scalar_one())

    @event.listens_for(store.engine, "connect")
    def _cap(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # the file may not grow: SQLite's own "database or disk is full" (SQLITE_FULL)
        dbapi_connection.execute(f"PRAGMA max_page_count={pages}")

    store.engine.dispose()
    with pytest.raises(StoreFullError, match="out of disk space") as raised:
        for n in range(200):
            store.add(user_id="u", label=2, image=bytes([n]) * 4096, pixels=bytes(784))
    assert raised.value.status_code == 507 and raised.value.code == "store_full"
    stored = store.get(kept)
    assert stored is not None and stored.image == b"first"


def test_a_daily_quota_counts_exactly_under_concurrent_uploads(database_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = SampleStore(database_url)
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda _: store.take_daily_quota("k1", 20_000, 25), range(60)))
    assert taken.count(True) == 25  # never more, never fewer, whoever inserted the day's row
    assert not store.take_daily_quota("k1", 20_000, 25)
    assert store.take_daily_quota("k2", 20_000, 25)  # each key its own count
    assert store.take_daily_quota("k1", 20_001, 25)  # and each day
    assert not store.take_daily_quota("k3", 20_001, 0)


def test_old_days_of_a_keys_quota_are_forgotten(database_url: str) -> None:
    from sqlalchemy import select

    from inkwell.store import KeyUsage

    store = SampleStore(database_url)
    assert store.take_daily_quota("k1", 100, 5)
    assert store.take_daily_quota("k1", 120, 5)  # the first upload of a later day prunes
    with store.session() as session:
        assert session.scalars(select(KeyUsage.day).where(KeyUsage.key_id == "k1")).all() == [120]
