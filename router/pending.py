"""Served predictions waiting for their delayed label, in the database all router replicas share.

With several router replicas a prediction served by one replica is usually labelled through
another, so an in-process memory (`router.feedback.ServedMemory`) would miss most labels and the
online accuracy would depend on the replica count. Here each replica buffers the predictions it
serves and writes them every `flush_s` seconds (one multi-row insert: the request path never
waits for the database); whichever replica receives the label deletes the image's rows and
scores them. The delete returns the rows it removed, so two replicas receiving the same label at
once score it once between them. The table is bounded: rows older than `ttl_s` and the oldest
rows beyond `capacity` are dropped at each flush.

Replicas count the scored predictions in their own `inkwell_router_online_predictions_total`;
Prometheus sums the replicas, so the install's online accuracy is that of all its traffic.
"""

from __future__ import annotations

import threading
import time
from typing import cast

from sqlalchemy import Float, Integer, String, Table, delete, func, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from inkwell.store import create_schema, make_engine
from router.feedback import Served
from router.state import Base


class PendingPrediction(Base):
    __tablename__ = "pending_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_key: Mapped[str] = mapped_column(String(128), index=True)
    variant: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str] = mapped_column(String(32))
    prediction: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)


TABLE = cast(Table, PendingPrediction.__table__)


class PendingPredictions:
    """Predictions served by any replica, matched to labels received by any replica."""

    def __init__(self, url: str, *, capacity: int, ttl_s: float) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.engine = make_engine(url)
        create_schema(self.engine, Base.metadata, [TABLE])
        self._buffer: list[dict[str, object]] = []
        self._lock = threading.Lock()

    def remember(self, key: str, served: Served) -> None:
        """Buffer one prediction; `flush` writes it (cheap: called on the request path)."""
        row = {
            "image_key": key,
            "variant": served.variant,
            "model_version": served.version,
            "prediction": served.prediction,
            "at": time.time(),
        }
        with self._lock:
            self._buffer.append(row)
            if len(self._buffer) > self.capacity:  # the database is away: keep the newest
                del self._buffer[: len(self._buffer) - self.capacity]

    def flush(self) -> int:
        """Write the buffered predictions and drop expired and surplus rows; the count written."""
        with self._lock:
            rows, self._buffer = self._buffer, []
        try:
            with self.engine.begin() as connection:
                if rows:
                    connection.execute(insert(PendingPrediction), rows)
                table = TABLE
                connection.execute(delete(table).where(table.c.at < time.time() - self.ttl_s))
                newest = connection.execute(select(func.max(table.c.id))).scalar()
                if newest is not None and newest > self.capacity:
                    connection.execute(delete(table).where(table.c.id <= newest - self.capacity))
        except Exception:
            with self._lock:  # try again at the next flush; the bound above still holds
                self._buffer[:0] = rows
            raise
        return len(rows)

    def take(self, key: str) -> list[Served]:
        """Every replica's predictions of image `key`, removed so each label is scored once."""
        self.flush()  # this replica's own recent predictions count too
        table = TABLE
        with self.engine.begin() as connection:
            removed = connection.execute(
                delete(table)
                .where(table.c.image_key == key)
                .returning(table.c.id, table.c.variant, table.c.model_version, table.c.prediction)
            ).all()
        latest: dict[tuple[str, str], Served] = {}
        for _, variant, version, prediction in sorted(removed):
            latest[(variant, version)] = Served(variant, version, prediction)  # newest wins
        return list(latest.values())

    def __len__(self) -> int:
        table = TABLE
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(table)).scalar() or 0)

    def dispose(self) -> None:
        self.engine.dispose()
