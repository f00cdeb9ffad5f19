"""The Dockerfile, read the way `docker build` reads it (no Docker engine on our machines).

Guards: two stages with the runtime stage non-root, a health check that really probes, every
copied path present and not excluded by .dockerignore, every project package shipped, the
torch pins equal to pyproject.toml's, and the CPU-only PyTorch index.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str
    values: tuple[str, ...]
    flags: tuple[str, ...]


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with their stage, read by BuildKit's own parser (the `dockerfile` wheel)."""
    import dockerfile

    instructions: list[Instruction] = []
    stage = ""
    for command in dockerfile.parse_file(str(path)):
        keyword = command.cmd.upper()
        values = tuple(command.value)
        if keyword == "FROM":
            stage = values[2] if len(values) == 3 and values[1].upper() == "AS" else values[0]
        args = " ".join((*command.flags, *values))
        instructions.append(Instruction(keyword, args, stage, values, tuple(command.flags)))
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE)


def _stage(instructions: list[Instruction], stage: str) -> list[Instruction]:
    return [i for i in instructions if i.stage == stage]


def _dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        candidates = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
        if any(
            fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/"))
            for c in candidates
        ):
            excluded = not negate
    return excluded


def test_build_has_a_builder_and_a_runtime_stage(instructions: list[Instruction]) -> None:
    stages = [i.stage for i in instructions if i.keyword == "FROM"]
    assert stages == ["builder", "runtime"]
    runtime = _stage(instructions, "runtime")
    copies_from_builder = [
        i for i in runtime if i.keyword == "COPY" and "--from=builder" in i.flags
    ]
    assert copies_from_builder, "the runtime stage must take the built venv from the builder"


def test_runtime_runs_as_a_numeric_non_root_user(instructions: list[Instruction]) -> None:
    users = [i for i in _stage(instructions, "runtime") if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    uid = users[-1].values[0].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
    k8s_uid = re.search(
        r"runAsUser: (\d+)", (REPO / "k8s/base/inkwell-router-deployment.yaml").read_text()
    )
    assert k8s_uid and k8s_uid.group(1) == uid, "k8s runAsUser must equal the image's USER"


def test_healthcheck_runs_the_shipped_probe(instructions: list[Instruction]) -> None:
    checks = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and checks[0].stage == "runtime"
    # Exec form (no shell needed in the image), running the script copied below.
    assert checks[0].values == ("CMD", "python", "/usr/local/bin/inkwell-healthcheck")
    assert any(flag.startswith("--start-period=") for flag in checks[0].flags)
    copied = [i.values for i in instructions if i.keyword == "COPY"]
    assert ("docker/healthcheck.py", "/usr/local/bin/inkwell-healthcheck") in copied


def test_every_copied_path_exists_and_is_in_the_build_context(
    instructions: list[Instruction],
) -> None:
    for copy in (i for i in instructions if i.keyword == "COPY"):
        if any(flag.startswith("--from=") for flag in copy.flags):
            continue
        for source in copy.values[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
            assert not _dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"


def test_every_project_package_is_copied_into_the_image(instructions: list[Instruction]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        {pattern.rstrip("*") for pattern in include if (REPO / pattern.rstrip("*")).is_dir()}
    )
    assert "inkwell" in packages
    sources = {
        p.rstrip("/")
        for i in instructions
        if i.keyword == "COPY" and not i.flags
        for p in i.values[:-1]
    }
    missing = [p for p in packages if p not in sources]
    assert not missing, f"packages not copied into the image (add COPY lines): {missing}"
    for package in packages:
        assert not _dockerignore_excludes(f"{package}/__init__.py")


def test_torch_pins_match_pyproject_and_use_the_cpu_index(instructions: list[Instruction]) -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    for dep in deps:
        match = re.fullmatch(r"(torch|torchvision)==(.+)", dep)
        if match:
            pins[match.group(1)] = match.group(2)
    args = dict(i.values[0].split("=", 1) for i in instructions if i.keyword == "ARG")
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"]
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_ports_exposed_are_the_components_ports(instructions: list[Instruction]) -> None:
    exposed = {p for i in instructions if i.keyword == "EXPOSE" for p in i.values}
    assert exposed == {"8000", "8001", "8002", "8003", "5000"}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.mark.integration
@pytest.mark.parametrize(("path", "healthy"), [("/healthz", True), ("/readyz", False)])
def test_healthcheck_script_exits_zero_only_on_2xx(
    http_server: int, path: str, healthy: bool
) -> None:
    env = {**os.environ, "INKWELL_HEALTHCHECK_URL": f"http://127.0.0.1:{http_server}{path}"}
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, text=True
    )
    assert (result.returncode == 0) is healthy
    if not healthy:
        assert "503" in result.stderr


@pytest.mark.integration
def test_healthcheck_script_reports_an_unreachable_port() -> None:
    env = {**os.environ, "INKWELL_HEALTHCHECK_URL": "http://127.0.0.1:9/healthz"}
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "unreachable" in result.stderr
