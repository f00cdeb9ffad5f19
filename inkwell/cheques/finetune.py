"""Fine-tune a cheque reader on real reviewed amount fields, with synthetic replay.

A bank's reviewers correct doubtful readings every day; those corrected fields are the only
real data the reader ever sees. Fine-tuning mixes them with synthetic fields (the replay that
keeps the reader from forgetting how to read amounts in general): every batch holds
`real_fraction` real fields, each redrawn with small scanner-like changes (`augment_real`), and
the rest synthetic. The confidence and review threshold are then recalibrated on real reviewed
fields held out of training, because a calibration fitted on synthetic fields does not hold on
real paper.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from inkwell.cheques.calibrate import Calibration
from inkwell.cheques.dataset import LabelledImage, read_labels
from inkwell.cheques.metrics import EvalReport
from inkwell.cheques.model import CRNN, frames_for
from inkwell.cheques.pools import DigitPool
from inkwell.cheques.preprocess import prepare_field
from inkwell.cheques.reader import ChequeReader, to_gray
from inkwell.cheques.stream import FieldBatch, FieldStream, collate
from inkwell.cheques.synth import SYNTH_STYLES, synth_config
from inkwell.cheques.train import (
    ChequeTrainConfig,
    TrainHooks,
    batch_logits,
    calibrate_reader,
    ctc_of,
    fit_recogniser,
)
from inkwell.errors import InvalidInputError, NoInkError

RealField = tuple[np.ndarray, str]  # gray image (1 = white) and its digit string
REPLAY_STYLES = (*SYNTH_STYLES, "both")


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run on reviewed fields."""

    steps: int = 1500
    batch_size: int = 32
    real_fraction: float = 0.5  # share of each batch taken from the reviewed fields
    lr: float = 5e-4
    weight_decay: float = 1e-4
    seed: int = 0
    synth_style: str = "real"
    review_rate: float = 0.05
    eval_every: int = 250
    threads: int | None = None
    # learning without forgetting: pull the replayed synthetic rows toward the stable reader's
    # per-frame posteriors (softened by the temperature); 0 turns it off. With BatchNorm's
    # statistics kept, this holds the synthetic drop of a 150-step job to ~0.2 pp (vs 2-3 pp
    # without; docs/benchmarks.md "Continual cheque stream")
    distill_weight: float = 10.0
    distill_temperature: float = 2.0
    freeze_norm_stats: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.real_fraction <= 1.0:
            raise InvalidInputError("real_fraction must be in (0, 1].")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise InvalidInputError(
                "distill_weight must be >= 0 and distill_temperature > 0 "
                f"(got {self.distill_weight} and {self.distill_temperature})."
            )
        if self.batch_size < 2 or self.steps < 1:
            raise InvalidInputError("batch_size must be >= 2 and steps >= 1.")

    def train_config(self) -> ChequeTrainConfig:
        """The loop settings `fit_recogniser` reads."""
        return ChequeTrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            eval_every=self.eval_every,
            review_rate=self.review_rate,
            synth_style=self.synth_style,
            workers=0,
            threads=self.threads,
            freeze_norm_stats=self.freeze_norm_stats,
        )


def load_real_fields(rows: Sequence[LabelledImage]) -> list[RealField]:
    """Decode labelled field images to gray arrays (rows without an amount are skipped)."""
    return [(to_gray(row.path.read_bytes()), row.label) for row in rows if row.label]


def read_real_folder(folder: Path, labels_file: Path | None = None) -> list[RealField]:
    """The labelled fields of a folder in the `labels.csv` format, decoded."""
    return load_real_fields(read_labels(folder, labels_file))


