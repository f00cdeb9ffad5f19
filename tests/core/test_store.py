"""The shared database's schema when several processes open a new database at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import DatabaseError

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
