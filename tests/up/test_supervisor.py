"""The supervisor with real child processes: restarts with backoff, hangs, giving up, and
stopping that leaves no process behind (process groups, parent-death signal)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from inkwell_app.supervisor import (
    ProcessSpec,
    RestartPolicy,
    State,
    Supervisor,
    http_probe,
)
from tests.harness import free_port

PY = sys.executable
FAST = RestartPolicy(
    initial_delay_s=0.05, factor=2.0, max_delay_s=0.2, reset_after_s=60.0, max_failures=None
)


def python(code: str) -> tuple[str, ...]:
    return (PY, "-c", code)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, step: Callable[[], None] | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def supervisors():
    made: list[Supervisor] = []

    def make(*specs: ProcessSpec, **kwargs) -> Supervisor:
        supervisor = Supervisor(list(specs), **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.stop(timeout_s=2.0)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RestartPolicy(initial_delay_s=1.0, factor=2.0, max_delay_s=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_process_names_must_be_unique() -> None:
    spec = ProcessSpec("a", python("pass"))
    with pytest.raises(ValueError, match="unique"):
        Supervisor([spec, spec])


@pytest.mark.integration
def test_crashed_process_is_restarted_and_the_crash_logged(
    supervisors, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inkwell_app.supervisor")
    crasher = ProcessSpec(
        "crasher", python("import sys, time; print('hello'); time.sleep(0.2); sys.exit(3)")
    )
    supervisor = supervisors(crasher, policy=FAST, log_dir=tmp_path)
    supervisor.start()
    first_pid = supervisor.pids()["crasher"]
    assert wait_for(lambda: supervisor.status()[0].restarts >= 2, step=supervisor.step)
    status = supervisor.status()[0]
    assert status.last_exit == "exited (3)"
    assert status.state in (State.RUNNING, State.BACKOFF)
    assert not alive(first_pid)
    assert "restarting in" in caplog.text and "crasher exited (3)" in caplog.text
    log_text = (tmp_path / "crasher.log").read_text()
    assert log_text.count("hello") >= 2  # every run's output is kept, each under its header
    assert log_text.count("---- ") >= 2


@pytest.mark.integration
def test_long_run_forgets_earlier_failures(supervisors) -> None:
    policy = RestartPolicy(initial_delay_s=0.05, reset_after_s=0.2, max_failures=2)
    spec = ProcessSpec("slow-crasher", python("import time, sys; time.sleep(0.4); sys.exit(1)"))
    supervisor = supervisors(spec, policy=policy)
    supervisor.start()
    assert wait_for(lambda: supervisor.status()[0].restarts >= 3, step=supervisor.step)
    assert supervisor.failed == []  # two failures in a row would have given up
    assert supervisor.status()[0].failures == 1


@pytest.mark.integration
def test_gives_up_after_max_consecutive_failures(
    supervisors, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inkwell_app.supervisor")
    policy = RestartPolicy(initial_delay_s=0.02, max_delay_s=0.05, max_failures=3)
    keeper = ProcessSpec("keeper", python("import time; time.sleep(60)"))
    broken = ProcessSpec("broken", python("raise SystemExit(2)"))
    supervisor = supervisors(keeper, broken, policy=policy)
    supervisor.start()
    stop = threading.Event()
    timer = threading.Timer(20.0, stop.set)
    timer.start()
    try:
        supervisor.run(stop, tick_s=0.02)  # returns by itself once a component failed for good
    finally:
        timer.cancel()
    assert not stop.is_set()
    assert supervisor.failed == ["broken"]
    states = {s.name: s.state for s in supervisor.status()}
    assert states == {"keeper": State.RUNNING, "broken": State.FAILED}
    assert "giving up after 3 consecutive failures" in caplog.text


@pytest.mark.integration
def test_one_shot_job_runs_once_and_its_failure_stops_nothing(
    supervisors, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inkwell_app.supervisor")
    server = ProcessSpec("server", python("import time; time.sleep(60)"))
    job = ProcessSpec("job", python("print('working')"), oneshot=True)
    broken_job = ProcessSpec("broken-job", python("raise SystemExit(4)"), oneshot=True)
    supervisor = supervisors(server, job, broken_job, policy=FAST)
    supervisor.start()
    assert supervisor.all_running  # jobs are not waited for
    done = lambda: all(s.state is not State.RUNNING for s in supervisor.status()[1:])  # noqa: E731
    assert wait_for(done, step=supervisor.step)
    for _ in range(10):
        supervisor.step()
        time.sleep(0.05)
    states = {s.name: (s.state, s.restarts, s.last_exit) for s in supervisor.status()}
    assert states["job"] == (State.DONE, 0, "exited (0)")
    assert states["broken-job"] == (State.DONE, 0, "exited (4)")
    assert states["server"][0] is State.RUNNING
    assert supervisor.failed == []
    assert "job finished" in caplog.text and "not restarted" in caplog.text


@pytest.mark.integration
def test_program_that_cannot_start_is_retried(supervisors, tmp_path: Path) -> None:
    missing = ProcessSpec("missing", (str(tmp_path / "no-such-program"),))
    supervisor = supervisors(missing, policy=FAST)
    supervisor.start()
    assert supervisor.status()[0].last_exit.startswith("could not be started")
    assert wait_for(lambda: supervisor.status()[0].failures >= 2, step=supervisor.step)


@pytest.mark.integration
def test_process_that_never_becomes_ready_is_killed_and_restarted(supervisors) -> None:
    never_ready: Callable[[str, float], bool] = lambda url, timeout: False  # noqa: E731
    spec = ProcessSpec(
        "stuck",
        python("import time; time.sleep(60)"),
        ready_url="http://x/ready",
        start_timeout_s=0.3,
    )
    supervisor = supervisors(spec, policy=FAST, probe=never_ready)
    supervisor.start()
    first_pid = supervisor.pids()["stuck"]
    assert supervisor.status()[0].state is State.STARTING
    assert wait_for(lambda: supervisor.status()[0].restarts >= 1, step=supervisor.step)
    assert "not ready after" in (supervisor.status()[0].last_exit or "")
    assert wait_for(lambda: not alive(first_pid))


@pytest.mark.integration
def test_process_that_stops_answering_health_checks_is_restarted(supervisors) -> None:
    answers = {"ok": True}
    probe: Callable[[str, float], bool] = lambda url, timeout: answers["ok"]  # noqa: E731
    policy = RestartPolicy(initial_delay_s=0.05, health_interval_s=0.05, unhealthy_after=2)
    spec = ProcessSpec("hangs", python("import time; time.sleep(60)"), health_url="http://x/h")
    supervisor = supervisors(spec, policy=policy, probe=probe)
    supervisor.start()
    assert wait_for(lambda: supervisor.all_running, step=supervisor.step)
    hung_pid = supervisor.pids()["hangs"]
    answers["ok"] = False
    assert wait_for(lambda: supervisor.status()[0].failures >= 1, step=supervisor.step)
    assert "stopped answering" in (supervisor.status()[0].last_exit or "")
    assert not alive(hung_pid)
    answers["ok"] = True
    assert wait_for(lambda: supervisor.all_running, step=supervisor.step)
    assert supervisor.pids()["hangs"] != hung_pid


@pytest.mark.integration
def test_http_probe_waits_for_a_real_server(supervisors, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    assert not http_probe(url, 0.5)
    server = ProcessSpec(
        "web",
        (PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)),
        health_url=url,
    )
    supervisor = supervisors(server)
    supervisor.start()
    assert supervisor.wait_ready(timeout_s=20.0)
    assert http_probe(url, 1.0)


GRANDPARENT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a child that ignores the polite request
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.integration
def test_stop_kills_the_whole_process_group_even_when_sigterm_is_ignored(
    supervisors, tmp_path: Path
) -> None:
    spec = ProcessSpec("stubborn", python(GRANDPARENT))
    supervisor = supervisors(spec, log_dir=tmp_path)
    supervisor.start()
    log_file = tmp_path / "stubborn.log"
    assert wait_for(lambda: log_file.exists() and log_file.read_text().count("\n") >= 2)
    grandchild = int(log_file.read_text().splitlines()[1])
    child = supervisor.pids()["stubborn"]
    assert os.getpgid(grandchild) == child  # the group the supervisor made
    started = time.monotonic()
    supervisor.stop(timeout_s=0.5)
    assert time.monotonic() - started < 8.0
    assert wait_for(lambda: not alive(child) and not alive(grandchild), timeout=5.0)
    assert supervisor.status()[0].state is State.STOPPED


ORPHANED = """
import sys, time
from inkwell_app.supervisor import ProcessSpec, Supervisor
sleeper = ProcessSpec('sleeper', (sys.executable, '-c', 'import time; time.sleep(120)'))
supervisor = Supervisor([sleeper])
supervisor.start()
print(supervisor.pids()['sleeper'], flush=True)
time.sleep(120)
"""


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_children_die_with_a_supervisor_killed_by_sigkill() -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    parent = subprocess.Popen([PY, "-c", ORPHANED], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_for(lambda: not alive(child), timeout=10.0)
    finally:
        parent.kill()
        parent.wait()
