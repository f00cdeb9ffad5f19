"""The rollout controller: idle → canary steps → promoted | rolled back.

A rollout starts when the registry's `canary` alias points at a new version. The canary then
answers a growing share of users (the configured steps, default 5, 25, 50, 100 %); at the end
of each analysis interval the canary is compared with the stable baseline and either moves to
the next step, is promoted after the last one, or is rolled back. Clear failures roll back at
once, without waiting for the end of the interval.

Promotion moves the `stable` alias to the canary's version, waits until the stable service
reports that version (it hot-reloads), then removes the `canary` alias. Rollback stops canary
traffic first, then removes the `canary` alias and tags the version `rolled_back` with the
reason. State lives in the database (`state.RolloutStore`); every replica runs this loop and the
optimistic version column makes sure one transition wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from inkwell.errors import ConflictError, InkwellError
from inkwell.settings import CANARY, STABLE
from router.analysis import Result, Sample, Thresholds, Verdict, analyse, build_observation
from router.capacity import Scaler
from router.metrics import RouterMetrics
from router.settings import RouterSettings
from router.sources import MetricSource
from router.state import PHASES, TERMINAL, Phase, RolloutState, RolloutStore

if TYPE_CHECKING:  # importing MLflow takes seconds; only the real registry needs it
    from inkwell.registry import Registry

log = logging.getLogger("inkwell.rollout")

ROLLED_BACK_TAG = "rolled_back"
STATUS_TAG = "rollout_status"


class AliasRegistry(Protocol):
    """The registry operations a rollout needs (blocking; the controller runs them in threads)."""

    def alias_version(self, alias: str) -> str | None: ...

    def set_alias(self, alias: str, version: str) -> None: ...

    def delete_alias(self, alias: str) -> None: ...

    def tag(self, version: str, tags: dict[str, str]) -> None: ...


class MlflowAliases:
    """`AliasRegistry` over `inkwell.registry.Registry` for one model name."""

    def __init__(self, registry: Registry, model_name: str) -> None:
        self.registry = registry
        self.model_name = model_name

    def alias_version(self, alias: str) -> str | None:
        info = self.registry.find_version(self.model_name, alias)
        return info.version if info is not None else None

    def set_alias(self, alias: str, version: str) -> None:
        self.registry.set_alias(self.model_name, alias, version)

    def delete_alias(self, alias: str) -> None:
        self.registry.delete_alias(self.model_name, alias)

    def tag(self, version: str, tags: dict[str, str]) -> None:
        self.registry.set_version_tags(self.model_name, version, tags)


class ServedVersions(Protocol):
    """Which version each service currently serves (the proxy's probes)."""

    def served_version(self, variant: str) -> str | None: ...


@dataclass(frozen=True)
class Aliases:
    stable: str | None
    canary: str | None


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RolloutController:
    """Drives one model's rollout; safe to run in several replicas at once."""

    def __init__(
        self,
        settings: RouterSettings,
        store: RolloutStore,
        aliases: AliasRegistry,
        source: MetricSource,
        metrics: RouterMetrics,
        served: ServedVersions,
        *,
        on_state: Callable[[RolloutState], None] | None = None,
        clock: Callable[[], float] = time.time,
        model_name: str | None = None,
        capacity: Scaler | None = None,
    ) -> None:
        self.settings = settings
        self.capacity = capacity  # None: the canary's pods are not the controller's business
        self.model_name = model_name or settings.model_name
        self.store = store
        self.aliases = aliases
        self.source = source
        self.metrics = metrics
        self.served = served
        self.on_state = on_state
        self.clock = clock
        self.steps = list(settings.rollout_steps)
        self.thresholds = Thresholds.from_settings(settings)
        self.interval = settings.analysis_interval_s
        self.replica = replica_name()
        self.state = RolloutState(self.model_name)
        self.last_verdict: Verdict | None = None
        self.last_error: str = ""
        self._aliases: Aliases | None = None
        self._aliases_at = -1e18
        self._lock = asyncio.Lock()
        self._recorded_interval: tuple[int, int] | None = None

    # ---- reading ------------------------------------------------------------------------
    async def load(self) -> RolloutState:
        state = await asyncio.to_thread(self.store.load, self.model_name)
        self._publish(state)
        return state

    def _publish(self, state: RolloutState) -> None:
        changed = state != self.state
        self.state = state
        self.metrics.set_phase(state.phase.value, PHASES)
        self.metrics.rollout_step.set(state.step_index if state.serving_canary else -1)
        self.metrics.canary_weight.set(state.weight if state.serving_canary else 0.0)
        if changed and self.on_state is not None:
            self.on_state(state)

    async def read_aliases(self, *, fresh: bool = False) -> Aliases:
        now = time.monotonic()
        if (
            fresh
            or self._aliases is None
            or now - self._aliases_at >= self.settings.registry_poll_s
        ):
            stable, canary = await asyncio.gather(
                asyncio.to_thread(self.aliases.alias_version, STABLE),
                asyncio.to_thread(self.aliases.alias_version, CANARY),
            )
            self._aliases = Aliases(stable, canary)
            self._aliases_at = now
        return self._aliases

    # ---- the loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set; errors are logged and retried, never fatal."""
        period = self.settings.resolved_tick_s
        while not stop.is_set():
            try:
                await self.tick()
                self.last_error = ""
            except InkwellError as exc:
                self.last_error = exc.message
                log.warning("rollout tick: %s", exc.message)
            except Exception as exc:  # keep routing even if the registry/DB hiccups
                self.last_error = repr(exc)
                log.exception("rollout tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)

    async def tick(self) -> RolloutState:
        """Look at the state, the registry and the metrics; make at most a few transitions."""
        async with self._lock:
            state = await self.load()
            for _ in range(4):  # a transition may enable the next one (rollback → rolled back)
                new = await self._step(state)
                if new is None:
                    break
                state = new
            return state

    async def _step(self, state: RolloutState) -> RolloutState | None:
        phase = state.phase
        if phase in TERMINAL:
            return await self._maybe_start(state)
        if phase is Phase.ROLLING_BACK:
            return await self._finish_rollback(state)
        if phase is Phase.PROMOTING:
            return await self._finish_promotion(state)
        aliases = await self.read_aliases()
        if aliases.canary != state.canary_version:
            fresh = await self.read_aliases(fresh=True)
            if fresh.canary != state.canary_version:
                why = (
                    "the canary alias was removed outside the router"
                    if fresh.canary is None
                    else f"superseded by version {fresh.canary}"
                )
                return await self._transition(
                    state,
                    state.evolve(phase=Phase.ROLLED_BACK, weight=0.0, reason=why),
                    actor=self.replica,
                )
        if phase is Phase.PAUSED:
            return None
        return await self._analyse(state)

    async def _maybe_start(self, state: RolloutState) -> RolloutState | None:
        def candidate(aliases: Aliases) -> bool:
            return aliases.canary is not None and aliases.canary != aliases.stable

        if not candidate(await self.read_aliases()):
            return None
        # Finishing a rollout removes the canary alias before the terminal state is written,
        # so a fresh read after seeing that state never shows the finished version again
        # (unless someone re-set the alias on purpose, which does start a new rollout).
        aliases = await self.read_aliases(fresh=True)
        if not candidate(aliases):
            return None
        if not await self._capacity_for(self.steps[0], 0.0):
            return None
        now = self.clock()
        new = state.evolve(
            phase=Phase.CANARY,
            rollout_id=state.rollout_id + 1,
            canary_version=aliases.canary,
            stable_version=aliases.stable,
            step_index=0,
            weight=self.steps[0],
            started_at=now,
            step_started_at=now,
            canary_ready_at=0.0,
            reason=f"new canary version {aliases.canary} (stable {aliases.stable})",
            analysis=None,
        )
        self.last_verdict = None
        if aliases.canary is not None:
            self.metrics.prime(CANARY, aliases.canary)
            if aliases.stable is not None:
                self.metrics.prime(STABLE, aliases.stable)
                self.metrics.prime_shadow(aliases.stable, aliases.canary)
        await self.source.observe()  # the base of the first analysis window
        return await self._transition(state, new, actor=self.replica)

    async def _analyse(self, state: RolloutState) -> RolloutState | None:
        if state.canary_version is None:
            return None
        now = self.clock()
        if state.canary_ready_at <= 0:
            # The first step's clock starts when the canary service serves the version (it
            # polls the alias, then loads): until then it has had no users to be judged on.
            if self.served.served_version(CANARY) == state.canary_version:
                return await self._transition(
                    state,
                    state.evolve(
                        canary_ready_at=now,
                        step_started_at=now,
                        reason=f"the canary service serves version {state.canary_version}",
                    ),
                    actor=self.replica,
                )
            if now - state.started_at > self.settings.canary_ready_timeout_s:
                return await self.rollback(
                    f"the canary service did not serve version {state.canary_version} within "
                    f"{self.settings.canary_ready_timeout_s:g} s of the rollout start (does the "
                    "version load? see the canary service's log)",
                    state=state,
                )
            return None
        elapsed = max(now - state.step_started_at, 0.0)
        since_start = max(now - state.started_at, elapsed)
        step_samples, rollout_samples = await self.source.windows(
            max(elapsed, 1e-3), max(since_start, 1e-3)
        )
        verdict = self.judge(step_samples, rollout_samples, state.canary_version)
        self.last_verdict = verdict
        if verdict.result is Result.FAIL:
            self.metrics.rollout_analyses.labels("fail").inc()
            return await self.rollback(
                f"analysis failed at {state.weight:g} %: {verdict.reason()}",
                state=state,
                analysis=verdict.to_dict(),
            )
        if elapsed < self.interval:
            return None
        if verdict.result is Result.INCONCLUSIVE:
            key = (state.rollout_id, int(elapsed // self.interval))
            if key != self._recorded_interval:
                self._recorded_interval = key
                self.metrics.rollout_analyses.labels("inconclusive").inc()
                log.info("rollout step %.0f %%: %s", state.weight, verdict.reason())
            return None
        more = state.step_index + 1 < len(self.steps)
        if more and not await self._capacity_for(self.steps[state.step_index + 1], state.weight):
            return None  # the step passed; the weight (and the pass count) moves with the pods
        self.metrics.rollout_analyses.labels("pass").inc()
        if more:
            index = state.step_index + 1
            return await self._transition(
                state,
                state.evolve(
                    step_index=index,
                    weight=self.steps[index],
                    step_started_at=now,
                    reason=f"step {state.weight:g} % passed: {verdict.reason()}",
                    analysis=verdict.to_dict(),
                ),
                actor=self.replica,
            )
        return await self._transition(
            state,
            state.evolve(
                phase=Phase.PROMOTING,
                reason=f"every step passed; promoting version {state.canary_version}",
                analysis=verdict.to_dict(),
                step_started_at=now,
            ),
            actor=self.replica,
        )

    def judge(
        self, step_samples: list[Sample], rollout_samples: list[Sample], canary_version: str
    ) -> Verdict:
        """The canary analysis of this model (the cheque controller overrides it)."""
        return analyse(
            build_observation(step_samples),
            build_observation(rollout_samples),
            stable_version=None,
            canary_version=canary_version,
            thresholds=self.thresholds,
        )

    async def _finish_promotion(self, state: RolloutState) -> RolloutState | None:
        version = state.canary_version
        if version is None:
            return None
        aliases = await self.read_aliases(fresh=True)
        if aliases.stable != version:
            await asyncio.to_thread(self.aliases.set_alias, STABLE, version)
            await asyncio.to_thread(
                self.aliases.tag, version, {STATUS_TAG: "promoted", "promoted_at": _now_iso()}
            )
            self._aliases = None
        waited = self.clock() - state.step_started_at
        reloaded = self.served.served_version(STABLE) == version
        if not reloaded and waited < self.settings.reload_timeout_s:
            return None  # keep the canary's users on the canary until stable serves it too
        if aliases.canary == version:
            await asyncio.to_thread(self.aliases.delete_alias, CANARY)
            self._aliases = None
        note = (
            ""
            if reloaded
            else (
                f"; the stable service did not report version {version} within "
                f"{self.settings.reload_timeout_s:g} s (check its logs)"
            )
        )
        return await self._transition(
            state,
            state.evolve(
                phase=Phase.PROMOTED, weight=0.0, reason=f"version {version} is stable{note}"
            ),
            actor=self.replica,
        )

    async def _finish_rollback(self, state: RolloutState) -> RolloutState | None:
        version = state.canary_version
        aliases = await self.read_aliases(fresh=True)
        if version is not None:
            if aliases.stable == version and state.stable_version not in (None, version):
                # rolled back during promotion: put the old stable version back
                await asyncio.to_thread(self.aliases.set_alias, STABLE, str(state.stable_version))
            if aliases.canary == version:
                await asyncio.to_thread(self.aliases.delete_alias, CANARY)
            await asyncio.to_thread(
                self.aliases.tag,
                version,
                {ROLLED_BACK_TAG: state.reason[:4000], STATUS_TAG: "rolled_back"},
            )
            self._aliases = None
        return await self._transition(
            state, state.evolve(phase=Phase.ROLLED_BACK, weight=0.0), actor=self.replica
        )

    async def _capacity_for(self, weight: float, current: float) -> bool:
        """Whether the canary has the pods for `weight` % (always, without a scaler)."""
        return self.capacity is None or await self.capacity.ensure(weight, current)

    async def _transition(
        self, read: RolloutState, new: RolloutState, *, actor: str
    ) -> RolloutState | None:
        written = await asyncio.to_thread(self.store.swap, read, new, actor=actor)
        if written is None:
            log.info("another replica changed the rollout first; re-reading")
            await self.load()
            return None
        if written.phase != read.phase or written.weight != read.weight:
            self.metrics.rollout_transitions.labels(written.phase.value).inc()
            log.info(
                "rollout %s → %s at %g %% (%s)",
                read.phase.value,
                written.phase.value,
                written.weight,
                written.reason,
            )
        self._publish(written)
        if self.capacity is not None and written.phase in TERMINAL and read.phase not in TERMINAL:
            try:
                await self.capacity.release()
            except Exception:  # the rollout is over either way; the HPA keeps its maximum
                log.exception("could not put the canary's minimum back")
        return written

    # ---- manual actions (admin API) -------------------------------------------------------
    async def _manual(
        self,
        allowed: tuple[Phase, ...],
        change: Callable[[RolloutState], RolloutState],
        what: str,
        actor: str,
    ) -> RolloutState:
        for _ in range(10):
            state = await self.load()
            if state.phase not in allowed:
                raise ConflictError(
                    f"cannot {what} while the rollout is {state.phase.value}; it is possible "
                    f"when {' or '.join(p.value for p in allowed)} (see `inkwell rollout status`)",
                    code="rollout_conflict",
                )
            written = await self._transition(state, change(state), actor=actor)
            if written is not None:
                await self.tick()
                return self.state
        raise ConflictError("the rollout state kept changing; try again", code="rollout_busy")

    async def promote(self, actor: str = "admin") -> RolloutState:
        """Skip the remaining steps: promote the canary now."""
        return await self._manual(
            (Phase.CANARY, Phase.PAUSED),
            lambda s: s.evolve(
                phase=Phase.PROMOTING,
                reason=f"promoted manually by {actor}",
                step_started_at=self.clock(),
            ),
            "promote",
            actor,
        )

    async def rollback(
        self,
        reason: str,
        *,
        state: RolloutState | None = None,
        analysis: dict[str, object] | None = None,
        actor: str | None = None,
    ) -> RolloutState:
        """Stop canary traffic now, then remove the alias and tag the version."""
        if state is not None:  # the controller's own decision, from a state it just read
            new = state.evolve(
                phase=Phase.ROLLING_BACK, weight=0.0, reason=reason, analysis=analysis
            )
            written = await self._transition(state, new, actor=actor or self.replica)
            return written or self.state
        return await self._manual(
            (Phase.CANARY, Phase.PAUSED, Phase.PROMOTING),
            lambda s: s.evolve(phase=Phase.ROLLING_BACK, weight=0.0, reason=reason),
            "roll back",
            actor or "admin",
        )

    async def pause(self, actor: str = "admin") -> RolloutState:
        return await self._manual(
            (Phase.CANARY,),
            lambda s: s.evolve(phase=Phase.PAUSED, reason=f"paused by {actor}"),
            "pause",
            actor,
        )

    async def resume(self, actor: str = "admin") -> RolloutState:
        return await self._manual(
            (Phase.PAUSED,),
            lambda s: s.evolve(
                phase=Phase.CANARY, reason=f"resumed by {actor}", step_started_at=self.clock()
            ),
            "resume",
            actor,
        )

    def status(self) -> dict[str, object]:
        """What `inkwell rollout status` shows."""
        return {
            **self.state.to_dict(),
            "steps": self.steps,
            "analysis_interval_s": self.interval,
            "metrics_source": self.source.name,
            "last_verdict": self.last_verdict.to_dict() if self.last_verdict else None,
            "last_error": self.last_error,
            "served_versions": {
                STABLE: self.served.served_version(STABLE),
                CANARY: self.served.served_version(CANARY),
            },
        }


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
