"""Digits learn from cheques: reviewed amount fields become digit samples (issue 17 item 4).

Each accepted reviewed field past the watermark is read by `inkwell-cheques@stable`, its CTC
frames are forced onto the confirmed amount (`inkwell.cheques.digits.cut_digits`) and every
digit with ink is stored as an ordinary digit sample of the field's user, so it meets the same
validation, replay and gate as an upload. The idempotency key ``cheque:<field id>:<position>``
marks the sample's source and makes a repeat a no-op.

Crash safety: samples are stored before the watermark moves (atomically, after each field), so
a worker killed midway cuts the field again on restart and the store returns the samples it
already holds instead of adding new ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from inkwell.cheques.digits import cut_digits
from inkwell.cheques.reader import ChequeReader
from inkwell.errors import InvalidInputError
from inkwell.preprocessing import preprocess_bytes
from inkwell.registry import Registry
from inkwell.settings import STABLE
from inkwell.store import ACCEPTED, ChequeSample, SampleStore
from trainer.files import atomic_write
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

SOURCE = "cheque"


def sample_key(field_id: int, position: int) -> str:
    """Idempotency key of the digit cut from `position` of reviewed field `field_id`."""
    return f"{SOURCE}:{field_id}:{position}"


@dataclass(frozen=True)
class CutOutcome:
    """What one pass did: fields read, digit samples created, and the new watermark."""

    fields: int
    created: int
    watermark: int


class ChequeDigitCutter:
    """Turns accepted reviewed cheque fields into digit samples, each field once."""

    def __init__(self, settings: TrainerSettings, *, store: SampleStore, registry: Registry):
        self.settings = settings
        self.store = store
        self.registry = registry
        self._reader: ChequeReader | None = None

    @property
    def state_file(self) -> Path:
        return self.settings.state_dir / "cheques" / "digits.json"

    @property
    def watermark(self) -> int:
        """The highest reviewed-field id already cut into digits."""
        if not self.state_file.is_file():
            return 0
        return int(json.loads(self.state_file.read_text())["watermark"])

    def _save(self, watermark: int) -> None:
        atomic_write(self.state_file, json.dumps({"watermark": watermark}).encode())

    def reader(self) -> ChequeReader:
        """The stable cheque reader, reloaded when `stable` moves to another version."""
        name = self.settings.cheque_model_name
        info = self.registry.get_version(name, STABLE)
        if self._reader is None or self._reader.version != info.version:
            self._reader = ChequeReader.load(STABLE, registry=self.registry)
        return self._reader

    def pending(self, limit: int) -> list[ChequeSample]:
        """Accepted reviewed fields past the watermark, oldest first, at most `limit`."""
        with self.store.session() as session:
            rows = session.scalars(
                select(ChequeSample)
                .where(ChequeSample.state == ACCEPTED, ChequeSample.id > self.watermark)
                .order_by(ChequeSample.id)
                .limit(limit)
            )
            return list(rows)

    def run_once(self) -> CutOutcome:
        """Cut up to `cheque_digits_max_fields` waiting fields; the watermark follows each."""
        fields = self.pending(self.settings.cheque_digits_max_fields)
        if not fields:
            return CutOutcome(0, 0, self.watermark)
        reader = self.reader()
        created = 0
        for field in fields:
            created += self._cut(reader, field)
            self._save(field.id)
        log.info("cut %d digit samples from %d reviewed cheque fields", created, len(fields))
        return CutOutcome(len(fields), created, fields[-1].id)

    def _cut(self, reader: ChequeReader, field: ChequeSample) -> int:
        try:
            cuts = cut_digits(reader, field.image, field.amount, layout=field.layout)
        except InvalidInputError as exc:  # e.g. a whole cheque whose box is not found now
            log.warning("reviewed field %s gives no digits: %s", field.id, exc.message)
            return 0
        created = 0
        for cut in cuts:
            if cut.confidence < self.settings.cheque_digits_min_confidence:
                continue
            data = cut.png()
            try:
                mnist = preprocess_bytes(data)
            except InvalidInputError:
                continue  # the serving preprocessing would refuse it as an upload too
            pixels = np.clip(np.rint(mnist * 255), 0, 255).astype(np.uint8)
            result = self.store.add(
                user_id=field.user_id,
                label=cut.digit,
                image=data,
                pixels=pixels.tobytes(),
                idempotency_key=sample_key(field.id, cut.position),
            )
            created += int(result.created)
        return created
