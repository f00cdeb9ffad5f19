"""The new-customers stream: K users with their own handwriting arrive one after another.

Each user's style is a fixed combination of slant, rotation, stroke thickness, elastic
distortion and scale, applied (with a little per-image jitter) to MNIST *test* digits that no
other user gets. A user uploads `samples_per_user` PNG scans through the service's
`POST /v1/samples` (in-process, real route and store; straight into the store when the service
package is absent), the real trainer worker notices, retrains, gates and registers a canary,
and the benchmark then promotes it to stable the way the rollout controller would after a
healthy canary. After each user it reports MNIST test accuracy (all 10,000, and the digits no
user touched), the user's held-out style accuracy, earlier users' style accuracy, and the time
from the last upload to the registered canary.

With `style_ceiling` > 0 it also measures each style's *ceiling*: a fresh model of the stable
model's architecture trained with the base recipe on that many MNIST *train* digits rendered in
the user's style, read on the same held-out digits. That is what a learner with a thousand times
more of the user's handwriting reaches, i.e. how legible the style itself is.
"""

from __future__ import annotations

import io
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from inkwell.console import console
from inkwell.data import load_split
from inkwell.model import DigitNet, ModelConfig
from inkwell.preprocessing import preprocess_bytes
from inkwell.registry import Registry
from inkwell.settings import CANARY, STABLE, CoreSettings
from inkwell.store import SampleStore
from inkwell.train import BASE_PEAK_LR
from inkwell.training import TrainConfig, evaluate, fit, images_to_tensor, seed_everything
from trainer.pipeline import Retrainer
from trainer.settings import TrainerSettings
from trainer.worker import Worker

HELD_OUT_PER_USER = 300


@dataclass(frozen=True)
class Style:
    """One user's handwriting: how their digits differ from MNIST's."""

    slant: float  # shear factor
    rotation: float  # degrees
    thickness: int  # -1 thinner, 0, +1/+2 thicker (morphological)
    elastic: float  # displacement amplitude in pixels
    scale: float  # < 1: smaller digits

    def describe(self) -> str:
        return (
            f"slant {self.slant:+.2f}, rot {self.rotation:+.0f}°, thick {self.thickness:+d}, "
            f"elastic {self.elastic:.1f}, scale {self.scale:.2f}"
        )


def make_style(user: int) -> Style:
    """A distinct, deterministic style per user index."""
    rng = np.random.default_rng(1000 + user)
    sign = 1 if user % 2 == 0 else -1
    return Style(
        slant=sign * float(rng.uniform(0.15, 0.35)),
        rotation=-sign * float(rng.uniform(6, 15)),
        thickness=int((-1, 1, 2, 0)[user % 4]),
        elastic=float(rng.uniform(0.8, 1.8)),
        scale=float(rng.uniform(0.75, 0.95)),
    )


