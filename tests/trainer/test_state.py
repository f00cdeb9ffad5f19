"""Who owns a job: a retrain whose process died is recognised as dead."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from trainer.state import process_alive


def test_a_live_local_process_is_alive_and_a_finished_one_is_not() -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert process_alive(socket.gethostname(), os.getpid())
    assert not process_alive(socket.gethostname(), finished.pid)


def test_a_job_on_another_host_is_presumed_alive_until_it_goes_stale() -> None:
    now = datetime.now(UTC)
    assert process_alive("another-host", 1, now)
    assert process_alive("another-host", 1, None)
    assert not process_alive("another-host", 1, (now - timedelta(hours=2)).replace(tzinfo=None))
