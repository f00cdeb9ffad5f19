"""Real MNIST from the standard IDX files, found in a configurable directory.

Look-up order for the directory: the explicit argument, `INKWELL_DATA_DIR`, then
`<INKWELL_HOME>/data/mnist`; if none holds the files, torchvision downloads them into
`<INKWELL_HOME>/data/mnist` as torchvision users expect (`INKWELL_ALLOW_DOWNLOAD=0` turns that
off). Files may be gzip-compressed (`.gz`) or raw.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inkwell.errors import DataCorruptError, DataNotFoundError
from inkwell.settings import CoreSettings

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
# MNIST mean/std of pixel intensity in [0, 1]; the model normalises with these.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class Split:
    """One MNIST split: uint8 images (N, 28, 28), int64 labels (N,), and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: Path
    md5: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _candidates(data_dir: Path | None, settings: CoreSettings) -> list[Path]:
    dirs: list[Path] = []
    for d in (data_dir, settings.data_dir, settings.home / "data" / "mnist"):
        if d is not None and Path(d).expanduser() not in dirs:
            dirs.append(Path(d).expanduser())
    return dirs


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        for sub in (directory, directory / "MNIST" / "raw", directory / "raw"):
            path = sub / name
            if path.is_file():
                return path
    return None


def _has_split(directory: Path, split: str) -> bool:
    return all(_find_file(directory, stem) is not None for stem in SPLIT_FILES[split])


def resolve_data_dir(data_dir: Path | None = None, settings: CoreSettings | None = None) -> Path:
    """Return the first directory holding all MNIST files, or explain where we looked."""
    settings = settings or CoreSettings()
    looked = _candidates(data_dir, settings)
    for directory in looked:
        if _has_split(directory, "train") and _has_split(directory, "test"):
            return directory
    where = "\n".join(f"  - {d}" for d in looked)
    names = ", ".join(f"{s}.gz" for pair in SPLIT_FILES.values() for s in pair)
    if settings.allow_download:
        try:
            return download_mnist(settings.home / "data" / "mnist", settings.mnist_mirrors)
        except (OSError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DataNotFoundError(
                "MNIST was not found and downloading it failed "
                f"({reason}). Looked in:\n{where}\n"
                f"Fix: connect this machine to the internet and retry, or copy the four IDX "
                f"files ({names}) into one of those directories, or set "
                "INKWELL_DATA_DIR=/path/to/mnist (or pass --data DIR). "
                "INKWELL_ALLOW_DOWNLOAD=0 stops the download attempts."
            ) from exc
    raise DataNotFoundError(
        "MNIST was not found. Looked in:\n"
        f"{where}\n"
        f"Fix: put the four IDX files ({names}) in one of those directories, or set "
        "INKWELL_DATA_DIR=/path/to/mnist (or pass --data DIR), or set INKWELL_ALLOW_DOWNLOAD=1 "
        "to download them when this machine is online."
    )


def download_mnist(target: Path, mirrors: Sequence[str] = ()) -> Path:
    """Download the four MNIST files with torchvision (md5-checked); returns their folder.

    `mirrors` replace torchvision's list of base URLs when given."""
    from torchvision import datasets

    class MNIST(datasets.MNIST):  # the class name is the folder torchvision writes into
        pass

    if mirrors:
        MNIST.mirrors = [m if m.endswith("/") else f"{m}/" for m in mirrors]
    target.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        MNIST(str(target), train=train, download=True)
    return target / "MNIST" / "raw"


def md5_of(path: Path) -> str:
    """md5 hex digest of a file."""
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataCorruptError(
            f"{path} could not be decompressed ({exc}). The file is truncated or corrupt: "
            "replace it with an intact copy (md5s are listed in docs/data.md)."
        ) from exc


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (images: magic 0x803, labels: magic 0x801) into a uint8 array."""
    raw = _read_bytes(path)
    ndim = expected_magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataCorruptError(
            f"{path} is {len(raw)} bytes, too short for an IDX header. Replace the file."
        )
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise DataCorruptError(
            f"{path} has IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x}: it is not "
            "the MNIST file its name says. Check the file names and replace the file."
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(dims))
    body = len(raw) - header_len
    if body != expected:
        raise DataCorruptError(
            f"{path} declares shape {dims} ({expected} bytes of data) but holds {body}: the "
            "file is truncated or corrupt. Replace it with an intact copy."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def load_split(
    split: str, data_dir: Path | None = None, settings: CoreSettings | None = None
) -> Split:
    """Load `train` or `test` from the resolved data directory, validating shapes and labels."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    directory = resolve_data_dir(data_dir, settings)
    image_stem, label_stem = SPLIT_FILES[split]
    image_path = _find_file(directory, image_stem)
    label_path = _find_file(directory, label_stem)
    if image_path is None or label_path is None:
        raise DataNotFoundError(f"{directory} lacks the MNIST {split} files {image_stem}(.gz).")
    images = read_idx(image_path, IMAGE_MAGIC)
    labels = read_idx(label_path, LABEL_MAGIC).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise DataCorruptError(f"{image_path} holds images of {images.shape[1:]}, not 28x28.")
    if images.shape[0] != labels.shape[0]:
        raise DataCorruptError(
            f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} "
            "labels: the pair does not belong together."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataCorruptError(f"{label_path} holds labels outside 0-9.")
    md5 = {image_path.name: md5_of(image_path), label_path.name: md5_of(label_path)}
    return Split(images=images, labels=labels, source=directory, md5=md5)
