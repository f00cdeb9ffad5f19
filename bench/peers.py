"""`inkwell bench service --peers`: other serving stacks on the same weights, digits and load.

Each peer is a server the way its documentation writes one, generated into the bench's temp
directory, serving the registered digit model exported once to TorchScript (the same weights for
every peer), run from its own virtual environment under ~/.cache/inkwell/peers/<name>. The venvs
are made on first use with pip and are not dependencies of the service. torch is the one package
they share: instead of a second multi-gigabyte download of the same wheel, a layer folder holds
hard links to this interpreter's torch and its runtime dependencies, and each peer venv sees it
through a `.pth` file (the peer's own packages stay in its own venv).
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import wrk
from bench.common import HOST, free_port, process
from bench.service import PREDICT, LoadResult, http_request, png, run_load

if TYPE_CHECKING:
    import numpy as np
    from rich.table import Table
    from torch import nn

CACHE = Path.home() / ".cache" / "inkwell" / "peers"
STAMP = ".inkwell-peer.json"
LAYER_PTH = "inkwell_torch_layer.pth"
MODEL_FILE = "digits.torchscript.pt"
PIP_TIMEOUT_S = 1800
# Micro-batching of the peers that have it, as for Inkwell's service (max 32 images).
MAX_BATCH = 32
BATCH_WAIT_MS = 5


class PeerUnavailable(RuntimeError):
    """A peer that could not be installed or started; the message says why."""


# The preprocessing every peer does, as tutorials write it: decode, grayscale, 28x28, [0, 1].
_TO_TENSOR = """
def to_tensor(data: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(data)).convert("L").resize((28, 28))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).reshape(1, 28, 28)
"""

_IMPORTS = """
import io
import os
import sys

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(int(os.environ.get("PEER_TORCH_THREADS", "1")))
"""

TEXTBOOK_SERVER = (
    '"""A textbook FastAPI + torch digit server (one file, as tutorials write it)."""\n'
    + _IMPORTS
    + "from fastapi import FastAPI, File, UploadFile\n"
    + _TO_TENSOR
    + """
model = torch.jit.load(os.environ["PEER_MODEL"])
model.eval()
app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile = File(...)) -> dict[str, int]:
    x = to_tensor(await file.read()).unsqueeze(0)
    with torch.no_grad():
        digit = int(model(x).argmax(dim=1))
    return {"prediction": digit}
"""
)

LITSERVE_SERVER = (
    '"""A LitServe digit server with its batching on (max_batch_size, batch_timeout)."""\n'
    + _IMPORTS
    + "import litserve as ls\n"
    + _TO_TENSOR
    + f"""

class DigitAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = torch.jit.load(os.environ["PEER_MODEL"]).eval()

    def decode_request(self, request):  # unannotated: LitServe then hands over the form
        return to_tensor(request["file"].file.read())

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x).argmax(dim=1)

    def unbatch(self, output: torch.Tensor) -> list[int]:
        return output.tolist()

    def encode_response(self, output):
        return {{"prediction": int(output)}}


if __name__ == "__main__":
    api = DigitAPI(max_batch_size={MAX_BATCH}, batch_timeout={BATCH_WAIT_MS / 1000})
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        host="{HOST}", port=int(sys.argv[1]), generate_client_file=False
    )
"""
)

BENTOML_SERVICE = (
    '"""A BentoML digit service with adaptive batching (a batchable API)."""\n'
    + _IMPORTS
    + "import bentoml\nfrom PIL.Image import Image as PILImage\n"
    + f"""

@bentoml.service(workers=1)
class Digits:
    def __init__(self) -> None:
        self.model = torch.jit.load(os.environ["PEER_MODEL"]).eval()

    @bentoml.api(batchable=True, max_batch_size={MAX_BATCH}, max_latency_ms=1000)
    def predict(self, files: list[PILImage]) -> list[int]:
        pixels = np.stack([np.asarray(f.convert("L").resize((28, 28))) for f in files])
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(1)
        with torch.inference_mode():
            return self.model(x).argmax(dim=1).tolist()
