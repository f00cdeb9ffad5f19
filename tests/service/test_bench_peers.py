"""`inkwell bench service --peers`: the peers' generated servers, their answers, the report."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from rich.console import Console

from bench.common import stop_tree
from bench.peers import (
    INKWELL,
    PEERS,
    PeerRun,
    answer_digits,
    compare_peers,
    export_model,
    mlserver_settings,
    ratio_line,
    server_files,
    short_reason,
    summary,
    table,
    torch_closure,
)
from bench.service import LoadResult, png
from inkwell.model import DigitNet
from inkwell.registry import Registry
from tests.service.conftest import TrainedRegistry


def load(name: str, requests: int, seconds: float, latency_ms: float, cpu_s: float) -> LoadResult:
    return LoadResult(
        name,
        requests,
        errors=0,
        seconds=seconds,
        latencies_ms=[latency_ms] * requests,
        correct=requests,
        service_cpu_s=cpu_s,
    )


def test_answer_digits_reads_the_answer_of_every_peer() -> None:
    assert answer_digits(b'{"prediction": 7}') == [7]  # textbook FastAPI, LitServe
    assert answer_digits(b"[3]") == [3]  # BentoML's batchable API
    v2 = {"model_name": "digits", "outputs": [{"name": "output-1", "data": [5]}]}
    assert answer_digits(json.dumps(v2).encode()) == [5]  # MLServer


def test_answer_without_a_digit_is_an_error_naming_the_answer() -> None:
    with pytest.raises(ValueError, match="no digit in the answer"):
        answer_digits(b'{"detail": "Not Found"}')


@pytest.mark.parametrize("name", sorted(PEERS))
def test_every_peer_server_file_compiles_and_loads_the_shared_weights(
    name: str, tmp_path: Path
) -> None:
    files = server_files(PEERS[name], tmp_path)
    assert files and all(Path(path).parent == tmp_path for path in files)
    for path, text in files.items():
        compile(text, path, "exec")
        assert "torch.jit.load" in text  # the one exported TorchScript file, not new weights
        assert "PEER_TORCH_THREADS" in text  # the same torch threads as Inkwell's service


def test_batching_peers_batch_up_to_the_same_size_as_inkwell() -> None:
    litserve = next(iter(server_files(PEERS["litserve"], Path("/x")).values()))
    bentoml = next(iter(server_files(PEERS["bentoml"], Path("/x")).values()))
    assert "max_batch_size=32" in litserve and "batch_timeout=" in litserve
    assert "batchable=True" in bentoml and "max_batch_size=32" in bentoml


def test_mlserver_serves_the_mlflow_model_folder_with_its_mlflow_runtime() -> None:
    files = mlserver_settings(8000, 8001, 8002, Path("/tmp/m"))
    model = files["model-settings.json"]
    assert model["implementation"] == "mlserver_mlflow.MLflowRuntime"
    assert model["parameters"]["uri"] == "/tmp/m"
    ports = [files["settings.json"][key] for key in ("http_port", "grpc_port", "metrics_port")]
    assert ports == [8000, 8001, 8002]


def test_peer_requests_carry_the_same_png_bytes() -> None:
    data = png(np.eye(28, dtype=np.uint8) * 255)
    body = json.loads(PEERS["mlserver"].request(data, 0).body)
    assert base64.b64decode(body["inputs"][0]["data"][0]) == data
    assert body["inputs"][0]["datatype"] == "BYTES"
    for name, field_name in (("textbook", "file"), ("litserve", "file"), ("bentoml", "files")):
        request = PEERS[name].request(data, 3)
        head = f"Content-Type: {request.content_type}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + request.body)
        (part,) = list(message.iter_parts())
        assert part.get_param("name", header="content-disposition") == field_name
        assert part.get_content() == data


def test_exported_model_gives_the_registered_models_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DigitNet().eval()
    path = export_model(model, tmp_path)
    x = torch.rand(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(torch.jit.load(str(path))(x), model(x), atol=1e-5)


def test_torch_layer_holds_torch_and_what_it_needs_at_run_time() -> None:
    names = {dist.metadata["Name"].lower() for dist in torch_closure()}
    assert {"torch", "sympy", "filelock", "jinja2"} <= names
    assert "inkwell" not in names and "fastapi" not in names  # the peers stay isolated


def test_summary_compares_inkwell_with_the_fastest_measured_peer() -> None:
    runs = [
        PeerRun(INKWELL, "Inkwell", "tree", [load(INKWELL, 3000, 2.0, 9.0, 1.5)]),
        PeerRun("textbook", "textbook", "0.1", [load("textbook", 1000, 2.0, 30.0, 2.0)]),
        PeerRun("litserve", "LitServe", "0.2", [load("litserve", 600, 1.0, 20.0, 0.6)] * 2),
        PeerRun("bentoml", "BentoML", "?", unavailable="pip install bentoml failed:\nno wheel"),
    ]
    report = summary(runs)
    assert report["best_peer"] == "litserve"  # 600 req/s, ahead of the textbook's 500
    assert report["inkwell_over_best_peer_req_per_s"] == 2.5
    assert report["inkwell_p99_ms_vs_best_peer"] == [9.0, 20.0]
    rows = {row["name"]: row for row in report["contenders"]}
    assert rows["textbook"]["cpu_ms_per_request"] == 2.0
    assert rows["textbook"]["accuracy"] == 1.0
    assert rows["bentoml"]["unavailable"].startswith("pip install bentoml failed")
    assert "req_per_s" not in rows["bentoml"]
    assert ratio_line(report).startswith("Inkwell / best peer (litserve): 2.50x req/s")


def test_summary_without_a_measured_peer_has_no_ratio() -> None:
    runs = [
        PeerRun(INKWELL, "Inkwell", "tree", [load(INKWELL, 10, 1.0, 5.0, 0.1)]),
        PeerRun("mlserver", "MLServer", "?", unavailable="exited (1)"),
    ]
    report = summary(runs)
    assert "best_peer" not in report
    assert ratio_line(report) == "no peer was measured, so there is no ratio"


def test_table_shows_each_peers_numbers_and_why_one_is_missing() -> None:
    runs = [
        PeerRun("textbook", "textbook FastAPI", "0.115", [load("textbook", 1234, 1.0, 4.0, 0.5)]),
        PeerRun("mlserver", "MLServer", "?", unavailable="mlserver exited (1):\ntraceback"),
    ]
    console = Console(record=True, width=200)
    console.print(table(runs, "peers"))
    text = console.export_text()
    assert "1,234" in text and "0.41" in text  # req/s, CPU ms per request
    assert "unavailable: mlserver exited (1):" in text and "traceback" not in text


@pytest.mark.integration
@pytest.mark.slow
def test_textbook_fastapi_peer_serves_the_registered_model_under_load(
    trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    model = Registry(trained_registry.settings()).load_digit_model("stable").model
    images, labels = trained_registry.test_images[:64], trained_registry.test_labels[:64]
    with torch.inference_mode():
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        right = (model(x).argmax(dim=1).numpy() == labels).nonzero()[0][:16]
    assert len(right) >= 8
    runs = compare_peers(
        None,
        model,
        images[right],
        labels[right].tolist(),
        ["textbook"],
        tmp_path,
        rounds=1,
        concurrency=2,
        duration=2.0,
        warmup=0.3,
        torch_threads=1,
        progress=lambda line: None,
        python=Path(sys.executable),  # the project's venv has FastAPI: no peer venv needed
    )
    (run,) = runs
    assert run.unavailable is None, run.unavailable
    result = run.result
    assert result is not None and result.requests > 0 and result.errors == 0
    # Every digit the model reads right in-process, the peer reads right too: same weights.
    assert result.correct == result.requests
    assert 0 < result.percentile(50) <= result.percentile(99)
    assert result.cpu_ms_per_request > 0
    row = summary(runs)["contenders"][0]
    assert row["req_per_s"] > 0 and row["version"] != "?"


def test_short_reason_keeps_the_first_line_and_the_last_exception() -> None:
    log = "peer-x exited (1):\nTraceback (most recent call last):\n  File 'a.py'\n"
    log += "ImportError: libcufile"
    assert short_reason(log) == "peer-x exited (1): ImportError: libcufile"
    assert short_reason("pip install failed") == "pip install failed"


@pytest.mark.integration
def test_stopping_a_bench_process_stops_the_children_it_left_behind(tmp_path: Path) -> None:
    # A parent that dies on SIGTERM and leaves its child running, as LitServe's server does.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "parent.log"
    with log.open("wb") as out:
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=out)
    deadline = time.monotonic() + 30
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = psutil.Process(int(log.read_text()))
    stop_tree(parent)
    assert parent.returncode is not None
    with pytest.raises(psutil.NoSuchProcess):
        child.wait(timeout=5)
        child.status()
