"""Fixtures for `inkwell up` and the web page: a home holding the shipped digit model, and
stacks started with `inkwell up` that are always stopped (then killed) after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import copy_mlflow_db
from tests.e2e.stack import ARTIFACTS, Stack, register_digits, shipped_digit_weights


@pytest.fixture(scope="session")
def base_weights() -> dict[str, torch.Tensor]:
    """The shipped base digit model's weights (trained with the production recipe)."""
    return shipped_digit_weights()


@pytest.fixture
def stack_home(
    tmp_path: Path, base_weights: dict[str, torch.Tensor], empty_mlflow_db: Path
) -> Path:
    """A fresh INKWELL_HOME whose registry has version 1 of the digit model as `stable`."""
    home = copy_mlflow_db(empty_mlflow_db, tmp_path / "home")
    register_digits(home, base_weights, ("stable",), note="shipped weights")
    return home


@pytest.fixture
def start_stack(
    stack_home: Path, mnist_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Stack]]:
    """Start `inkwell up` (optionally with some components or settings); always cleaned up."""
    started: list[Stack] = []

    def start(*args: str, timeout: float = 300.0, **kwargs: object) -> Stack:
        log = ARTIFACTS / "up" / f"{request.node.name}-{len(started)}.log"
        stack = Stack(home=stack_home, mnist=mnist_dir, log_path=log, **kwargs)  # type: ignore[arg-type]
        started.append(stack)
        return stack.start(timeout, *args)

    yield start
    for stack in started:
        stack.stop(timeout=30)
        stack.kill()
        stack.save_logs()