"""
)

# An MLflow pyfunc that reads PNG bytes: logged (in the MLServer venv, with its own mlflow)
# into an MLflow model folder that MLServer's MLflow runtime serves.
MLFLOW_LOGGER = (
    '"""Log the digit model as an MLflow pyfunc that reads PNG bytes."""\n'
    + _IMPORTS
    + "import base64\n\nimport mlflow\nimport pandas as pd\n"
    + _TO_TENSOR
    + """

def flatten(values):
    for value in values:
        if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
            yield from flatten(value)
        else:
            yield value


class DigitModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        torch.set_num_threads(int(os.environ.get("PEER_TORCH_THREADS", "1")))
        self.model = torch.jit.load(context.artifacts["model"]).eval()

    def predict(self, context, model_input, params=None) -> np.ndarray:
        if isinstance(model_input, pd.DataFrame):
            column = list(model_input.iloc[:, 0])
        elif isinstance(model_input, dict):
            column = list(next(iter(model_input.values())))
        else:
            column = list(model_input)
        # The V2 JSON request carries each PNG as a base64 string (MLServer may nest them).
        x = torch.stack([to_tensor(base64.b64decode(d)) for d in flatten(column)])
        with torch.inference_mode():
            return self.model(x).argmax(dim=1).numpy()


if __name__ == "__main__":
    # The signature tells MLServer's runtime to decode the request as a DataFrame.
    signature = mlflow.models.ModelSignature(
        inputs=mlflow.types.Schema([mlflow.types.ColSpec("string", "image")]),
        outputs=mlflow.types.Schema([mlflow.types.TensorSpec(np.dtype("int64"), (-1,))]),
    )
    mlflow.pyfunc.save_model(
        path=sys.argv[1],
        python_model=DigitModel(),
        artifacts={"model": sys.argv[2]},
        signature=signature,
    )
"""
)


def mlserver_settings(
    port: int, grpc_port: int, metrics_port: int, model_dir: Path
) -> dict[str, dict[str, Any]]:
    """settings.json and model-settings.json of an MLServer serving `model_dir` (MLflow)."""
    return {
        "settings.json": {
            "host": HOST,
            "http_port": port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "metrics_endpoint": None,
            # Inference in the server process, as every other contender here (one process);
            # MLServer 1.7's worker pool also fails to start under uvloop 0.22+.
            "parallel_workers": 0,
        },
        "model-settings.json": {
            "name": "digits",
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(model_dir)},
        },
    }


@dataclass(frozen=True)
class Peer:
    """One serving stack: what to install, the files it runs, how to call it and read it."""

    name: str
    title: str
    requirements: tuple[str, ...]
    version_of: str  # the distribution whose version the report names
    predict_path: str
    ready_path: str

    def request(self, image_png: bytes, index: int) -> wrk.WrkRequest:
        """The request body for one PNG digit, as the peer's docs send it."""
        if self.name == "mlserver":
            body = {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(image_png).decode()],
                    }
                ]
            }
            return wrk.WrkRequest(json.dumps(body).encode(), "application/json")
        field_name = "files" if self.name == "bentoml" else "file"
        return wrk.multipart(field_name, f"digit-{index}.png", image_png, "image/png")


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            "textbook",
            "textbook FastAPI + torch",
            ("fastapi", "uvicorn[standard]", "python-multipart", "pillow", "numpy"),
            "fastapi",
            "/predict",
            "/openapi.json",
        ),
        Peer(
            "litserve",
            "LitServe (batching on)",
            ("litserve", "python-multipart", "pillow", "numpy"),
            "litserve",
            "/predict",
            "/health",
        ),
        Peer(
            "mlserver",
            "MLServer (MLflow runtime)",
            ("mlserver", "mlserver-mlflow", "pillow", "numpy"),
            "mlserver",
            "/v2/models/digits/infer",
            "/v2/health/ready",
        ),
        Peer(
            "bentoml",
            "BentoML (batchable API)",
            ("bentoml", "pillow", "numpy"),
            "bentoml",
            "/predict",
            "/readyz",
        ),
    )
}


