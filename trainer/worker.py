"""The worker loop: poll the sample store, decide when to retrain, run one retrain at a time.

Trigger rule (`decide_trigger`, pure): retrain when
- at least `min_new_samples` accepted samples are pending, or
- a new user (no trained samples yet) has uploaded `new_user_min_samples` (their first batch),
and uploads have been quiet for `debounce_seconds` — or the oldest pending sample has waited
`max_wait_seconds`, so a steady trickle cannot postpone learning forever. A manual request
(CLI, `POST /v1/retrain`) retrains at the next poll whatever the counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inkwell.data import resolve_data_dir
from inkwell.errors import ConflictError, DataNotFoundError, InkwellError, NothingToTrainError
from inkwell.settings import CoreSettings
from trainer.cheque_digits import ChequeDigitCutter, CutOutcome
from trainer.cheque_job import ChequeJobOutcome, ChequeRetrainer
from trainer.pipeline import Retrainer, RetrainOutcome
from trainer.settings import TrainerSettings

log = logging.getLogger("inkwell.trainer")
FAILURE_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class Pending:
    """Accepted samples waiting for a retrain, as the trigger sees them."""

    count: int
    per_user: dict[str, int]
    new_users: frozenset[str]
    oldest_age: float  # seconds
    newest_age: float


def _age(created: datetime, now: datetime) -> float:
    if created.tzinfo is None:  # SQLite hands back naive UTC timestamps
        created = created.replace(tzinfo=UTC)
    return max(0.0, (now - created).total_seconds())


def decide_trigger(pending: Pending, settings: TrainerSettings) -> str | None:
    """Why to retrain now (`min_new_samples`, `new_user_batch`, `max_wait`), or None."""
    if pending.count == 0:
        return None
    ready = None
    if pending.count >= settings.min_new_samples:
        ready = "min_new_samples"
    elif any(pending.per_user[u] >= settings.new_user_min_samples for u in pending.new_users):
        ready = "new_user_batch"
    if pending.oldest_age >= settings.max_wait_seconds:
        return ready or "max_wait"
    if ready and pending.newest_age >= settings.debounce_seconds:
        return ready
    return None


def mnist_status(settings: CoreSettings) -> dict[str, Any]:
    """Where the MNIST a retrain needs is, or what is missing and how to get it (no network)."""
    offline = settings.model_copy(update={"allow_download": False})
    try:
        return {"found": True, "path": str(resolve_data_dir(None, offline)), "message": None}
    except DataNotFoundError as exc:
        if settings.allow_download:
            how = (
                "it is downloaded at the first retrain when this machine is online "
                "(INKWELL_ALLOW_DOWNLOAD=0 turns that off); offline, put the four IDX files "
                "in a folder and set INKWELL_DATA_DIR to it"
            )
        else:
            how = exc.message
        message = (
            "Retraining needs MNIST (the gate's test set and the replay buffer's old digits) "
            f"and none was found here: {how}. Serving is not affected."
        )
        return {"found": False, "path": None, "message": message}


def prepare(settings: TrainerSettings) -> None:
    """Seed an empty registry from the shipped models; say what retraining still needs.

    The trainer seeds both kinds: behind an MLflow with authentication it is the only writer
    (the services read only, docs/deploy.md), so it cannot leave the cheque reader to them.
    """
    if settings.seed_shipped:
        from inkwell.shipped import seed_registry

        try:
            for info in seed_registry(settings, kinds=("digits", "cheques")):
                log.info("seeded %s v%s from the shipped model", info.name, info.version)
        except Exception as exc:  # an unreachable registry: the worker's polls report it
            log.warning("could not seed the registry from the shipped models: %s", exc)
    mnist = mnist_status(settings)
    if not mnist["found"]:
        log.warning("%s", mnist["message"])


class Worker:
    """Polls, triggers and runs retrains on a background thread; safe to query from others."""

    def __init__(
        self,
        retrainer: Retrainer,
        settings: TrainerSettings,
        *,
        cheques: ChequeRetrainer | None = None,
        digits: ChequeDigitCutter | None = None,
    ) -> None:
        self.retrainer = retrainer
        self.cheques = cheques
        self.digits = digits
        self.last_digits_outcome: CutOutcome | None = None
        self.last_cheque_outcome: ChequeJobOutcome | None = None
        self.settings = settings
        self._manual = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_outcome: RetrainOutcome | None = None
        self.last_error: str | None = None
        self.last_poll: datetime | None = None
        self._retry_at = 0.0
        self._cheque_retry_at = (
            0.0  # after a failed retrain, wait before the automatic rule retries
        )

    # ---- polling ---------------------------------------------------------------------------
    def pending(self) -> Pending:
        rows = self.retrainer.state.pending()
        now = datetime.now(UTC)
        per_user = Counter(user for _, user, _ in rows)
        known = self.retrainer.state.known_users(per_user) if per_user else set()
        return Pending(
            count=len(rows),
            per_user=dict(per_user),
            new_users=frozenset(u for u in per_user if u not in known),
            oldest_age=_age(rows[0][2], now) if rows else 0.0,
            newest_age=min((_age(c, now) for _, _, c in rows), default=0.0),
        )

    def poll_once(self) -> RetrainOutcome | None:
        """Reconcile, then retrain if the trigger (or a manual request) says so."""
        try:
            for line in self.retrainer.reconcile():
                log.warning("reconciled %s", line)
        except InkwellError as exc:  # MLflow down, a full disk: the job waits, say why
            self.last_error = f"{exc.code}: {exc.message}"
            log.error("publishing a computed job failed: %s", self.last_error)
            return None  # no new job while that one holds the slot (it would read "conflict")
        self.cut_cheque_digits()
        pending = self.pending()
        self.last_poll = datetime.now(UTC)
        self.retrainer.metrics.pending.set(pending.count)
        reason = "manual" if self._manual.is_set() else decide_trigger(pending, self.settings)
        if reason is None or (reason != "manual" and time.monotonic() < self._retry_at):
            # one job at a time: a due digit job goes first, the cheque reader's after it
            self.poll_cheques()
            return None
        self._manual.clear()
        try:
            outcome = self.retrainer.retrain(reason)
        except NothingToTrainError as exc:
            self.last_error = exc.message
            return None
        except InkwellError as exc:
            self.last_error = f"{exc.code}: {exc.message}"
            self._retry_at = time.monotonic() + FAILURE_BACKOFF_SECONDS
            log.error("retrain failed: %s", self.last_error)
            return None
        except Exception:
            self._retry_at = time.monotonic() + FAILURE_BACKOFF_SECONDS
            raise
        self.last_outcome, self.last_error = outcome, None
        log.info(
            "retrain job %s: version %s %s in %.1f s",
            outcome.job_id,
            outcome.version,
            outcome.status,
            outcome.seconds,
        )
        return outcome

    def cut_cheque_digits(self) -> CutOutcome | None:
        """Turn new reviewed cheque fields into digit samples (before the digit trigger)."""
        if self.digits is None:
            return None
        try:
            outcome = self.digits.run_once()
        except InkwellError as exc:  # no stable cheque reader yet, registry down: next poll
            self.last_error = f"cheque digits {exc.code}: {exc.message}"
            log.error("cutting cheque digits failed: %s", self.last_error)
            return None
        if outcome.fields:
            self.last_digits_outcome = outcome
        return outcome

    def poll_cheques(self) -> ChequeJobOutcome | None:
        """Run (or resume) a cheque-reader job when enough reviewed fields wait."""
        if self.cheques is None or time.monotonic() < self._cheque_retry_at:
            return None
        try:
            outcome = self.cheques.run_once()
        except InkwellError as exc:
            self.last_error = f"cheques {exc.code}: {exc.message}"
            self._cheque_retry_at = time.monotonic() + FAILURE_BACKOFF_SECONDS
            log.error("cheque retrain failed: %s", self.last_error)
            return None
        if outcome is not None:
            self.last_cheque_outcome = outcome
            log.info(
                "cheque job %s: version %s %s", outcome.job_id, outcome.version, outcome.status
            )
        return outcome

    def cheque_status(self) -> dict[str, Any] | None:
        """The cheque reader's job state for GET /v1/status (None without cheque jobs)."""
        if self.cheques is None:
            return None
        last = self.last_cheque_outcome
        return {
            "watermark": self.cheques.watermark,
            "pending": len(self.cheques.pending_ids()),
            "min_new_fields": self.settings.cheque_min_new_fields,
            "last_job": None
            if last is None
            else {
                "job_id": last.job_id,
                "version": last.version,
                "status": last.status,
                "reasons": last.gate.reasons,
                "seconds": round(last.seconds, 1),
            },
        }

    def request(self) -> Pending:
        """Ask for a retrain at the next poll; errors if one is running or nothing is pending."""
        if self.retrainer.lock.locked() or self.retrainer.state.active_job() is not None:
            raise ConflictError(
                "A retrain is already running; see GET /v1/status and try again when it ends."
            )
        pending = self.pending()
        if pending.count == 0:
            raise NothingToTrainError(
                "No accepted samples are waiting; upload labelled samples before retraining."
            )
        self._manual.set()
        return pending

    # ---- thread ----------------------------------------------------------------------------
    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # keep the worker alive; the job row records failures
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("trainer poll failed")
            if not self._manual.is_set():
                self._stop.wait(self.settings.poll_seconds)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run_forever, name="trainer", daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the polling thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """What GET /v1/status shows."""
        retrainer = self.retrainer
        pending = self.pending()
        active = retrainer.state.active_job()
        last = retrainer.state.last_job()
        registry = retrainer.registry
        name = self.settings.model_name
        stable = registry.find_version(name, "stable")
        canary = registry.find_version(name, "canary")
        return {
            "model_name": name,
            "running": active is not None,
            "active_job": active.public() if active else None,
            "last_job": last.public() if last else None,
            "last_outcome": self.last_outcome.public() if self.last_outcome else None,
            "last_error": self.last_error,
            "watermark": retrainer.state.watermark(),
            "pending": {
                "count": pending.count,
                "users": len(pending.per_user),
                "new_users": sorted(pending.new_users),
                "oldest_age_seconds": round(pending.oldest_age, 1),
                "newest_age_seconds": round(pending.newest_age, 1),
                "would_trigger": decide_trigger(pending, self.settings),
            },
            "stable_version": stable.version if stable else None,
            "canary_version": canary.version if canary else None,
            "cheques": self.cheque_status(),
            "cheque_digits": None
            if self.digits is None
            else {
                "watermark": self.digits.watermark,
                "last_fields": self.last_digits_outcome.fields if self.last_digits_outcome else 0,
                "last_created": self.last_digits_outcome.created if self.last_digits_outcome else 0,
            },
            "last_poll": self.last_poll.isoformat() if self.last_poll else None,
            "mnist": mnist_status(self.settings),
            "settings": {
                "min_new_samples": self.settings.min_new_samples,
                "new_user_min_samples": self.settings.new_user_min_samples,
                "debounce_seconds": self.settings.debounce_seconds,
                "buffer_policy": self.settings.buffer_policy,
                "buffer_capacity": self.settings.buffer_capacity,
                "replay_ratio": self.settings.replay_ratio,
            },
            "time": time.time(),
        }
