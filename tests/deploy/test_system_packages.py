"""`make test` on a fresh machine: scripts/system-packages installs the Debian packages the
suite uses (root with apt-get) or stops first with one message naming the command to run, and
CI runs exactly the README's test command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "system-packages"
PACKAGES = ["prometheus", "prometheus-alertmanager", "chromium", "nginx-light", "postgresql", "wrk"]
COMMANDS = ["prometheus", "amtool", "chromium", "nginx", "pg_ctlcluster", "wrk"]


def run_script(path_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(path_dir)}
    return subprocess.run(
        ["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def bin_with(tmp_path: Path, names: list[str]) -> Path:
    """A PATH folder holding `id` and the named commands (links to the real `true`)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "id").symlink_to(shutil.which("id") or "/usr/bin/id")
    for name in names:
        (folder / name).symlink_to(shutil.which("true") or "/bin/true")
    return folder


@pytest.mark.integration
def test_missing_packages_without_apt_stop_with_one_message_naming_the_command(
    tmp_path: Path,
) -> None:
    result = run_script(bin_with(tmp_path, ["wrk"]))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    missing = " ".join(p for p in PACKAGES if p != "wrk")
    assert f"sudo apt-get install -y --no-install-recommends {missing}" in lines[0]
    assert result.stdout == ""


@pytest.mark.integration
def test_nothing_is_installed_when_every_package_is_there(tmp_path: Path) -> None:
    result = run_script(bin_with(tmp_path, COMMANDS))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.integration
def test_make_test_installs_the_packages_before_any_check_or_test() -> None:
    # what `make test` would run, in order (make -n runs nothing but the recursive makes)
    planned = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()

    def first(command: str) -> int:
        return next(i for i, line in enumerate(planned) if command in line)

    packages = first("scripts/system-packages")
    for later in ("ruff check", "mypy", "pytest"):
        assert packages < first(later), planned
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^system-packages:\n\tscripts/system-packages$", makefile, re.MULTILINE)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = [
        line
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert commands == ["exec make test"]
    assert "make test" in (REPO / "README.md").read_text()
