"""The `inkwell` command line as the tests run it: in this process, or as the real entry point.

In this process (`invoke`) is the default: the test process has already imported torch and
MLflow, which every new `inkwell` process spends 3-5 s of CPU on. The root command turns a
domain error into one line and exit status 2 in both ways. Each command group keeps a test
through the real entry point (`run`, a child process: mark it integration), so that the console
script itself stays tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from unittest import mock

from typer.testing import CliRunner, Result

from inkwell.console import console
from inkwell_app.cli import _register_components, app

REPO = Path(__file__).resolve().parents[1]
# the entry point as `python -c` (the console script's `main`), with this checkout importable
ENTRY_POINT = (sys.executable, "-c", "from inkwell_app.cli import main; main()")
# wide enough that rich wraps no message or table row the tests read
COLUMNS = "200"


def invoke(*args: str) -> Result:
    """`inkwell ARGS` in this process; `.output` is stdout and stderr as a terminal shows them.

    An exception other than the usage and domain errors the root command handles is raised,
    so that a failing test shows its traceback.
    """
    _register_components()
    # rich reads COLUMNS once, when the shared console is made: pytest-xdist's workers have
    # COLUMNS=80 then, which would wrap long paths in the messages the tests read
    with mock.patch.object(console, "_width", int(COLUMNS)):
        return CliRunner().invoke(app, list(args), env={"COLUMNS": COLUMNS}, catch_exceptions=False)


def run(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`inkwell ARGS` as a real process in `cwd`, with `env` (default: this process's)."""
    base = dict(os.environ if env is None else env)
    base.update(PYTHONPATH=str(REPO), COLUMNS=COLUMNS)
    return subprocess.run(
        [*ENTRY_POINT, *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=timeout
    )
