"""Real processes for the router's end-to-end tests: inference services (one per alias), the
router, Prometheus; tiny trained models in a temporary MLflow sqlite registry; a client that
sends predictions and delayed labels through the router and records every answer.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from tests.harness import Process, free_port, png, wait_until
from tests.harness import child_env as base_env

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "e2e-admin-key-0123456789"
SERVICE_KEY = "e2e-upload-key-0123456789"
CLI = "from inkwell_app.cli import main; main()"


# ---- processes -----------------------------------------------------------------------------


def start_service(
    variant: str, home: Path, mnist: Path, log_dir: Path, **settings: Any
) -> tuple[Process, str]:
    """`inkwell service --variant ...` on a free port; returns once its /healthz answers."""
    port = free_port()
    env = base_env(home, mnist)
    env.update(
        INKWELL_SERVICE_API_KEYS=SERVICE_KEY,
        INKWELL_SERVICE_POLL_INTERVAL_S="0.5",
        INKWELL_SERVICE_TORCH_THREADS="1",
    )
    env.update({f"INKWELL_SERVICE_{k.upper()}": str(v) for k, v in settings.items()})
    name = f"service-{variant}-{port}"
    proc = Process(
        name,
        [sys.executable, "-c", CLI, "service", "--variant", variant, "--port", str(port)],
        env,
        log_dir / f"{name}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 90, f"{name}", proc)
    return proc, url


def start_router(
    home: Path,
    mnist: Path,
    log_dir: Path,
    stable_url: str,
    canary_url: str,
    port: int | None = None,
    **settings: Any,
) -> tuple[Process, str]:
    """`inkwell router` with short analysis intervals; returns once it is ready."""
    port = port or free_port()
    env = base_env(home, mnist)
    defaults: dict[str, Any] = {
        "admin_api_key": ADMIN_KEY,
        "analysis_interval_s": 2,
        "registry_poll_s": 0.3,
        "probe_interval_s": 0.2,
        "state_refresh_s": 0.2,
        "canary_timeout_s": 1.0,
        # no check fails below its minimum: at a 5 % step a 2 s interval sees a handful of
        # canary requests, so a bad canary is caught within two intervals only with small ones
        "min_requests": 5,
        "min_shadow": 10,
        "min_labels": 5,
        "min_agreement": 0.85,
        "accuracy_drop": 0.1,
        "reload_timeout_s": 30,
        # this machine's cores are shared with other processes: under the full suite a good
        # canary's p95 over its first ~30 requests has been 180 ms above stable's; the slow
        # canary (test_router_e2e.py) adds 700 ms to every request
        "latency_margin_ms": 250,
    }
    defaults.update(settings)
    env.update({f"INKWELL_ROUTER_{k.upper()}": str(v) for k, v in defaults.items()})
    name = f"router-{port}"
    proc = Process(
        name,
        [
            sys.executable,
            "-c",
            CLI,
            "router",
            "--port",
            str(port),
            "--stable-url",
            stable_url,
            "--canary-url",
            canary_url,
            "--log-level",
            "info",
        ],
        env,
        log_dir / f"{name}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, name, proc)
    return proc, url


def prometheus_config(targets: dict[str, str], interval: str = "500ms") -> str:
    jobs = []
    for job, url in targets.items():
        host = url.removeprefix("http://")
        jobs.append(
            f"  - job_name: {job}\n"
            f"    scrape_interval: {interval}\n"
            f"    static_configs:\n"
            f"      - targets: ['{host}']\n"
        )
    return f"global:\n  scrape_interval: {interval}\nscrape_configs:\n" + "".join(jobs)


def start_prometheus(targets: dict[str, str], workdir: Path, log_dir: Path) -> tuple[Process, str]:
    """Debian's `prometheus` with a temporary config and data dir on a free port."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(targets))
    data = workdir / "prometheus-data"
    data.mkdir(exist_ok=True)
    name = f"prometheus-{port}"
    proc = Process(
        name,
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)},
        log_dir / f"{name}.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 60, "prometheus", proc)
    return proc, url


# ---- models ---------------------------------------------------------------------------------


@dataclass
class Models:
    """Tiny DigitNets: a base, a good fine-tune of it, one taught wrong labels, one that
    answers NaN on any real digit (but passes the service's warm-up on a blank image)."""

    base: torch.nn.Module
    good: torch.nn.Module
    wrong: torch.nn.Module
    broken: torch.nn.Module


