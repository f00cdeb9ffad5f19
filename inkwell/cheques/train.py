"""Training the amount recogniser: a pure CTC loop, and the edge that tracks and registers it.

`fit_recogniser` and `predict_logits` take tensors/batches and return numbers (no MLflow, no
files). `train_cheque_model` is the edge: it loads the digit pools, streams synthetic batches
from a worker process, logs to MLflow through `Registry`, calibrates on the validation split
and registers the version as `inkwell-cheques` (first version → alias `stable`).
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from inkwell.cheques.calibrate import Calibration, calibrate, sequence_confidences
from inkwell.cheques.decode import greedy_decode
from inkwell.cheques.metrics import EvalReport, evaluate_readings
from inkwell.cheques.model import CRNN, CRNNConfig, count_parameters, frames_for
from inkwell.cheques.pools import DigitPool, load_pool
from inkwell.cheques.reader import ChequeReader
from inkwell.cheques.stream import FieldBatch, FieldStream, collate, prepare_samples
from inkwell.cheques.synth import SynthConfig, generate_fields, synth_config
from inkwell.registry import Registry, VersionInfo
from inkwell.settings import STABLE, CoreSettings


def bf16_available() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class ChequeTrainConfig:
    """Hyper-parameters of one recogniser training run."""

    steps: int = 6000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    channels: tuple[int, int, int, int] = (32, 48, 64, 96)
    hidden: int = 96
    blank_rate: float = 0.02
    synth_style: str = "classic"  # "real": closer to scanned bank cheques (see synth_config)
    min_digits: int = 2
    max_digits: int = 7
    val_size: int = 1000
    eval_every: int = 500
    review_rate: float = 0.05
    workers: int = 1
    bf16: bool | None = None  # None: use bfloat16 autocast when the CPU supports it
    threads: int | None = None
    # keep BatchNorm's running statistics (fine-tuning: a few batches of another domain must not
    # move the statistics every other input is normalised with)
    freeze_norm_stats: bool = False

    @classmethod
    def tiny(cls, **overrides: Any) -> ChequeTrainConfig:
        """A seconds-scale configuration for tests and smoke runs."""
        base: dict[str, Any] = {
            "steps": 60,
            "batch_size": 16,
            "channels": (8, 16, 16, 32),
            "hidden": 32,
            "val_size": 64,
            "eval_every": 0,
            "workers": 0,
        }
        return cls(**{**base, **overrides})

    def model_config(self) -> CRNNConfig:
        return CRNNConfig(channels=self.channels, hidden=self.hidden)

    def synth_config(self) -> SynthConfig:
        return synth_config(
            self.synth_style,
            min_digits=self.min_digits,
            max_digits=self.max_digits,
            blank_rate=self.blank_rate,
        )


@dataclass
class TrainHooks:
    """Callbacks: `on_step(step, loss)` and `on_eval(step, metrics)`."""

    on_step: Callable[[int, float], None] | None = None
    on_eval: Callable[[int, dict[str, float]], None] | None = None


@dataclass
class FitResult:
    steps: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def batch_logits(
    model: CRNN, batch: FieldBatch, bf16: bool, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-frame logits (N × frames × classes, float32) of a training batch, or of its `rows`
    only (a boolean mask; the padded width, so the frame grid, stays the batch's); bfloat16
    autocast when asked."""
    inputs, widths = batch.inputs, batch.widths
    if rows is not None:
        inputs, widths = inputs[rows], widths[rows]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(inputs.contiguous(memory_format=torch.channels_last), frames_for(widths))
    return logits.float()


def ctc_of(logits: torch.Tensor, batch: FieldBatch) -> torch.Tensor:
    """Mean CTC loss of a batch's logits against its labels (float32)."""
    log_probs = F.log_softmax(logits, dim=-1).permute(1, 0, 2)
    return F.ctc_loss(
        log_probs,
        batch.targets,
        frames_for(batch.widths),
        batch.target_lengths,
        zero_infinity=True,
    )


def ctc_loss(model: CRNN, batch: FieldBatch, bf16: bool) -> torch.Tensor:
    """Mean CTC loss of one batch: the loss of `fit_recogniser` unless it is given another."""
    return ctc_of(batch_logits(model, batch, bf16), batch)


BatchLoss = Callable[[CRNN, FieldBatch, bool], torch.Tensor]


