"""Shared fixtures for the cheque tests: the digit pools, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from inkwell.cheques.pools import DigitPool, load_pool


@pytest.fixture(scope="session")
def train_pool(mnist_dir: Path) -> DigitPool:
    return load_pool("train", mnist_dir)


@pytest.fixture(scope="session")
def val_pool(mnist_dir: Path) -> DigitPool:
    return load_pool("val", mnist_dir)


@pytest.fixture(scope="session")
def test_pool(mnist_dir: Path) -> DigitPool:
    return load_pool("test", mnist_dir)