def answer_digits(body: bytes) -> list[int]:
    """The digits in a peer's answer: {"prediction": d}, a JSON list, or a V2 infer response."""
    answer = json.loads(body)
    if isinstance(answer, list):
        return [int(d) for d in answer]
    if "prediction" in answer:
        return [int(answer["prediction"])]
    if "outputs" in answer:
        return [int(d) for d in answer["outputs"][0]["data"]]
    raise ValueError(f"no digit in the answer: {body[:200]!r}")


def export_model(model: nn.Module, folder: Path) -> Path:
    """The digit model traced to TorchScript: the one weights file every peer loads."""
    import torch

    path = folder / MODEL_FILE
    with torch.inference_mode():
        traced = torch.jit.trace(model.eval(), torch.zeros(1, 1, 28, 28))
    torch.jit.save(traced, str(path))
    return path


def server_files(peer: Peer, folder: Path) -> dict[str, str]:
    """The source files a peer runs from `folder` (written there by `write_server`)."""
    files = {
        "textbook": {"textbook_server.py": TEXTBOOK_SERVER},
        "litserve": {"litserve_server.py": LITSERVE_SERVER},
        "bentoml": {"bento_service.py": BENTOML_SERVICE},
        "mlserver": {"log_mlflow_model.py": MLFLOW_LOGGER},
    }[peer.name]
    return {str(folder / name): text for name, text in files.items()}


def _distribution_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_closure() -> list[importlib.metadata.Distribution]:
    """This interpreter's torch distribution and every distribution it needs at run time.

    Extras count: torch asks for `cuda-toolkit[cufile,...]`, whose libraries its CUDA build
    links against even on a CPU-only machine.
    """
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset())]
    while todo:
        name, extras = todo.pop()
        key = _distribution_key(name)
        wanted = {"", *extras}
        if key in seen and wanted <= extras_seen[key]:
            continue
        dist = seen.get(key) or importlib.metadata.distribution(name)
        seen[key] = dist
        extras_seen.setdefault(key, set()).update(wanted)
        for line in dist.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in wanted):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return list(seen.values())


def torch_layer(cache: Path) -> Path:
    """A folder with this interpreter's torch and its dependencies (hard links where possible)."""
    closure = torch_closure()
    version = importlib.metadata.version("torch")
    layer = cache / f"_torch-{version}"
    content = {"torch": version, "distributions": sorted(d.metadata["Name"] for d in closure)}
    done = layer / STAMP
    if done.is_file() and json.loads(done.read_text()) == content:
        return layer
    partial = cache / f".partial-torch-{version}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    for dist in closure:
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file))).resolve()
            if not source.is_file() or ".." in file.parts or "__pycache__" in file.parts:
                continue  # scripts in bin/ and stale bytecode are not needed
            target = partial / file
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system: copy
                shutil.copy2(source, target)
    (partial / STAMP).write_text(json.dumps(content))
    shutil.rmtree(layer, ignore_errors=True)
    partial.rename(layer)
    return layer


def _site_packages(venv: Path) -> Path:
    python = venv / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def ensure_venv(
    peer: Peer, cache: Path = CACHE, log: Callable[[str], None] = lambda line: None
) -> Path:
    """The peer's venv python, made (venv + torch layer + pip install) on first use.

    Raises PeerUnavailable with pip's last lines when the install fails.
    """
    venv = cache / peer.name
    stamp = venv / STAMP
    torch_version = importlib.metadata.version("torch")
    wanted = {"requirements": list(peer.requirements), "torch": torch_version}
    python = venv / "bin" / "python"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and python.exists():
        return python
    cache.mkdir(parents=True, exist_ok=True)
    log(f"{peer.name}: making its venv in {venv} (first use; pip, a few minutes) ...")
    base = getattr(sys, "_base_executable", sys.executable)
    made = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        raise PeerUnavailable(f"python -m venv failed: {made.stderr.strip()[-500:]}")
    (_site_packages(venv) / LAYER_PTH).write_text(f"{torch_layer(cache)}\n")
    pip_log = cache / f"{peer.name}.pip.log"
    try:
        with pip_log.open("w") as out:
            installed = subprocess.run(
                [str(python), "-m", "pip", "install", *peer.requirements],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=PIP_TIMEOUT_S,
            )
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"pip install took over {PIP_TIMEOUT_S} s (log: {pip_log})") from exc
    if installed.returncode != 0:
        tail = "\n".join(pip_log.read_text().splitlines()[-8:])
        raise PeerUnavailable(f"pip install {' '.join(peer.requirements)} failed:\n{tail}")
    stamp.write_text(json.dumps(wanted))
    return python