def train_models(mnist: Path) -> Models:
    from inkwell.data import load_split
    from inkwell.model import DigitNet, ModelConfig
    from inkwell.train import split_tensors
    from inkwell.training import TrainConfig, fit, seed_everything

    torch.set_num_threads(1)
    x, y = split_tensors(load_split("train", mnist))
    seed_everything(0)
    # two stem convolutions, as the thresholds below were set for: with one, this seconds-trained
    # base is noisier (~84 %) and a genuinely better canary disagrees with it on >15 % of
    # digits, which the shadow-agreement check (rightly) treats as a changed model
    base = DigitNet(ModelConfig(width=8, stem_convs=2))
    fit(base, (x[:8000], y[:8000]), TrainConfig(epochs=1, batch_size=64, augment=False))
    good = copy.deepcopy(base)
    fit(
        good,
        (x[20000:23000], y[20000:23000]),
        TrainConfig(epochs=1, batch_size=64, seed=1, augment=False, lr=3e-4, schedule="constant"),
    )
    wrong = copy.deepcopy(base)
    fit(
        wrong,
        (x[30000:33000], (y[30000:33000] + 1) % 10),
        TrainConfig(epochs=1, batch_size=64, seed=2, augment=False),
    )
    broken = copy.deepcopy(base)
    with torch.no_grad():
        # channel 0 fires only on ink; the next layer multiplies it past float32's range and a
        # later one adds +inf to -inf: NaN for every real digit, finite on an all-blank image
        convs = [m for m in broken.features if isinstance(m, torch.nn.Conv2d)]
        bn = next(m for m in broken.features if isinstance(m, torch.nn.BatchNorm2d))
        convs[0].weight[0] = 1.0
        bn.running_mean[0], bn.running_var[0], bn.weight[0], bn.bias[0] = 0.0, 1.0, 1.0, 0.0
        convs[1].weight[:, 0] = 1e38
    for model in (base, good, wrong, broken):
        model.eval()
    return Models(base, good, wrong, broken)


def register(home: Path, model: torch.nn.Module, aliases: tuple[str, ...], note: str) -> str:
    """Register `model` in the test registry; returns the new version."""
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings

    registry = Registry(CoreSettings(home=home))
    with registry.start_run(f"e2e-{note}") as run:
        info = registry.register_digit_model(
            model, run.info.run_id, meta={"note": note}, tags={"e2e": note}, aliases=aliases
        )
    return info.version


def registry_state(home: Path, version: str) -> tuple[tuple[str, ...], dict[str, str]]:
    from inkwell.registry import Registry
    from inkwell.settings import CoreSettings

    info = Registry(CoreSettings(home=home)).get_version("inkwell-digits", version)
    return info.aliases, dict(info.tags)


# ---- images and traffic ------------------------------------------------------------------


@dataclass
class Digit:
    png: bytes
    label: int


def mnist_pngs(mnist: Path, n: int = 400) -> list[Digit]:
    """MNIST test digits as dark-on-light PNG files (as a scanner would give them)."""
    from inkwell.data import load_split

    split = load_split("test", mnist)
    digits = []
    for image, label in zip(split.images[:n], split.labels[:n], strict=True):
        digits.append(Digit(png(image, dark_ink=True), int(label)))
    return digits


@dataclass
class Answer:
    at: float
    user: str
    status: int
    variant: str | None
    version: str | None
    error: str = ""
    fallback: str = ""  # the router's X-Inkwell-Fallback: the canary failed, stable answered


@dataclass
class Traffic:
    """Users predicting digits through the router and, after each answer, uploading the
    labelled image (the delayed label). Every answer is recorded."""

    router_url: str
    digits: list[Digit]
    users: int = 120
    workers: int = 4
    label_every: int = 2
    answers: list[Answer] = field(default_factory=list)
    uploads: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=self.router_url, timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                user = f"user-{rng.randrange(self.users)}"
                digit = self.digits[rng.randrange(len(self.digits))]
                self._predict(client, user, digit)
                n += 1
                if self.label_every and n % self.label_every == 0:
                    self._label(client, user, digit)

    def _predict(self, client: httpx.Client, user: str, digit: Digit) -> None:
        try:
            response = client.post(
                "/v1/digits/predict",
                content=digit.png,
                headers={"content-type": "image/png", "X-User-Id": user},
            )
        except httpx.HTTPError as exc:
            self.answers.append(Answer(time.time(), user, 0, None, None, repr(exc)))
            return
        body: dict[str, Any] = {}
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
        # a failed request is any non-200, and also a 200 without a real confidence
        ok = response.status_code == 200 and isinstance(body.get("confidence"), float)
        self.answers.append(
            Answer(
                time.time(),
                user,
                response.status_code,
                body.get("variant"),
                body.get("model_version"),
                "" if ok else response.text[:300] or "no confidence in the answer",
                response.headers.get("x-inkwell-fallback", ""),
            )
        )

    def _label(self, client: httpx.Client, user: str, digit: Digit) -> None:
        try:
            response = client.post(
                "/v1/samples",
                files={"image": ("digit.png", digit.png, "image/png")},
                data={"label": str(digit.label), "user_id": user},
                headers={"X-API-Key": SERVICE_KEY},
            )
            self.uploads.append(response.status_code)
        except httpx.HTTPError:
            self.uploads.append(0)

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200 or a.error]


# ---- the router's admin API -------------------------------------------------------------------


def rollout(router_url: str) -> dict[str, Any]:
    response = httpx.get(
        f"{router_url}/admin/rollout", headers={"X-API-Key": ADMIN_KEY}, timeout=10
    )
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def events(router_url: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{router_url}/admin/rollout/events", headers={"X-API-Key": ADMIN_KEY}, timeout=10
    )
    response.raise_for_status()
    return list(reversed(response.json()))


def wait_phase(
    router_url: str,
    phases: tuple[str, ...],
    timeout: float,
    proc: Process | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Wait until the rollout (of `version`, when given) is in one of `phases`."""
    found: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal found
        found = rollout(router_url)
        mine = version is None or found["canary_version"] == version
        return mine and found["phase"] in phases

    wait_until(reached, timeout, f"rollout of {version or 'any version'} in {phases}", proc)
    return found