def split_rows(
    rows: Sequence[LabelledImage], test_size: int, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """A fixed, seeded split into (train, test); the test part keeps the file order."""
    if not 0 < test_size < len(rows):
        raise InvalidInputError(
            f"test size {test_size} must be between 1 and {len(rows) - 1} (the folder has "
            f"{len(rows)} labelled fields)."
        )
    order = np.random.default_rng(seed).permutation(len(rows))
    test_idx = set(order[:test_size].tolist())
    train = [r for i, r in enumerate(rows) if i not in test_idx]
    test = [r for i, r in enumerate(rows) if i in test_idx]
    return train, test


def augment_real(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A real field redrawn as another scan of it might look: margins, aspect, slant, small
    rotation, contrast, blur, noise and JPEG. The digits and their order never change."""
    h, w = gray.shape
    background = float(np.median(gray))
    scale_x = float(rng.uniform(0.85, 1.15))
    scale_y = float(rng.uniform(0.92, 1.08))
    shear = float(rng.normal(0.0, 0.06))
    angle = math.radians(float(rng.normal(0.0, 1.2)))
    cos, sin = math.cos(angle), math.sin(angle)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[scale_y, 0.0], [-shear, scale_x]])
    out_h, out_w = max(8, round(h * scale_y)), max(8, round(w * scale_x))
    centre_in = np.array([h / 2, w / 2])
    centre_out = np.array([out_h / 2, out_w / 2])
    inverse = np.linalg.inv(forward)
    offset = centre_in - inverse @ centre_out
    image = ndimage.affine_transform(
        gray, inverse, offset=offset, output_shape=(out_h, out_w), order=1, cval=background
    )
    # margins: crop a little or pad with paper
    top, bottom = (int(v) for v in rng.integers(-3, 4, size=2))
    left, right = (int(v) for v in rng.integers(-4, 7, size=2))
    image = np.pad(
        image,
        ((max(0, top), max(0, bottom)), (max(0, left), max(0, right))),
        constant_values=background,
    )
    image = image[
        max(0, -top) : image.shape[0] - max(0, -bottom),
        max(0, -left) : image.shape[1] - max(0, -right),
    ]
    contrast = float(rng.uniform(0.7, 1.15))
    image = 1.0 - (1.0 - image) * contrast + float(rng.normal(0.0, 0.03))
    image = np.clip(image, 0.0, 1.0) ** float(np.exp(rng.normal(0.0, 0.15)))
    if rng.random() < 0.3:
        image = ndimage.gaussian_filter(image, float(rng.uniform(0.3, 0.9)))
    image = image + rng.normal(0.0, float(rng.uniform(0.0, 0.03)), size=image.shape)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.4:
        buffer = io.BytesIO()
        Image.fromarray((image * 255).astype(np.uint8)).save(
            buffer, format="JPEG", quality=int(rng.integers(40, 90))
        )
        image = np.asarray(Image.open(buffer), np.float32) / 255.0
    return image


def real_batches(fields: Sequence[RealField], batch_size: int = 64) -> list[FieldBatch]:
    """Prepared, unaugmented batches of real fields (validation, calibration, evaluation)."""
    prepared: list[tuple[np.ndarray, str]] = []
    for gray, label in fields:
        try:
            prepared.append((prepare_field(gray).pixels, label))
        except NoInkError:
            continue
    prepared.sort(key=lambda p: p[0].shape[1])
    return [collate(prepared[i : i + batch_size]) for i in range(0, len(prepared), batch_size)]


def replay_styles(style: str) -> tuple[str, ...]:
    """The synthetic styles a fine-tuning batch replays: one of `SYNTH_STYLES`, or `both`
    (half classic, half real: the two styles the shipped reader was trained on in turn)."""
    if style == "both":
        return SYNTH_STYLES
    if style not in SYNTH_STYLES:
        raise InvalidInputError(
            f"unknown replay style {style!r}; use one of {', '.join(REPLAY_STYLES)}"
        )
    return (style,)


class MixedStream:
    """Endless batches: `real_fraction` augmented real fields + synthetic replay fields."""

    def __init__(self, real: Sequence[RealField], pool: DigitPool, cfg: FinetuneConfig) -> None:
        if not real:
            raise InvalidInputError("Fine-tuning needs at least one reviewed field.")
        self.real = list(real)
        self.cfg = cfg
        self.n_real = max(1, round(cfg.batch_size * cfg.real_fraction))
        self.n_synth = cfg.batch_size - self.n_real
        self.rng = np.random.default_rng([cfg.seed, 31])
        styles = replay_styles(cfg.synth_style)
        # the replayed rows split between the styles (the first style takes the remainder)
        shares = [self.n_synth // len(styles)] * len(styles)
        shares[0] += self.n_synth - sum(shares)
        self.synth: list[Iterator[FieldBatch]] = [
            iter(
                FieldStream(
                    pool,
                    seed=cfg.seed + 20_000 + k,
                    batch_size=share,
                    cfg=synth_config(style, blank_rate=0.02),
                )
            )
            for k, (style, share) in enumerate(zip(styles, shares, strict=True))
            if share > 0
        ]

    def __iter__(self) -> Iterator[FieldBatch]:
        return self

    def __next__(self) -> FieldBatch:
        prepared: list[tuple[np.ndarray, str]] = []
        while len(prepared) < self.n_real:
            gray, label = self.real[int(self.rng.integers(len(self.real)))]
            try:
                prepared.append((prepare_field(augment_real(gray, self.rng)).pixels, label))
            except NoInkError:
                continue
        real_rows = len(prepared)
        for stream in self.synth:
            synth = next(stream)
            # unpad the synthetic batch back to fields so one collate pads them all together
            for row, width in enumerate(synth.widths.tolist()):
                prepared.append((synth.inputs[row, 0, :, :width].numpy(), synth.labels[row]))
        batch = collate(prepared)
        batch.replay = torch.arange(len(prepared)) >= real_rows
        return batch


class ReplayDistillation:
    """CTC on every row plus, on the replayed rows, the KL divergence from the stable reader's
    per-frame posteriors (learning without forgetting, Li & Hoiem 2017; per-frame distillation
    suits CTC because student and teacher share the frame grid).

    The reviewed rows learn the corrections freely; the replayed synthetic rows are held to
    what stable already reads well, which keeps the synthetic accuracy the gate checks."""

    def __init__(self, teacher: CRNN, weight: float, temperature: float) -> None:
        self.teacher = teacher.eval()
        self.weight = weight
        self.temperature = temperature

    def __call__(self, model: CRNN, batch: FieldBatch, bf16: bool) -> torch.Tensor:
        logits = batch_logits(model, batch, bf16)
        loss = ctc_of(logits, batch)
        rows = batch.replay
        if self.weight <= 0 or rows is None or not bool(rows.any()):
            return loss
        with torch.no_grad():  # the teacher reads the replayed rows only
            target = batch_logits(self.teacher, batch, bf16, rows)
        frames = frames_for(batch.widths[rows])
        valid = torch.arange(logits.shape[1])[None, :] < frames[:, None]
        t = self.temperature
        teacher_log = F.log_softmax(target / t, dim=-1)
        student_log = F.log_softmax(logits[rows] / t, dim=-1)
        kl = (teacher_log.exp() * (teacher_log - student_log)).sum(-1)
        return loss + self.weight * t * t * kl[valid].mean()


@dataclass
class FinetuneOutcome:
    """A fine-tuned reader and what its calibration on real fields gave."""

    reader: ChequeReader
    calibration: Calibration
    calibration_report: EvalReport
    history: list[dict[str, float]]
    seconds: float


def finetune_reader(
    reader: ChequeReader,
    train: Sequence[RealField],
    calibration_fields: Sequence[RealField],
    pool: DigitPool,
    cfg: FinetuneConfig,
    *,
    hooks: TrainHooks | None = None,
    teacher: ChequeReader | None = None,
) -> FinetuneOutcome:
    """Fine-tune a copy of `reader` on `train` with synthetic replay from `pool`; recalibrate
    on `calibration_fields` (real reviewed fields kept out of training). The replayed rows are
    distilled to `teacher` (default: `reader` itself; the trainer passes its lineage's base)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    model = type(reader.model)(reader.model.config)
    model.load_state_dict(reader.model.state_dict())
    val = real_batches(calibration_fields)
    loop_cfg = replace(cfg.train_config(), bf16=False)
    source = teacher or reader  # read only, in eval mode, never trained
    loss_fn = ReplayDistillation(source.model, cfg.distill_weight, cfg.distill_temperature)
    fit = fit_recogniser(
        model, MixedStream(train, pool, cfg), loop_cfg, val=val, hooks=hooks, loss_fn=loss_fn
    )
    calibration, report = calibrate_reader(model, val, cfg.review_rate)
    meta = {
        **reader.meta,
        "calibration": calibration.to_dict(),
        "finetune": {
            **asdict(cfg),
            "parent_version": reader.version,
            "distilled_to": source.version,
            "real_fields": len(train),
            "calibration_fields": len(calibration_fields),
        },
        "val_real": report.to_metrics("val_real"),
    }
    tuned = ChequeReader(model, meta, name=reader.name)
    return FinetuneOutcome(tuned, calibration, report, fit.history, time.perf_counter() - started)