def installed_version(python: Path, distribution: str) -> str:
    """A distribution's version in the peer's venv ('?' when it cannot be read)."""
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


def peer_env(model: Path, torch_threads: int, venv_python: Path) -> dict[str, str]:
    """The environment of a peer process: this one's, less the project's Python and settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("INKWELL_", "MLFLOW_"))
    }
    env.update(
        PEER_MODEL=str(model),
        PEER_TORCH_THREADS=str(torch_threads),
        PATH=f"{venv_python.parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        BENTOML_HOME=str(model.parent / "bentoml-home"),
        BENTOML_DO_NOT_TRACK="True",
    )
    return env


def command(peer: Peer, python: Path, folder: Path, port: int) -> list[str]:
    """The command line that starts `peer` on `port` with the files in `folder`."""
    bin_dir = python.parent
    if peer.name == "textbook":
        return [
            str(python), "-m", "uvicorn", "textbook_server:app", "--app-dir", str(folder),
            "--host", HOST, "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    if peer.name == "litserve":
        return [str(python), str(folder / "litserve_server.py"), str(port)]
    if peer.name == "bentoml":
        return [
            str(bin_dir / "bentoml"), "serve", "bento_service:Digits", "--working-dir",
            str(folder), "--host", HOST, "--port", str(port),
        ]  # fmt: skip
    if peer.name == "mlserver":
        return [str(bin_dir / "mlserver"), "start", str(folder / "mlserver")]
    raise ValueError(f"unknown peer {peer.name!r}")


def prepare(peer: Peer, python: Path, folder: Path, model: Path, port: int, threads: int) -> None:
    """Write the peer's files into `folder` (for MLServer: log the MLflow model, settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in server_files(peer, folder).items():
        Path(path).write_text(textwrap.dedent(text))
    if peer.name != "mlserver":
        return
    model_dir = folder / "mlflow-model"
    logged = subprocess.run(
        [str(python), str(folder / "log_mlflow_model.py"), str(model_dir), str(model)],
        env=peer_env(model, threads, python),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if logged.returncode != 0:
        raise PeerUnavailable(f"logging the MLflow model failed:\n{logged.stderr[-1500:]}")
    settings_dir = folder / "mlserver"
    settings_dir.mkdir(exist_ok=True)
    for name, content in mlserver_settings(port, free_port(), free_port(), model_dir).items():
        (settings_dir / name).write_text(json.dumps(content, indent=2))


@contextmanager
def peer_process(
    peer: Peer, python: Path, folder: Path, model: Path, threads: int
) -> Iterator[tuple[int, int]]:
    """A running peer; yields (pid, port) once it answers its readiness path."""
    port = free_port()
    try:
        prepare(peer, python, folder, model, port, threads)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"could not prepare its files: {exc}") from exc
    args = command(peer, python, folder, port)
    ready_url = f"http://{HOST}:{port}{peer.ready_path}"
    env = peer_env(model, threads, python)
    with ExitStack() as stack:
        try:
            pid = stack.enter_context(
                process(f"peer-{peer.name}", args, env, folder, ready_url, timeout_s=180)
            )
        except (RuntimeError, TimeoutError) as exc:  # exited, or never ready: its log says why
            lines = str(exc).splitlines()
            raise PeerUnavailable("\n".join([lines[0], *lines[-12:]])) from exc
        yield pid, port


INKWELL = "inkwell"