@torch.inference_mode()
def predict_logits(
    model: CRNN, batches: Iterable[FieldBatch]
) -> tuple[list[np.ndarray], list[str]]:
    """Per-field logits (frames × 11, float32) and labels, in eval mode."""
    was_training = model.training
    model.eval()
    logits: list[np.ndarray] = []
    labels: list[str] = []
    for batch in batches:
        frames = frames_for(batch.widths)
        out = model(batch.inputs, frames).float().numpy()
        for row, count in enumerate(frames.tolist()):
            logits.append(out[row, :count])
        labels.extend(batch.labels)
    model.train(was_training)
    return logits, labels


def greedy_texts(logits: list[np.ndarray]) -> list[str]:
    """Greedy CTC transcriptions (argmax does not depend on the temperature)."""
    return [greedy_decode(lg).text for lg in logits]


def validation_metrics(model: CRNN, batches: list[FieldBatch]) -> dict[str, float]:
    """String accuracy, CER and mean CTC loss (nats per field) on prepared validation batches."""
    logits, labels = predict_logits(model, batches)
    texts = greedy_texts(logits)
    ones = [1.0] * len(texts)
    report = evaluate_readings(labels, labels, texts, ones, [False] * len(texts))
    probabilities = sequence_confidences(logits, labels)
    loss = float(-np.log(np.clip(probabilities, 1e-30, 1.0)).mean()) if labels else 0.0
    return {"val_string_accuracy": report.string_accuracy, "val_cer": report.cer, "val_loss": loss}


def fit_recogniser(
    model: CRNN,
    batches: Iterator[FieldBatch],
    cfg: ChequeTrainConfig,
    *,
    val: list[FieldBatch] | None = None,
    hooks: TrainHooks | None = None,
    loss_fn: BatchLoss = ctc_loss,
) -> FitResult:
    """Train `model` in place for `cfg.steps` batches (AdamW, one-cycle LR, gradient clip);
    `loss_fn(model, batch, bf16)` is the loss of one batch (CTC unless given another)."""
    hooks = hooks or TrainHooks()
    bf16 = bf16_available() if cfg.bf16 is None else cfg.bf16
    model.to(memory_format=torch.channels_last)
    model.train()
    if cfg.freeze_norm_stats:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=max(2, cfg.steps), pct_start=0.15
    )
    result = FitResult()
    started = time.perf_counter()
    smoothed = math.nan
    for step in range(1, cfg.steps + 1):
        loss = loss_fn(model, next(batches), bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        value = float(loss.item())
        smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
        if hooks.on_step is not None:
            hooks.on_step(step, smoothed)
        last = step == cfg.steps
        if val and (last or (cfg.eval_every and step % cfg.eval_every == 0)):
            metrics = {
                "train_loss": smoothed,
                "seconds": time.perf_counter() - started,
                **validation_metrics(model, val),
            }
            result.history.append({"step": float(step), **metrics})
            if hooks.on_eval is not None:
                hooks.on_eval(step, metrics)
    result.steps = cfg.steps
    result.seconds = time.perf_counter() - started
    model.eval()
    return result


def validation_batches(
    pool: DigitPool, n: int, seed: int, synth: SynthConfig, batch_size: int = 64
) -> list[FieldBatch]:
    """`n` fields of the validation pool, rendered once and kept in memory."""
    prepared = prepare_samples(list(generate_fields(pool, n, seed, synth)))
    prepared.sort(key=lambda p: p[0].shape[1])  # similar widths together: little padding
    return [collate(prepared[i : i + batch_size]) for i in range(0, len(prepared), batch_size)]


def calibrate_reader(
    model: CRNN, val: list[FieldBatch], review_rate: float
) -> tuple[Calibration, EvalReport]:
    """Fit temperature + review threshold on validation fields; report what they give."""
    logits, labels = predict_logits(model, val)
    texts = greedy_texts(logits)
    calibration = calibrate(logits, texts, labels, review_rate)
    confidences = sequence_confidences(logits, texts, calibration.temperature)
    flags = [bool(c < calibration.review_threshold) for c in confidences]
    names = [str(i) for i in range(len(labels))]
    report = evaluate_readings(names, labels, texts, confidences.tolist(), flags)
    return calibration, report


@dataclass
class ChequeTrainOutcome:
    """What a training run produced."""

    reader: ChequeReader
    calibration: Calibration
    val_report: EvalReport
    run_id: str | None
    version: VersionInfo | None
    seconds: float
    history: list[dict[str, float]]


def _stream(cfg: ChequeTrainConfig, pool: DigitPool) -> Iterator[FieldBatch]:
    stream = FieldStream(pool, seed=cfg.seed, batch_size=cfg.batch_size, cfg=cfg.synth_config())
    if cfg.workers <= 0:
        return iter(stream)
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=cfg.workers,
        prefetch_factor=4,
        persistent_workers=False,
    )
    return iter(loader)


