"""The MNIST loader reads the real IDX files and fails clearly on missing or corrupt ones."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inkwell.data import load_split, read_idx, resolve_data_dir
from inkwell.errors import DataCorruptError, DataNotFoundError
from inkwell.settings import CoreSettings

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_train_split_has_real_shapes_dtype_and_class_counts(mnist_dir: Path) -> None:
    split = load_split("train", mnist_dir)
    assert split.images.shape == (60_000, 28, 28)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (60_000,)
    assert np.bincount(split.labels, minlength=10).tolist() == TRAIN_COUNTS
    assert split.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert split.md5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_test_split_has_real_class_counts(mnist_dir: Path) -> None:
    split = load_split("test", mnist_dir)
    assert split.images.shape == (10_000, 28, 28)
    assert np.bincount(split.labels, minlength=10).tolist() == TEST_COUNTS
    assert 0 < split.images.mean() < 255


def test_data_dir_comes_from_env_variable(
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INKWELL_HOME", str(tmp_path))
    monkeypatch.setenv("INKWELL_DATA_DIR", str(mnist_dir))
    assert resolve_data_dir() == mnist_dir


def test_missing_data_error_lists_where_it_looked_and_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INKWELL_DATA_DIR", raising=False)
    monkeypatch.delenv("INKWELL_ALLOW_DOWNLOAD", raising=False)
    settings = CoreSettings(home=tmp_path / "home", allow_download=False)
    with pytest.raises(DataNotFoundError) as err:
        load_split("train", tmp_path / "nowhere", settings)
    message = err.value.message
    assert str(tmp_path / "nowhere") in message
    assert str(tmp_path / "home" / "data" / "mnist") in message
    assert "INKWELL_DATA_DIR" in message and "INKWELL_ALLOW_DOWNLOAD" in message


def test_download_is_on_by_default_like_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INKWELL_ALLOW_DOWNLOAD", raising=False)
    assert CoreSettings().allow_download is True
    monkeypatch.setenv("INKWELL_ALLOW_DOWNLOAD", "0")
    assert CoreSettings().allow_download is False


@pytest.fixture
def mnist_mirror(mnist_dir: Path) -> Iterator[str]:
    """The real MNIST .gz files served over HTTP on a free port (a torchvision mirror)."""
    handler = functools.partial(_QuietHandler, directory=str(mnist_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.slow
def test_missing_mnist_is_downloaded_into_home_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_mirror: str
) -> None:
    monkeypatch.delenv("INKWELL_DATA_DIR", raising=False)
    settings = CoreSettings(home=tmp_path / "home", mnist_mirrors=[mnist_mirror])
    split = load_split("test", tmp_path / "nowhere", settings)
    assert np.bincount(split.labels, minlength=10).tolist() == TEST_COUNTS
    assert split.source == tmp_path / "home" / "data" / "mnist" / "MNIST" / "raw"
    # the next look-up finds the downloaded copy in the home without the mirror
    offline = CoreSettings(home=tmp_path / "home", allow_download=False)
    assert len(load_split("train", None, offline)) == 60_000


def test_failed_download_says_it_failed_and_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INKWELL_DATA_DIR", raising=False)
    with socket.socket() as sock:  # a port nothing listens on: the download is refused
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    settings = CoreSettings(home=tmp_path / "home", mnist_mirrors=[closed])
    with pytest.raises(DataNotFoundError) as err:
        load_split("train", tmp_path / "nowhere", settings)
    message = err.value.message
    assert "downloading it failed" in message
    assert "INKWELL_DATA_DIR" in message and "INKWELL_ALLOW_DOWNLOAD=0" in message
    assert str(tmp_path / "nowhere") in message


def _copy_split(mnist_dir: Path, target: Path) -> Path:
    target.mkdir()
    for path in mnist_dir.glob("*.gz"):
        shutil.copy(path, target / path.name)
    return target


def test_truncated_gzip_gives_clear_corruption_error(mnist_dir: Path, tmp_path: Path) -> None:
    data = _copy_split(mnist_dir, tmp_path / "mnist")
    victim = data / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:50_000])
    with pytest.raises(DataCorruptError, match="truncated or corrupt"):
        load_split("test", data)


def test_idx_body_shorter_than_header_says_truncated(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write((0x801).to_bytes(4, "big") + (10_000).to_bytes(4, "big") + bytes(100))
    with pytest.raises(DataCorruptError, match="declares shape"):
        read_idx(path, 0x801)


def test_wrong_magic_number_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes((0x803).to_bytes(4, "big") + bytes(12))
    with pytest.raises(DataCorruptError, match="magic"):
        read_idx(path, 0x801)


def test_uncompressed_files_are_read_too(mnist_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in mnist_dir.glob("*.gz"):
        with gzip.open(path) as src:
            (raw / path.name.removesuffix(".gz")).write_bytes(src.read())
    assert len(load_split("test", raw)) == 10_000