@dataclass
class PeerRun:
    """One contender of the comparison: Inkwell's service or a peer, measured or why not."""

    name: str
    title: str
    version: str
    rounds: list[LoadResult] = field(default_factory=list)
    unavailable: str | None = None  # why it was not measured

    @property
    def result(self) -> LoadResult | None:
        return LoadResult.merge(self.rounds) if self.rounds else None


def best_peer(runs: list[PeerRun]) -> PeerRun | None:
    """The measured peer (not Inkwell) with the most requests per second."""
    measured = [r for r in runs if r.name != INKWELL and r.result is not None]
    return max(measured, key=lambda r: r.result.rate if r.result else 0.0, default=None)


def summary(runs: list[PeerRun]) -> dict[str, Any]:
    """Every contender's numbers and Inkwell / best peer, as the JSON report holds them."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        row: dict[str, Any] = {"name": run.name, "title": run.title, "version": run.version}
        result = run.result
        if result is None:
            row["unavailable"] = run.unavailable or "not measured"
        else:
            row.update(
                requests=result.requests,
                errors=result.errors,
                seconds=round(result.seconds, 3),
                req_per_s=round(result.rate, 1),
                p50_ms=round(result.percentile(50), 2),
                p99_ms=round(result.percentile(99), 2),
                cpu_ms_per_request=round(result.cpu_ms_per_request, 3),
                accuracy=round(result.correct / result.requests, 4) if result.requests else None,
            )
        rows.append(row)
    report: dict[str, Any] = {"contenders": rows}
    inkwell = next((r.result for r in runs if r.name == INKWELL), None)
    best = best_peer(runs)
    if inkwell is not None and best is not None and best.result is not None:
        report["best_peer"] = best.name
        report["inkwell_over_best_peer_req_per_s"] = round(inkwell.rate / best.result.rate, 3)
        report["inkwell_p99_ms_vs_best_peer"] = [
            round(inkwell.percentile(99), 2),
            round(best.result.percentile(99), 2),
        ]
    return report


def table(runs: list[PeerRun], title: str) -> Table:
    """The rich table of the comparison (a peer that was not measured says why)."""
    from rich.table import Table

    out = Table(
        "server", "version", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors", "accuracy %",
        title=title,
    )  # fmt: skip
    for run in runs:
        result = run.result
        if result is None:
            reason = short_reason(run.unavailable or "not measured")
            out.add_row(run.title, run.version, f"[red]unavailable: {reason}[/red]")
            continue
        out.add_row(
            run.title,
            run.version,
            f"{result.rate:,.0f}",
            f"{result.percentile(50):.1f}",
            f"{result.percentile(99):.1f}",
            f"{result.cpu_ms_per_request:.2f}",
            str(result.errors),
            f"{100 * result.correct / max(result.requests, 1):.1f}",
        )
    return out


def short_reason(text: str) -> str:
    """A reason's first line and, when there is one, the last exception line of its log."""
    lines = text.splitlines() or [""]
    errors = [line.strip() for line in lines[1:] if _EXCEPTION.match(line.strip())]
    return " ".join([lines[0], *errors[-1:]])[:160]


_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception|Exit|Interrupt)\b")


def ratio_line(report: dict[str, Any]) -> str:
    """One sentence: Inkwell's req/s over the best peer's, and both p99s."""
    if "best_peer" not in report:
        return "no peer was measured, so there is no ratio"
    ours, theirs = report["inkwell_p99_ms_vs_best_peer"]
    return (
        f"Inkwell / best peer ({report['best_peer']}): "
        f"{report['inkwell_over_best_peer_req_per_s']:.2f}x req/s; p99 {ours:.1f} ms vs "
        f"{theirs:.1f} ms"
    )