def render(image: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Apply a style (plus jitter) to a uint8 28x28 MNIST digit; returns uint8 ink = 255."""
    x = image.astype(np.float32) / 255.0
    if style.thickness > 0:
        x = ndimage.grey_dilation(x, size=(style.thickness + 1, style.thickness + 1))
    elif style.thickness < 0:
        x = ndimage.grey_erosion(x, size=(2, 2)) * 0.6 + x * 0.4
    angle = np.deg2rad(style.rotation + rng.normal(0, 2))
    shear = style.slant + rng.normal(0, 0.03)
    scale = style.scale * (1 + rng.normal(0, 0.03))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rot @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
    centre = np.array([13.5, 13.5])
    x = ndimage.affine_transform(x, matrix, offset=centre - matrix @ centre, order=1)
    if style.elastic > 0:
        field = [
            ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), 3.0) * style.elastic * 8
            for _ in range(2)
        ]
        rows, cols = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
        x = ndimage.map_coordinates(x, [rows + field[0], cols + field[1]], order=1)
    return np.clip(x * 255, 0, 255).astype(np.uint8)


def scan_png(image: np.ndarray) -> bytes:
    """The digit as a user's phone scan: dark ink on white paper, 3x larger, PNG."""
    buffer = io.BytesIO()
    Image.fromarray(255 - image).resize((84, 84), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def preprocess_scans(images: Iterable[np.ndarray]) -> torch.Tensor:
    """Rendered digits scanned and preprocessed the way uploads are: (N, 1, 28, 28)."""
    pixels = np.stack([preprocess_bytes(scan_png(im)) for im in images])
    return torch.from_numpy(pixels.astype(np.float32)).reshape(-1, 1, 28, 28)


def render_scans(images: np.ndarray, style: Style, rng: np.random.Generator) -> torch.Tensor:
    """MNIST digits (uint8) in `style`, scanned and preprocessed like uploads: (N, 1, 28, 28)."""
    return preprocess_scans(render(im, style, rng) for im in images)


def style_ceiling(
    style: Style,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    held: tuple[torch.Tensor, torch.Tensor],
    *,
    model_config: ModelConfig,
    epochs: int = 4,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a model trained from scratch on `train_images` drawn in `style`."""
    x = render_scans(train_images, style, np.random.default_rng(10_000 + seed))
    seed_everything(seed)
    model = DigitNet(model_config)
    cfg = TrainConfig(epochs=epochs, lr=BASE_PEAK_LR["adam"], seed=seed)
    fit(model, (x, torch.from_numpy(train_labels.copy())), cfg, eval_every_epoch=False)
    return evaluate(model, *held).accuracy


Uploader = Callable[[str, int, bytes, str], None]


def make_uploader(settings: CoreSettings) -> tuple[Uploader, str, Callable[[], None]]:
    """Upload through the service's real route when it exists; else store like it does."""
    from fastapi.testclient import TestClient

    try:
        from service.main import create_app
        from service.settings import ServiceSettings
    except ModuleNotFoundError:
        store = SampleStore.open(settings)

        def direct(user: str, label: int, data: bytes, key: str) -> None:
            pixels = np.clip(np.rint(preprocess_bytes(data) * 255), 0, 255).astype(np.uint8)
            store.add(
                user_id=user, label=label, image=data, pixels=pixels.tobytes(), idempotency_key=key
            )

        return direct, "sample store (service package not present)", store.engine.dispose

    api_key = secrets.token_urlsafe(24)  # the service refuses short or placeholder keys
    service_settings = ServiceSettings(
        home=settings.home, api_keys=[SecretStr(api_key)], upload_rate_per_s=0
    )
    client = TestClient(create_app(service_settings))
    client.__enter__()

    def via_http(user: str, label: int, data: bytes, key: str) -> None:
        response = client.post(
            "/v1/samples",
            files={"image": (f"{key}.png", data, "image/png")},
            data={"label": str(label), "user_id": user, "idempotency_key": key},
            headers={"X-API-Key": api_key},
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"upload failed: {response.status_code} {response.text}")

    def close() -> None:
        client.__exit__(None, None, None)

    return via_http, "POST /v1/samples (service app in-process)", close


def _prepare_base(home: Path, base_home: Path | None, base_epochs: int, base_augment: str) -> None:
    settings = CoreSettings(home=home)
    if base_home is not None:
        source = Registry(CoreSettings(home=base_home)).load_digit_model(STABLE)
        registry = Registry(settings)
        with registry.start_run("base-copy", tags={"inkwell.kind": "base"}) as run:
            registry.register_digit_model(
                source.model,
                run.info.run_id,
                meta={"copied_from": str(base_home), "source_version": source.info.version},
                tags={"validation_status": "base"},
                aliases=(STABLE,),
            )
        return
    from inkwell.train import train_base_model

    console.print(
        f"training the base model ({base_epochs} epochs, {base_augment} augmentation) into "
        f"{home} ..."
    )
    cfg = TrainConfig(epochs=base_epochs, augment_policy=base_augment)
    train_base_model(cfg, settings=settings)


def run_customers(
    *,
    users: int,
    samples_per_user: int,
    base_home: Path | None,
    base_epochs: int,
    base_augment: str,
    threads: int | None,
    style_ceiling_samples: int = 0,
    keep_home: bool = False,
) -> dict[str, Any]:
    """The stream; returns per-user numbers (also printed as a table)."""
    if threads:
        torch.set_num_threads(threads)
    home = Path(tempfile.mkdtemp(prefix="inkwell-bench-customers-"))
    core = CoreSettings(home=home)
    _prepare_base(home, base_home, base_epochs, base_augment)
    settings = TrainerSettings(
        home=home,
        min_new_samples=samples_per_user,
        new_user_min_samples=samples_per_user,  # each user's whole batch in one retrain
        debounce_seconds=2.0,
        poll_seconds=0.5,
        threads=threads,
    )
    registry = Registry(settings)
    test = load_split("test", settings=core)
    x_test = images_to_tensor(test.images)
    y_test = torch.from_numpy(test.labels.copy())
    rng = np.random.default_rng(0)
    order = rng.permutation(len(test.labels))
    per_user = samples_per_user + HELD_OUT_PER_USER
    if per_user * users > len(order):
        raise ValueError("not enough MNIST test digits for that many users")
    untouched = order[per_user * users :]
    base = registry.load_digit_model(STABLE).model
    base_acc = evaluate(base, x_test, y_test).accuracy
    base_untouched = evaluate(base, x_test[untouched], y_test[untouched]).accuracy
    styles = [make_style(u) for u in range(users)]
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    uploader, path, close = make_uploader(core)
    retrainer = Retrainer(settings)
    worker = Worker(retrainer, settings)
    worker.start()
    rows: list[dict[str, Any]] = []
    console.print(f"base model: MNIST test {100 * base_acc:.2f} %; uploads via {path}; home {home}")
    try:
        for u, style in enumerate(styles):
            idx = order[u * per_user : (u + 1) * per_user]
            user_rng = np.random.default_rng(u)
            images = np.stack([render(test.images[i], style, user_rng) for i in idx])
            # held-out style digits go through the same preprocessing as uploads
            held.append(
                (
                    preprocess_scans(images[samples_per_user:]),
                    torch.from_numpy(test.labels[idx[samples_per_user:]].copy()),
                )
            )
            before_style = evaluate(registry.load_digit_model(STABLE).model, *held[-1]).accuracy
            last_job = retrainer.state.last_job()
            last_id = last_job.id if last_job else 0
            for j in range(samples_per_user):
                uploader(f"user-{u}", int(test.labels[idx[j]]), scan_png(images[j]), f"u{u}-{j}")
            uploaded = time.perf_counter()
            job = _wait_for_job(retrainer, last_id, timeout=900)
            latency = time.perf_counter() - uploaded
            row = _measure(
                u, style, job, latency, registry, settings, x_test, y_test, untouched, held
            )
            row["style_accuracy_before"] = before_style
            row["base_mnist_accuracy"] = base_acc
            row["mnist_drop_pp"] = 100 * (base_acc - row["mnist_accuracy"])
            row["base_untouched_accuracy"] = base_untouched
            rows.append(row)
            console.print(
                f"user {u} ({style.describe()}): {row['status']} v{row['version']} in "
                f"{latency:.1f} s; MNIST {100 * row['mnist_accuracy']:.2f} % (drop "
                f"{row['mnist_drop_pp']:+.2f} pp); style {100 * before_style:.1f} -> "
                f"{100 * row['style_accuracy']:.2f} %; gate: {row['reasons']}"
            )
    finally:
        worker.stop(timeout=600)
        close()
        if not keep_home:
            shutil.rmtree(home, ignore_errors=True)
    if style_ceiling_samples:
        _add_ceilings(rows, styles, held, base.config, style_ceiling_samples, core)
    Console(width=160).print(_table(rows))
    return {"upload_path": path, "users": rows, "base_mnist_accuracy": base_acc}


def _add_ceilings(
    rows: list[dict[str, Any]],
    styles: list[Style],
    held: list[tuple[torch.Tensor, torch.Tensor]],
    model_config: ModelConfig,
    samples: int,
    core: CoreSettings,
) -> None:
    """After the stream: each style's ceiling on the same held-out digits (see module doc)."""
    train = load_split("train", settings=core)
    n = min(samples, len(train.labels))
    for row, style, user_held in zip(rows, styles, held, strict=True):
        started = time.perf_counter()
        row["style_ceiling_accuracy"] = style_ceiling(
            style, train.images[:n], train.labels[:n], user_held, model_config=model_config
        )
        row["style_ceiling_samples"] = n
        console.print(
            f"user {row['user']}: a model trained on {n:,} digits in this style reads "
            f"{100 * row['style_ceiling_accuracy']:.2f} % of the held-out digits "
            f"({time.perf_counter() - started:.0f} s)"
        )


def _wait_for_job(retrainer: Retrainer, after: int, timeout: float) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        job = retrainer.state.last_job()
        if job is not None and job.id > after and job.status in ("done", "failed"):
            return job
        time.sleep(0.25)
    raise TimeoutError(f"no retrain finished within {timeout:.0f} s")


def _measure(
    u: int,
    style: Style,
    job: Any,
    latency: float,
    registry: Registry,
    settings: TrainerSettings,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    untouched: np.ndarray,
    held: list[tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    name = settings.model_name
    info = registry.get_version(name, job.version) if job.version else None
    if job.outcome == "passed" and info is not None:
        # what the rollout controller does after a healthy canary
        registry.set_alias(name, STABLE, info.version)
        registry.delete_alias(name, CANARY)
    model: DigitNet = registry.load_digit_model(STABLE).model
    mnist = evaluate(model, x_test, y_test).accuracy
    previous = [evaluate(model, *h).accuracy for h in held[:-1]]
    return {
        "user": u,
        "style": style.describe(),
        "status": job.outcome or job.status,
        "version": job.version,
        "seconds_to_canary": latency,
        "mnist_accuracy": mnist,
        "mnist_drop_pp": 0.0,
        "untouched_accuracy": evaluate(model, x_test[untouched], y_test[untouched]).accuracy,
        "style_accuracy": evaluate(model, *held[-1]).accuracy,
        "previous_users_style_accuracy": float(np.mean(previous)) if previous else None,
        "quarantined": (info.tags.get("samples.quarantined") if info else None),
        "optimizer": info.tags.get("optimizer") if info else None,
        "reasons": info.tags.get("validation_reasons") if info else job.error,
    }


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "user",
        "gate",
        "s to canary",
        "MNIST test %",
        "Δ vs base pp",
        "untouched %",
        "own style % (before → after)",
        "earlier users %",
        "quarantined",
        title="New customers stream",
    )
    ceilings = any("style_ceiling_accuracy" in row for row in rows)
    if ceilings:
        table.add_column("style ceiling %")
    for row in rows:
        drop = -row["mnist_drop_pp"]
        prev = row["previous_users_style_accuracy"]
        table.add_row(
            str(row["user"]),
            f"{row['status']} v{row['version']}",
            f"{row['seconds_to_canary']:.1f}",
            f"{100 * row['mnist_accuracy']:.2f}",
            f"{drop:+.2f}",
            f"{100 * row['untouched_accuracy']:.2f}",
            f"{100 * row['style_accuracy_before']:.1f} → {100 * row['style_accuracy']:.2f}",
            "-" if prev is None else f"{100 * prev:.2f}",
            str(row["quarantined"]),
            *([f"{100 * row.get('style_ceiling_accuracy', float('nan')):.2f}"] if ceilings else []),
        )
    return table