def train_cheque_model(
    cfg: ChequeTrainConfig,
    *,
    settings: CoreSettings | None = None,
    data_dir: Path | None = None,
    hooks: TrainHooks | None = None,
    register: bool = True,
    promote: bool = False,
    out_dir: Path | None = None,
    init_dir: Path | None = None,
) -> ChequeTrainOutcome:
    """Train on synthetic fields from MNIST train digits, calibrate on the validation pool,
    track in MLflow and register `inkwell-cheques` (alias `stable` if it has none yet, or
    when `promote`).

    `init_dir` warm-starts from a saved model (its architecture wins over `cfg`'s): a longer
    schedule run in several sittings, each a fresh one-cycle over `cfg.steps`."""
    settings = settings or CoreSettings()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    init_from = str(init_dir) if init_dir is not None else None
    if init_dir is not None:
        model = ChequeReader.from_dir(init_dir).model
        cfg = replace(cfg, channels=model.config.channels, hidden=model.config.hidden)
    else:
        model = CRNN(cfg.model_config())
    train_pool = load_pool("train", data_dir, settings)
    val_pool = load_pool("val", data_dir, settings)
    synth = cfg.synth_config()
    # validation fields always hold an amount: calibration is about reading amounts
    val_synth = replace(synth, blank_rate=0.0)
    val = validation_batches(val_pool, cfg.val_size, cfg.seed + 10_000, val_synth)
    registry = Registry(settings) if register else None
    started = time.perf_counter()
    user_hooks = hooks or TrainHooks()

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        if registry is not None:
            registry.log_metrics(metrics, step=step)
        if user_hooks.on_eval is not None:
            user_hooks.on_eval(step, metrics)

    params = {
        **{f"train.{k}": v for k, v in asdict(cfg).items()},
        "model.parameters": count_parameters(model),
        "model.architecture": "CRNN",
        "model.init_from": init_from or "scratch",
        "data.train_pool": f"MNIST train[0:{len(train_pool)}]",
        "data.val_pool": f"MNIST train[{int(val_pool.source_index[0])}:]",
        "torch.threads": torch.get_num_threads(),
        "torch.bf16": bf16_available() if cfg.bf16 is None else cfg.bf16,
        "host.machine": platform.machine(),
    }

    def run_training(run_id: str | None) -> ChequeTrainOutcome:
        batches = _stream(cfg, train_pool)
        fit = fit_recogniser(
            model, batches, cfg, val=val, hooks=TrainHooks(user_hooks.on_step, on_eval)
        )
        calibration, report = calibrate_reader(model, val, cfg.review_rate)
        meta = ChequeReader.build_meta(
            model.config,
            name=settings.cheque_model_name,
            calibration=calibration.to_dict(),
            train=asdict(cfg),
            init_from=init_from,
            val=report.to_metrics("val"),
            data={"train_pool": params["data.train_pool"], "val_pool": params["data.val_pool"]},
        )
        reader = ChequeReader(model, meta, name=settings.cheque_model_name)
        version = None
        if out_dir is not None:
            reader.save(out_dir)
        if registry is not None and run_id is not None:
            registry.log_metrics(
                {
                    **report.to_metrics("val"),
                    "calibration_temperature": calibration.temperature,
                    "calibration_review_threshold": calibration.review_threshold,
                    "calibration_ece_before": calibration.ece_before,
                    "calibration_ece_after": calibration.ece_after,
                    "train_seconds": fit.seconds,
                }
            )
            with tempfile.TemporaryDirectory() as tmp:
                files = reader.save(Path(tmp))
                has_stable = registry.find_version(settings.cheque_model_name, STABLE)
                version = registry.register_files(
                    settings.cheque_model_name,
                    run_id,
                    files,
                    meta,
                    tags={
                        "kind": "cheques",
                        "val_string_accuracy": f"{report.string_accuracy:.4f}",
                    },
                    aliases=(STABLE,) if promote or has_stable is None else (),
                )
            reader.info = version
        return ChequeTrainOutcome(
            reader,
            calibration,
            report,
            run_id,
            version,
            time.perf_counter() - started,
            fit.history,
        )

    if registry is None:
        return run_training(None)
    with registry.start_run("cheques-train", tags={"inkwell.kind": "cheques"}) as run:
        registry.log_params(params)
        return run_training(run.info.run_id)
