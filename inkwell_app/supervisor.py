"""Run a few long-lived processes, keep them healthy, and stop them all cleanly.

No CLI and no knowledge of Inkwell's components here: `inkwell_app.up` describes each component
as a `ProcessSpec` and drives a `Supervisor`. Invariants the tests check:

- every child runs in its own session (process group), so stopping signals the whole group (the
  child's own children included), and a terminal's Ctrl-C reaches only the supervisor, which
  stops the children in reverse start order: SIGTERM, a grace period, then SIGKILL;
- on Linux every child also gets `PR_SET_PDEATHSIG = SIGTERM`, so even a supervisor killed with
  SIGKILL leaves nothing running; that signal is tied to the thread that forked the child, so
  children are only ever started from the thread that calls `start`/`step`;
- a child that exits, never becomes healthy, or stops answering its health check is restarted
  after an exponential backoff; a run longer than `reset_after_s` forgets earlier failures, and
  `max_failures` consecutive failures mark the component failed (the caller decides what then).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

import httpx

log = logging.getLogger("inkwell_app.supervisor")

Probe = Callable[[str, float], bool]
Echo = Callable[[str, str], None]


def http_probe(url: str, timeout_s: float) -> bool:
    """True when `url` answers 200 within the timeout."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised process: how to start it and how to tell that it works."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    health_url: str | None = None  # liveness: answers 200 while the process works
    ready_url: str | None = None  # start-up: waited for before it counts as up (default: health)
    start_timeout_s: float = 120.0  # not ready by then: a failed start
    cwd: Path | None = None
    oneshot: bool = False  # a job that runs once to its end (never restarted, never "ready")

    @property
    def startup_url(self) -> str | None:
        return self.ready_url or self.health_url


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a component that died or hung, and when to give up."""

    initial_delay_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 30.0
    reset_after_s: float = 60.0  # a run at least this long forgets earlier failures
    max_failures: int | None = 8  # consecutive failures before giving up (None: never)
    health_interval_s: float = 2.0
    unhealthy_after: int = 3  # consecutive failed liveness probes that count as a hang
    probe_timeout_s: float = 1.0

    def delay(self, failures: int) -> float:
        """Backoff before restart number `failures` (1 = first restart)."""
        exponent = max(0, failures - 1)
        return float(min(self.max_delay_s, self.initial_delay_s * self.factor**exponent))


class State(StrEnum):
    STARTING = "starting"  # launched, not yet ready
    RUNNING = "running"  # ready (or has no health check)
    BACKOFF = "backoff"  # died; waiting to be restarted
    FAILED = "failed"  # gave up after too many consecutive failures
    DONE = "done"  # a one-shot job ended (see last_exit for how)
    STOPPED = "stopped"


@dataclass
class ComponentStatus:
    """What the supervisor knows about one component (a snapshot for display and tests)."""

    name: str
    state: State
    pid: int | None
    restarts: int
    failures: int
    last_exit: str | None
    log_path: Path | None


@dataclass
class _Component:
    spec: ProcessSpec
    state: State = State.STOPPED
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start_at: float = 0.0
    next_probe_at: float = 0.0
    missed_probes: int = 0
    failures: int = 0
    restarts: int = 0
    last_exit: str | None = None
    pump: threading.Thread | None = None


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies (else None)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return set_signal


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused id owned by someone else: not ours any more
        return False
    return True


class Supervisor:
    """Starts `specs` in order, restarts them by `policy`, stops them in reverse order."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        policy: RestartPolicy | None = None,
        log_dir: Path | None = None,
        echo: Echo | None = None,
        probe: Probe = http_probe,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique, got {names}")
        self.policy = policy or RestartPolicy()
        self.log_dir = log_dir
        self._components = [_Component(spec) for spec in specs]
        self._echo = echo
        self._probe = probe
        self._clock = clock
        self._preexec = _parent_death_signal()
        self._stopping = False

    # ---- queries ------------------------------------------------------------------------
    def status(self) -> list[ComponentStatus]:
        """One snapshot per component, in start order."""
        return [
            ComponentStatus(
                name=c.spec.name,
                state=c.state,
                pid=c.process.pid if c.process is not None and c.process.poll() is None else None,
                restarts=c.restarts,
                failures=c.failures,
                last_exit=c.last_exit,
                log_path=self.log_path(c.spec.name),
            )
            for c in self._components
        ]

    def log_path(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir is not None else None

    @property
    def failed(self) -> list[str]:
        """Names of components the supervisor gave up on."""
        return [c.spec.name for c in self._components if c.state is State.FAILED]

    @property
    def all_running(self) -> bool:
        """Every long-running component is ready (one-shot jobs do not count)."""
        return all(c.state is State.RUNNING or c.spec.oneshot for c in self._components)

    def pids(self) -> dict[str, int]:
        """Process ids of the live children (each is also its process group id)."""
        return {s.name: s.pid for s in self.status() if s.pid is not None}

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Launch every component (they become ready in the background; see `wait_ready`)."""
        self._stopping = False
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        for component in self._components:
            component.failures = 0
            self._launch(component)

    def wait_ready(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Supervise until every component is running; False on timeout, stop or a failure."""
        deadline = self._clock() + timeout_s
        while not self.all_running:
            if self.failed or (stop is not None and stop.is_set()) or self._clock() > deadline:
                return False
            self.step()
            time.sleep(0.1)
        return True

    def run(self, stop: threading.Event, tick_s: float = 0.25) -> None:
        """Supervise until `stop` is set or a component failed for good."""
        while not stop.is_set() and not self.failed:
            self.step()
            stop.wait(tick_s)

    def step(self) -> None:
        """One supervision pass: notice exits and hangs, probe, restart what is due."""
        if self._stopping:
            return
        for component in self._components:
            now = self._clock()
            if component.state in (State.STARTING, State.RUNNING):
                self._check(component, now)
            elif component.state is State.BACKOFF and now >= component.next_start_at:
                component.restarts += 1
                self._launch(component)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every component, newest first: SIGTERM to its group, then SIGKILL after the
        grace period; returns once every group is gone."""
        self._stopping = True
        live = [(c, c.process) for c in reversed(self._components) if c.process is not None]
        for component, process in live:
            if process.poll() is None:
                log.info("stopping %s (pid %d)", component.spec.name, process.pid)
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for component, process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop within %.0f s; killing it", component.spec.name, timeout_s
                )
        for component, process in live:
            # the leader may be gone while something it started still holds the group
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)
            if component.pump is not None:
                component.pump.join(timeout=2.0)
            component.state = State.STOPPED

    # ---- internals ----------------------------------------------------------------------
    def _launch(self, component: _Component) -> None:
        spec = component.spec
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
        now = self._clock()
        try:
            process = subprocess.Popen(
                list(spec.argv),
                env=env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._preexec,  # only sets the parent-death signal (docstring)
            )
        except OSError as exc:
            component.process = None
            component.started_at = now
            if spec.oneshot:
                self._finished(component, 1, f"could not be started: {exc}", now)
            else:
                self._failure(component, f"could not be started: {exc}", now)
            return
        component.process = process
        component.started_at = now
        component.next_probe_at = now
        component.missed_probes = 0
        component.state = State.STARTING if spec.startup_url else State.RUNNING
        component.pump = threading.Thread(
            target=self._pump,
            args=(spec, process),
            name=f"log-{spec.name}",
            daemon=True,
        )
        component.pump.start()
        log.info("started %s (pid %d)", spec.name, process.pid)

    def _check(self, component: _Component, now: float) -> None:
        spec = component.spec
        process = component.process
        if process is None:  # launching failed; _failure already scheduled the retry
            return
        code = process.poll()
        if code is not None:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
            if spec.oneshot:
                self._finished(component, code, how, now)
            else:
                self._failure(component, how, now)
            return
        if now < component.next_probe_at:
            return
        if component.state is State.STARTING and spec.startup_url is not None:
            component.next_probe_at = now + min(0.5, self.policy.health_interval_s)
            if self._probe(spec.startup_url, self.policy.probe_timeout_s):
                component.state = State.RUNNING
                component.next_probe_at = now + self.policy.health_interval_s
                log.info("%s is ready (%.1f s)", spec.name, now - component.started_at)
            elif now - component.started_at > spec.start_timeout_s:
                self._kill(component)
                self._failure(
                    component, f"not ready after {spec.start_timeout_s:.0f} s; killed", now
                )
            return
        if now - component.started_at >= self.policy.reset_after_s:
            component.failures = 0
        if spec.health_url is None:
            return
        component.next_probe_at = now + self.policy.health_interval_s
        if self._probe(spec.health_url, self.policy.probe_timeout_s):
            component.missed_probes = 0
            return
        component.missed_probes += 1
        if component.missed_probes >= self.policy.unhealthy_after:
            self._kill(component)
            self._failure(
                component,
                f"stopped answering {spec.health_url} ({component.missed_probes} probes); killed",
                now,
            )

    def _finished(self, component: _Component, code: int, how: str, now: float) -> None:
        component.state = State.DONE
        component.last_exit = how
        ran = now - component.started_at
        if code == 0:
            log.info("%s finished after %.0f s", component.spec.name, ran)
            return
        where = self.log_path(component.spec.name)
        log.error(
            "%s %s after %.0f s; it is a one-shot job and is not restarted%s",
            component.spec.name,
            how,
            ran,
            f"; log: {where}" if where is not None else "",
        )

    def _failure(self, component: _Component, how: str, now: float) -> None:
        ran = now - component.started_at
        if ran >= self.policy.reset_after_s:
            component.failures = 0
        component.failures += 1
        component.last_exit = how
        where = self.log_path(component.spec.name)
        hint = f"; log: {where}" if where is not None else ""
        limit = self.policy.max_failures
        if limit is not None and component.failures >= limit:
            component.state = State.FAILED
            log.error(
                "%s %s after %.1f s; giving up after %d consecutive failures%s",
                component.spec.name,
                how,
                ran,
                component.failures,
                hint,
            )
            return
        delay = self.policy.delay(component.failures)
        component.state = State.BACKOFF
        component.next_start_at = now + delay
        log.warning(
            "%s %s after %.1f s; restarting in %.1f s (failure %d)%s",
            component.spec.name,
            how,
            ran,
            delay,
            component.failures,
            hint,
        )

    @staticmethod
    def _kill(component: _Component) -> None:
        process = component.process
        if process is None:
            return
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)

    def _pump(self, spec: ProcessSpec, process: subprocess.Popen[bytes]) -> None:
        """Copy the child's output to its log file (and the echo callback) until it closes."""
        name = spec.name
        stream = process.stdout
        if stream is None:
            return
        path = self.log_path(name)
        sink: IO[str] | None = None
        if path is not None:
            sink = path.open("a", encoding="utf-8")
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            command = shlex.join(spec.argv).replace("\n", "\\n")
            sink.write(f"---- {stamp} pid {process.pid}: {command}\n")
            sink.flush()
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if sink is not None:
                    sink.write(line + "\n")
                    sink.flush()
                if self._echo is not None:
                    self._echo(name, line)
        finally:
            stream.close()
            if sink is not None:
                sink.close()
