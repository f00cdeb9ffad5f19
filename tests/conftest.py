"""Shared fixtures: where real MNIST is, and an isolated INKWELL_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [
    os.environ.get("INKWELL_DATA_DIR"),
    str(REPO.parent / "shared" / "data" / "mnist"),
]


def _find_mnist() -> Path | None:
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST directory; the suite needs it (CI points INKWELL_DATA_DIR there)."""
    found = _find_mnist()
    if found is None:
        pytest.fail(
            "Real MNIST not found: set INKWELL_DATA_DIR to the folder with the four IDX .gz files"
        )
    return found


@pytest.fixture
def inkwell_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_dir: Path) -> Path:
    """A fresh INKWELL_HOME (registry, artifacts, sample store) for one test."""
    home = tmp_path / "inkwell-home"
    home.mkdir()
    monkeypatch.setenv("INKWELL_HOME", str(home))
    monkeypatch.setenv("INKWELL_DATA_DIR", str(mnist_dir))
    for name in ("INKWELL_TRACKING_URI", "MLFLOW_TRACKING_URI", "INKWELL_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return home