def compare_peers(
    inkwell: tuple[int, int] | None,
    model: nn.Module,
    images: np.ndarray,
    labels: list[int],
    names: list[str],
    folder: Path,
    *,
    rounds: int,
    concurrency: int,
    duration: float,
    warmup: float,
    torch_threads: int,
    progress: Callable[[str], None],
    cache: Path = CACHE,
    python: Path | None = None,
) -> list[PeerRun]:
    """Inkwell's running service (when given) and each peer in `names`, measured in turns.

    All the servers run side by side (an idle one costs nothing) and take turns, round after
    round, so drifting load from other processes hits them alike. `python` runs every peer from
    that interpreter instead of its own venv (the textbook peer can run in the project's venv).
    A peer that fails to install or start is reported with its reason; the others go on.
    """
    pngs = [png(image) for image in images]
    model_file = export_model(model, folder)
    runs: list[PeerRun] = []
    servers: dict[str, tuple[int, int]] = {}
    loads: dict[str, list[tuple[bytes, list[int]]]] = {}
    answers: dict[str, Callable[[bytes], list[int]] | None] = {}
    with ExitStack() as stack:
        if inkwell is not None:
            runs.append(PeerRun(INKWELL, "Inkwell service (micro-batched)", "this tree"))
            servers[INKWELL] = inkwell
            loads[INKWELL] = [
                (http_request(PREDICT, *_multipart_parts(data, i)), [label])
                for i, (data, label) in enumerate(zip(pngs, labels, strict=True))
            ]
            answers[INKWELL] = None
        for name in names:
            peer = PEERS[name]
            run = PeerRun(peer.name, peer.title, "?")
            runs.append(run)
            try:
                venv_python = python or ensure_venv(peer, cache, progress)
                run.version = installed_version(venv_python, peer.version_of)
                progress(f"starting {peer.title} {run.version} ...")
                servers[name] = stack.enter_context(
                    peer_process(peer, venv_python, folder / name, model_file, torch_threads)
                )
            except PeerUnavailable as exc:
                run.unavailable = str(exc)
                progress(f"[red]{peer.title} unavailable[/red]: {exc}")
                continue
            requests = [peer.request(data, i) for i, data in enumerate(pngs)]
            try:
                probe(servers[name][1], peer.predict_path, requests[0])
            except PeerUnavailable as exc:
                run.unavailable = str(exc)
                progress(f"[red]{peer.title} unavailable[/red]: {exc}")
                del servers[name]
                continue
            loads[name] = [
                (http_request(peer.predict_path, r.body, r.content_type, r.headers), [label])
                for r, label in zip(requests, labels, strict=True)
            ]
            answers[name] = answer_digits
        by_name = {run.name: run for run in runs}
        for round_index in range(rounds):
            for name, server in list(servers.items()):
                run = by_name[name]
                progress(
                    f"round {round_index + 1}/{rounds} [bold]{run.title}[/bold]: "
                    f"{concurrency} clients, {duration:g} s ..."
                )
                try:
                    result = run_load(
                        server,
                        loads[name],
                        concurrency=concurrency,
                        duration=duration,
                        warmup=warmup,
                        name=name,
                        images_per_request=1,
                        answer=answers[name],
                    )
                except (OSError, EOFError, ValueError, KeyError) as exc:
                    # Connection reset, a truncated or unreadable answer: out of the race.
                    if name == INKWELL:
                        raise
                    run.rounds.clear()
                    run.unavailable = f"failed under load: {type(exc).__name__}: {exc}"
                    progress(f"[red]{run.title} {run.unavailable}[/red]")
                    del servers[name]
                    continue
                run.rounds.append(result)
    return runs


def probe(port: int, path: str, request: wrk.WrkRequest) -> list[int]:
    """One request before the load: a peer that cannot answer it is out, with its answer."""
    import httpx

    url = f"http://{HOST}:{port}{path}"
    headers = {"Content-Type": request.content_type, **request.headers}
    try:
        answer = httpx.post(url, content=request.body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise PeerUnavailable(f"no answer to a first request: {exc!r}") from exc
    if answer.status_code != 200:
        raise PeerUnavailable(
            f"answered {answer.status_code} to a first request: {answer.text[-600:]}"
        )
    try:
        return answer_digits(answer.content)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise PeerUnavailable(f"answered without a digit: {answer.text[:400]}") from exc


def _multipart_parts(data: bytes, index: int) -> tuple[bytes, str]:
    request = wrk.multipart("image", f"digit-{index}.png", data, "image/png")
    return request.body, request.content_type
