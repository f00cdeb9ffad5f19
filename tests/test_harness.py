"""The suite's process harness: ports, PNGs, child processes, and the integration-mark guard."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.harness import (
    Process,
    free_port,
    png,
    require_integration_mark,
    wait_until,
    watch_spawns,
)


def test_free_port_can_be_listened_on_right_away() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_png_turns_mnist_ink_into_dark_ink_and_resizes() -> None:
    image = np.zeros((28, 28), np.uint8)
    image[10:18, 10:18] = 255
    as_is = np.asarray(Image.open(io.BytesIO(png(image))))
    scanned = Image.open(io.BytesIO(png(image, dark_ink=True, size=(56, 56))))
    assert as_is.tolist() == image.tolist()
    assert scanned.size == (56, 56)
    pixels = np.asarray(scanned)
    assert pixels[0, 0] == 255 and pixels[28, 28] == 0


@pytest.mark.integration
def test_stopping_a_process_stops_what_it_started(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); print('ready', flush=True); time.sleep(60)"
    )
    proc = Process("parent", [sys.executable, "-c", script], {}, tmp_path / "parent.log")
    wait_until(lambda: "ready" in proc.output(), 30, "the parent to start its child", proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    proc.stop(timeout=10)
    time.sleep(0.2)
    assert not proc.alive()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.integration
def test_waiting_fails_early_with_the_log_of_a_process_that_exited(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    proc = Process("broken", argv, {}, tmp_path / "broken.log")
    started = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"(?s)broken exited while waiting for its port.*no model here"
    ):
        wait_until(lambda: False, 60, "its port", proc)
    assert time.monotonic() - started < 30


@pytest.mark.integration
def test_watch_spawns_records_every_child_process(tmp_path: Path) -> None:
    with watch_spawns() as started:
        Process("one", [sys.executable, "-c", "pass"], {}, tmp_path / "one.log").stop()
    assert len(started) == 1 and "pass" in started[0]


def test_library_lookups_by_lazy_imports_are_not_counted_as_started_processes() -> None:
    import ctypes.util

    with watch_spawns() as started:
        ctypes.util.find_library("definitely-not-a-library-inkwell")
    assert started == []


def test_mlflow_probing_git_is_not_counted_as_a_started_process() -> None:
    with watch_spawns() as started:
        subprocess.run(["git", "version"], capture_output=True, check=False)
    assert started == []


def test_a_test_that_started_a_process_without_the_mark_fails(
    request: pytest.FixtureRequest,
) -> None:
    with pytest.raises(pytest.fail.Exception, match="not marked integration"):
        require_integration_mark(request.node, ["python -c pass"])
    require_integration_mark(request.node, [])


@pytest.mark.integration
def test_an_integration_test_may_start_processes(request: pytest.FixtureRequest) -> None:
    require_integration_mark(request.node, ["python -c pass"])
