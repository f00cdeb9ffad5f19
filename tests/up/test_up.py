"""`inkwell up` as a real subprocess: it starts every component, serves the page, restarts a
crashed component, and Ctrl-C / SIGTERM stop everything, leaving no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.stack import API_KEY, Stack, alive
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def component_pids(stack: Stack) -> dict[str, int]:
    """The direct children of `inkwell up`, by the component their command line runs."""
    assert stack.process is not None
    found: dict[str, int] = {}
    for child in psutil.Process(stack.process.pid).children():
        try:
            line = child.cmdline()
        except psutil.Error:  # exited (a zombie until the supervisor reaps it)
            continue
        if "service" in line:
            found[f"service-{line[line.index('--variant') + 1]}"] = child.pid
        elif "router" in line or "trainer" in line:
            found[line[line.index("inkwell") + 1]] = child.pid
        elif any("prometheus" in part for part in line[:1]):
            found["prometheus"] = child.pid
    return found


@pytest.mark.slow
def test_up_runs_every_component_and_ctrl_c_leaves_no_process(
    start_stack: Callable[..., Stack],
) -> None:
    stack = start_stack(prometheus="auto")
    output = stack.output()
    assert stack.url in output and API_KEY in output  # the URLs and keys are printed
    pids = component_pids(stack)
    assert {"service-stable", "service-canary", "trainer", "router"} <= set(pids)
    for pid in pids.values():  # each in its own process group, so a stop reaches its children
        assert os.getpgid(pid) == pid
    assert httpx.get(f"{stack.url}/readyz").json()["served_versions"]["stable"] == "1"
    assert "<canvas" in httpx.get(f"{stack.url}/").text
    assert httpx.get(f"{stack.service_url('canary')}/healthz").status_code == 200
    assert httpx.get(f"{stack.trainer_url}/healthz").status_code == 200
    if shutil.which("prometheus"):  # installed: `auto` starts it, and it scrapes everything
        assert "prometheus" in pids
        prometheus = f"http://127.0.0.1:{stack.ports['prometheus']}"

        def all_targets_up() -> bool:
            targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
            return len(targets) == 4 and all(t["health"] == "up" for t in targets)

        wait_until(all_targets_up, 60, "Prometheus to scrape all four components")
    everything = stack.children()
    assert stack.stop(signal.SIGINT) == 0
    assert "no component is left running" in stack.output()
    left = [pid for pid in everything if alive(pid)]
    assert left == [], f"left running: {left}"


@pytest.mark.slow
def test_crashed_component_is_restarted_and_sigterm_stops_everything(
    start_stack: Callable[..., Stack],
) -> None:
    stack = start_stack(components=("service-stable", "service-canary", "router"))
    canary = component_pids(stack)["service-canary"]
    os.kill(canary, signal.SIGKILL)
    wait_until(
        lambda: component_pids(stack).get("service-canary", canary) != canary,
        60,
        "the canary service to be restarted",
    )
    wait_until(
        lambda: httpx.get(f"{stack.service_url('canary')}/healthz").status_code == 200,
        120,
        "the restarted canary to answer",
    )
    assert "service-canary killed by SIGKILL" in stack.output()
    assert "restarting in" in stack.output()
    everything = stack.children()
    assert stack.stop(signal.SIGTERM) == 0
    assert [pid for pid in everything if alive(pid)] == []


def test_port_in_use_is_a_clear_error_before_anything_starts(
    mnist_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"  # empty: the port is checked before the registry is seeded
    home.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = Stack(home=home, mnist=mnist_dir, log_path=tmp_path / "up.log")
        env = {**stack.env(), "INKWELL_UP_ROUTER_PORT": str(port)}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "inkwell", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port} for router is already in use" in result.stdout
    assert "INKWELL_UP_ROUTER_PORT" in result.stdout
    assert time.monotonic() - started < 60
    assert list(home.iterdir()) == []  # nothing was started, seeded or trained


@pytest.mark.slow
def test_fresh_home_without_data_serves_shipped_digits_and_cheques(
    tmp_path: Path, mnist_dir: Path
) -> None:
    from PIL import Image

    from inkwell.cheques.pools import load_pool
    from inkwell.cheques.synth import generate_fields
    from tests.e2e.stack import ARTIFACTS

    home = tmp_path / "home"  # empty: no registry, no MNIST beside it, no download allowed
    stack = Stack(
        home=home,
        mnist=tmp_path / "no-mnist",
        log_path=ARTIFACTS / "up" / "fresh-home.log",
        settings={"INKWELL_ALLOW_DOWNLOAD": "0"},
    )
    started = time.monotonic()
    try:
        stack.start(300.0)
        digit = load_pool("test", mnist_dir).images[0]  # the test's own copy of a digit
        with stack.client() as client:
            predicted = client.post("/v1/digits/predict", json={"pixels": digit.tolist()})
            answers = []
            for field in generate_fields(load_pool("test", mnist_dir), 8, seed=7):
                buffer = tmp_path / "amount.png"
                Image.fromarray(field.image).save(buffer)
                read = client.post(
                    "/v1/cheques/read",
                    content=buffer.read_bytes(),
                    headers={"content-type": "image/png"},
                )
                answers.append(f"{read.status_code} {read.text[:120]}")
                if read.status_code == 200:
                    break
        seconds = time.monotonic() - started
        assert predicted.status_code == 200, predicted.text
        assert read.status_code == 200, "\n".join(answers)
        assert read.json()["model_version"] == "1"
        output = stack.output()
        assert "seeded inkwell-digits v1 (stable) from the shipped model" in output
        assert "seeded inkwell-cheques v1 (stable) from the shipped model" in output
        assert "training the base model" not in output
        mnist = stack.trainer_status()["mnist"]
        assert mnist["found"] is False
        assert (
            "Retraining needs MNIST" in mnist["message"] and "INKWELL_DATA_DIR" in mnist["message"]
        )
        assert not (home / "data").exists()  # nothing tried to download
        print(f"fresh home: digit and cheque answered {seconds:.1f} s after starting inkwell up")
        assert seconds < 120  # the target is 30 s on an idle laptop; this machine is shared
    finally:
        stack.stop(timeout=30)
        stack.kill()
        stack.save_logs()
