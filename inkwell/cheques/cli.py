"""`inkwell cheques ...`: synthesise data, train, evaluate and read cheque amounts.

Attached to the main CLI by `register(app)`; `inkwell bench cheques` lives in `bench.cli`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from inkwell.cheques.locate import LAYOUTS
from inkwell.cheques.pools import SPLITS
from inkwell.console import check_choice

if TYPE_CHECKING:
    from inkwell.cheques.reader import ChequeReader

T = TypeVar("T")

cheques_app = typer.Typer(
    help="Cheque courtesy-amount recognition: synth, train, eval, read.", no_args_is_help=True
)

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="MNIST directory (default: INKWELL_DATA_DIR).")
]
ModelOpt = Annotated[
    str, typer.Option("--model", help="Registry alias (stable, canary) or version number.")
]
ModelDirOpt = Annotated[
    Path | None,
    typer.Option("--model-dir", help="Load weights.pt + model.json from a folder instead."),
]
LayoutOpt = Annotated[
    str, typer.Option(help=f"{' | '.join(LAYOUTS)}: auto decides field vs whole cheque by size.")
]
DecoderOpt = Annotated[str, typer.Option(help="greedy (fast) or beam (CTC prefix beam search).")]
SynthOpt = Annotated[
    str,
    typer.Option(
        "--synth",
        help="classic (the original synthetic fields) or real (closer to scanned bank cheques: "
        "touching digits, small zeros after a thousands dot, flagged 1s, crossed 7s, '.-').",
    ),
]


def load_reader(model: str, model_dir: Path | None) -> ChequeReader:
    """The cheque reader a command names: `--model-dir` (a saved folder) wins over `--model`
    (a registry version or alias)."""
    from inkwell.cheques.reader import ChequeReader

    if model_dir is not None:
        return ChequeReader.from_dir(model_dir)
    return ChequeReader.load(model)


@cheques_app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write images + labels.csv into.")],
    n: Annotated[int, typer.Option(min=1, help="Number of images.")] = 1000,
    seed: int = 0,
    split: Annotated[
        str, typer.Option(help="train / val: MNIST train digits; test: MNIST test digits only.")
    ] = "test",
    kind: Annotated[str, typer.Option(help="field (amount box) or cheque (whole cheque).")] = (
        "field"
    ),
    synth_style: SynthOpt = "classic",
    data: DataOpt = None,
) -> None:
    """Generate synthetic amount fields (or whole cheques) with labels.csv."""
    from inkwell.cheques.layout import generate_cheques, write_cheques
    from inkwell.cheques.pools import load_pool
    from inkwell.cheques.synth import SYNTH_STYLES, generate_fields, synth_config, write_fields
    from inkwell.console import console, progress_bar

    check_choice(split, SPLITS, "--split")
    check_choice(kind, ("field", "cheque"), "--kind")
    check_choice(synth_style, SYNTH_STYLES, "--synth")
    pool = load_pool(split, data)
    with progress_bar() as progress:
        task = progress.add_task(f"synth {kind}s ({split})", total=n, info="")

        def tick(items: Iterable[T]) -> Iterator[T]:
            for item in items:
                yield item
                progress.advance(task)

        if kind == "field":
            fields = generate_fields(pool, n, seed, synth_config(synth_style))
            count = write_fields(out, tick(fields), split, seed)
        else:
            count = write_cheques(out, tick(generate_cheques(pool, n, seed)), split, seed)
    console.print(
        f"wrote {count} {kind} images to {out} (labels.csv; digits from MNIST "
        f"{pool.source_split} images {int(pool.source_index[0])}..{int(pool.source_index[-1])})"
    )


@cheques_app.command()
def train(
    steps: Annotated[int, typer.Option(min=1, help="Training batches.")] = 6000,
    batch_size: Annotated[int, typer.Option(min=2)] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 2e-3,
    seed: int = 0,
    val_size: Annotated[int, typer.Option(min=16, help="Validation fields (calibration).")] = 1000,
    eval_every: Annotated[int, typer.Option(min=0, help="Validate every N steps (0: end).")] = 500,
    review_rate: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Target fraction sent to human review.")
    ] = 0.05,
    preset: Annotated[str, typer.Option(help="full, or tiny (seconds; smoke test).")] = "full",
    synth_style: SynthOpt = "classic",
    workers: Annotated[int, typer.Option(min=0, help="Data-generating processes.")] = 1,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    register: Annotated[bool, typer.Option(help="Track in MLflow and register.")] = True,
    promote: Annotated[
        bool, typer.Option(help="Point alias stable at the new version even if one exists.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Also save the model to this folder.")] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Warm-start from a saved model folder (from --out): continue its training "
            "with a fresh schedule over --steps."
        ),
    ] = None,
    data: DataOpt = None,
) -> None:
    """Train the amount recogniser on synthetic fields generated on the fly, in memory."""
    from inkwell.cheques.synth import SYNTH_STYLES
    from inkwell.cheques.train import ChequeTrainConfig, TrainHooks, train_cheque_model
    from inkwell.console import console, progress_bar

    check_choice(preset, ("full", "tiny"), "--preset")
    check_choice(synth_style, SYNTH_STYLES, "--synth")
    overrides = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "val_size": val_size,
        "eval_every": eval_every,
        "review_rate": review_rate,
        "synth_style": synth_style,
        "workers": workers,
        "threads": threads,
    }
    if preset == "tiny":
        defaults = ChequeTrainConfig()
        changed = {k: v for k, v in overrides.items() if getattr(defaults, k) != v}
        cfg = ChequeTrainConfig.tiny(**changed)
    else:
        cfg = ChequeTrainConfig(**overrides)  # type: ignore[arg-type]
    with progress_bar() as progress:
        task = progress.add_task("training", total=cfg.steps, info="")

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, info=f"ctc loss {loss:.3f}")

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            progress.console.print(
                f"step {step}: val string accuracy {100 * metrics['val_string_accuracy']:.2f} %"
                f", CER {100 * metrics['val_cer']:.2f} %"
            )

        outcome = train_cheque_model(
            cfg,
            data_dir=data,
            hooks=TrainHooks(on_step, on_eval),
            register=register,
            promote=promote,
            out_dir=out,
            init_dir=init,
        )
    cal, report = outcome.calibration, outcome.val_report
    console.print(
        f"validation ({report.n} fields, MNIST train digits held out from training): string "
        f"accuracy {100 * report.string_accuracy:.2f} %, CER {100 * report.cer:.2f} %"
    )
    console.print(
        f"calibration: temperature {cal.temperature:.2f}, review threshold "
        f"{cal.review_threshold:.4f} ({100 * cal.target_review_rate:.0f} % to review → "
        f"{100 * cal.val_accepted_accuracy:.2f} % accuracy on the rest), ECE "
        f"{cal.ece_before:.3f} → {cal.ece_after:.3f}"
    )
    console.print(f"wall time {outcome.seconds:.0f} s, MLflow run {outcome.run_id}")
    if outcome.version is not None:
        aliases = ", ".join(outcome.version.aliases) or "no alias"
        console.print(f"registered {outcome.version.name} v{outcome.version.version} ({aliases})")
    if out is not None:
        console.print(f"saved to {out}")


@cheques_app.command()
def split(
    folder: Annotated[Path, typer.Argument(help="Folder with images and labels.csv.")],
    out: Annotated[Path, typer.Option(help="Folder for train.csv and test.csv.")],
    test: Annotated[int, typer.Option(min=1, help="Fields in the held-out test part.")] = 207,
    seed: int = 0,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (default labels.csv).")] = None,
) -> None:
    """Split a labelled folder into fixed, seeded train and test label files."""
    from inkwell.cheques.dataset import read_labels
    from inkwell.cheques.finetune import split_rows
    from inkwell.cheques.synth import write_labels
    from inkwell.console import console

    rows = read_labels(folder, labels)
    train_rows, test_rows = split_rows(rows, test, seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.csv", train_rows), ("test.csv", test_rows)):
        write_labels(out / name, [(str(r.path.resolve()), r.label) for r in part])
    console.print(
        f"{len(train_rows)} train / {len(test_rows)} test fields of {folder} (seed {seed}) "
        f"written to {out}/train.csv and {out}/test.csv"
    )


@cheques_app.command("cut-digits")
def cut_digits_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of fields with labels.csv.")],
    out: Annotated[Path, typer.Option(help="Folder for the digit PNGs and their labels.csv.")],
    by: Annotated[
        str,
        typer.Option(
            help="boxes (the folder's digits.csv) or reader (the cheque reader's CTC frames "
            "forced onto each field's amount, as the trainer cuts reviewed fields)."
        ),
    ] = "boxes",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N fields.")] = None,
    model: ModelOpt = "stable",
    model_dir: ModelDirOpt = None,
) -> None:
    """Cut single digits from labelled amount fields into a folder `inkwell eval --images` reads."""
    import csv

    import numpy as np
    from PIL import Image

    from inkwell.cheques.dataset import read_labels
    from inkwell.cheques.digits import BOXES_FILE, crop_box, cut_digits, iou, read_digit_boxes
    from inkwell.cheques.reader import to_gray
    from inkwell.console import console

    check_choice(by, ("boxes", "reader"), "--by")
    fields = read_labels(folder)[:limit]
    truth = read_digit_boxes(folder / BOXES_FILE) if (folder / BOXES_FILE).is_file() else None
    if by == "boxes" and truth is None:
        raise typer.BadParameter(
            f"{folder} has no {BOXES_FILE} (filename,x,y,width,height,digit) to cut by; add "
            "it, or cut with --by reader",
            param_hint="--by",
        )
    reader = load_reader(model, model_dir) if by == "reader" else None
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int]] = []
    overlaps: list[float] = []
    expected = 0
    for field in fields:
        gray = to_gray(field.path.read_bytes())
        key = field.path.relative_to(folder).as_posix()
        boxes = truth.get(key, []) if truth is not None else []
        expected += len(field.label)
        if reader is None:
            crops = [(k, digit, crop_box(gray, box)) for k, (box, digit) in enumerate(boxes)]
        else:
            cuts = cut_digits(reader, gray, field.label, layout="field")
            crops = [(c.position, c.digit, c.pixels) for c in cuts]
            if len(boxes) == len(field.label):
                overlaps += [iou(c.box, boxes[c.position][0]) for c in cuts]
        for position, digit, pixels in crops:
            name = f"{field.path.stem}_{position}.png"
            Image.fromarray(pixels).save(out / name)
            rows.append((name, digit))
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "digit"])
        writer.writerows(rows)
    console.print(f"{len(rows)} digits of {expected} cut from {len(fields)} fields into {out}")
    if overlaps:
        agree = float(np.mean(np.asarray(overlaps) >= 0.5))
        console.print(
            f"IoU >= 0.5 with {BOXES_FILE}: {100 * agree:.1f} % of {len(overlaps)} cut digits "
            f"(median IoU {float(np.median(overlaps)):.2f})"
        )


@cheques_app.command()
def finetune(
    folder: Annotated[Path, typer.Argument(help="Folder of reviewed fields (labels.csv).")],
    init: Annotated[Path, typer.Option(help="Saved model folder to start from.")],
    out: Annotated[Path, typer.Option(help="Folder to save the fine-tuned model to.")],
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (default labels.csv).")] = None,
    calibrate_share: Annotated[
        float,
        typer.Option(
            min=0.05, max=0.5, help="Share of the reviewed fields kept out for calibration."
        ),
    ] = 0.15,
    steps: Annotated[int, typer.Option(min=1, help="Training batches.")] = 1500,
    batch_size: Annotated[int, typer.Option(min=2)] = 32,
    real_fraction: Annotated[
        float, typer.Option(min=0.05, max=1.0, help="Share of each batch from reviewed fields.")
    ] = 0.5,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 5e-4,
    synth_style: Annotated[
        str,
        typer.Option(
            "--synth",
            help="Synthetic replay style: classic, real, or both (half each: the two styles "
            "the shipped reader learnt in turn).",
        ),
    ] = "real",
    distill_weight: Annotated[
        float,
        typer.Option(min=0.0, help="Distillation to the parent on the replayed rows (0: off)."),
    ] = 10.0,
    review_rate: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Target fraction sent to human review.")
    ] = 0.05,
    seed: int = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    data: DataOpt = None,
) -> None:
    """Fine-tune a reader on real reviewed fields with synthetic replay; recalibrate on real."""
    from inkwell.cheques.dataset import read_labels
    from inkwell.cheques.finetune import (
        REPLAY_STYLES,
        FinetuneConfig,
        finetune_reader,
        load_real_fields,
        split_rows,
    )
    from inkwell.cheques.pools import load_pool
    from inkwell.cheques.reader import ChequeReader
    from inkwell.cheques.train import TrainHooks
    from inkwell.console import console, progress_bar

    check_choice(synth_style, REPLAY_STYLES, "--synth")
    rows = read_labels(folder, labels)
    n_cal = max(1, round(calibrate_share * len(rows)))
    train_rows, cal_rows = split_rows(rows, n_cal, seed + 1)
    cfg = FinetuneConfig(
        steps=steps,
        batch_size=batch_size,
        real_fraction=real_fraction,
        lr=lr,
        seed=seed,
        synth_style=synth_style,
        distill_weight=distill_weight,
        review_rate=review_rate,
        threads=threads,
    )
    reader = ChequeReader.from_dir(init)
    pool = load_pool("train", data)
    with progress_bar() as progress:
        task = progress.add_task("fine-tuning", total=steps, info="")

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, info=f"ctc loss {loss:.3f}")

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            progress.console.print(
                f"step {step}: real calibration fields, string accuracy "
                f"{100 * metrics['val_string_accuracy']:.2f} %, "
                f"CER {100 * metrics['val_cer']:.2f} %"
            )

        outcome = finetune_reader(
            reader,
            load_real_fields(train_rows),
            load_real_fields(cal_rows),
            pool,
            cfg,
            hooks=TrainHooks(on_step, on_eval),
        )
    outcome.reader.save(out)
    cal, report = outcome.calibration, outcome.calibration_report
    console.print(
        f"{len(train_rows)} reviewed fields for training, {len(cal_rows)} for calibration: "
        f"string accuracy {100 * report.string_accuracy:.2f} %, review threshold "
        f"{cal.review_threshold:.4f} ({100 * cal.target_review_rate:.0f} % to review → "
        f"{100 * cal.val_accepted_accuracy:.2f} % on the rest); {outcome.seconds:.0f} s; "
        f"saved to {out}"
    )


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) / 100.0 for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter("use percentages like 0,5,10", param_hint="--review") from exc
    if not rates or any(not 0 <= r < 1 for r in rates):
        raise typer.BadParameter("percentages must be in [0, 100)", param_hint="--review")
    return rates


@cheques_app.command("eval")
def eval_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder with images and labels.csv.")],
    model: ModelOpt = "stable",
    model_dir: ModelDirOpt = None,
    layout: LayoutOpt = "auto",
    decoder: DecoderOpt = "greedy",
    review: Annotated[str, typer.Option(help="Review rates in percent.")] = "0,5,10",
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (default labels.csv).")] = None,
    mistakes: Annotated[int, typer.Option(min=0, help="Show this many mistakes.")] = 10,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report.")] = None,
) -> None:
    """String accuracy, CER and accuracy at review rates on a labelled folder."""
    from inkwell.cheques.dataset import read_labels
    from inkwell.cheques.evaluate import evaluate_folder
    from inkwell.console import console, progress_bar

    check_choice(layout, LAYOUTS, "--layout")
    check_choice(decoder, ("greedy", "beam"), "--decoder")
    rates = _parse_rates(review)
    reader = load_reader(model, model_dir)
    total = len(read_labels(folder, labels))
    with progress_bar() as progress:
        task = progress.add_task("reading", total=total, info="")
        result = evaluate_folder(
            reader,
            folder,
            layout=layout,
            decoder=decoder,
            review_rates=rates,
            labels_file=labels,
            on_item=lambda i: progress.update(task, completed=i),
        )
    report = result.report
    console.print(
        f"model {reader.name} v{reader.version or '(folder)'}, {report.n} images in {folder}, "
        f"decoder {decoder}"
    )
    table = Table("metric", "value", title="cheque amount evaluation")
    table.add_row("string accuracy", f"{100 * report.string_accuracy:.2f} %")
    table.add_row("character error rate", f"{100 * report.cer:.2f} %")
    for rate, acc in report.accuracy_at_review.items():
        table.add_row(f"accuracy at {100 * rate:g} % review", f"{100 * acc:.2f} %")
    table.add_row(
        "needs_review flagged",
        f"{100 * report.flagged_rate:.2f} % (accuracy of the rest "
        f"{100 * report.accepted_accuracy:.2f} %)",
    )
    table.add_row("refused (no ink / no box)", str(report.unreadable))
    table.add_row("median read time", f"{result.median_ms:.1f} ms (p90 {result.p90_ms:.1f} ms)")
    console.print(table)
    if mistakes and report.mistakes:
        worst = Table("image", "truth", "read", "confidence", title="mistakes (least confident)")
        for name, truth, pred, conf in report.mistakes[:mistakes]:
            worst.add_row(name, truth, pred or "-", f"{conf:.3f}")
        console.print(worst)
    if json_out is not None:
        payload = {
            "folder": str(folder),
            "model": {"name": reader.name, "version": reader.version},
            "decoder": decoder,
            "layout": layout,
            **report.to_metrics("eval"),
            "median_ms": result.median_ms,
            "p90_ms": result.p90_ms,
            "refused": result.refused,
            "mistakes": report.mistakes,
        }
        json_out.write_text(json.dumps(payload, indent=2))


@cheques_app.command()
def read(
    files: Annotated[list[Path], typer.Argument(help="Image files (fields or whole cheques).")],
    model: ModelOpt = "stable",
    model_dir: ModelDirOpt = None,
    layout: LayoutOpt = "auto",
    decoder: DecoderOpt = "greedy",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Read the courtesy amount of image files."""
    from inkwell.console import console
    from inkwell.errors import InkwellError

    check_choice(layout, LAYOUTS, "--layout")
    check_choice(decoder, ("greedy", "beam"), "--decoder")
    reader = load_reader(model, model_dir)
    failed = 0
    for path in files:
        if not path.is_file():
            console.print(f"[red]{path}[/red]: no such file")
            failed += 1
            continue
        try:
            reading = reader.read(path.read_bytes(), layout=layout, decoder=decoder)
        except InkwellError as exc:
            failed += 1
            if as_json:
                print(json.dumps({"file": str(path), "code": exc.code, "message": exc.message}))
            else:
                console.print(f"[red]{path}[/red] ({exc.code}): {exc.message}")
            continue
        if as_json:
            print(json.dumps({"file": str(path), **reading.to_dict()}))
            continue
        review = "[yellow]needs review[/yellow]" if reading.needs_review else "[green]ok[/green]"
        where = (
            f", field {reading.field_box} ({reading.locate_method})" if reading.field_box else ""
        )
        console.print(
            f"{path}: [bold]{reading.amount}[/bold] confidence {reading.confidence:.3f} "
            f"{review} ({reading.layout}{where})"
        )
        console.print(
            "  "
            + "  ".join(
                f"{c.digit}@{c.x_start}-{c.x_end} ({c.confidence:.2f})" for c in reading.characters
            )
        )
    if failed:
        raise typer.Exit(code=2)


def register(app: typer.Typer) -> None:
    """Attach `inkwell cheques` to the main CLI."""
    app.add_typer(cheques_app, name="cheques")
