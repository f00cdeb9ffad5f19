"""Shared fixtures: where real MNIST is, and an isolated INKWELL_HOME per test."""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import require_integration_mark, watch_spawns
from tests.postgres import SKIP_REASON, Cluster, find_bin, running_cluster

REPO = Path(__file__).resolve().parents[1]
# where a machine without a copy gets MNIST, once (test-artifacts/ is git-ignored)
DOWNLOADED = REPO / "test-artifacts" / "cache" / "mnist"
_CANDIDATES = [
    os.environ.get("INKWELL_DATA_DIR"),
    str(REPO.parent / "shared" / "data" / "mnist"),
    str(REPO.parent.parent / "shared" / "data" / "mnist"),  # a git worktree under <work>/wt/
    str(DOWNLOADED / "MNIST" / "raw"),
]


def _find_mnist() -> Path | None:
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST directory: INKWELL_DATA_DIR, ../shared/data/mnist, or downloaded once."""
    found = _find_mnist()
    if found is None:
        from inkwell.data import download_mnist

        try:
            found = download_mnist(DOWNLOADED)
        except (OSError, RuntimeError) as exc:
            pytest.fail(
                f"Real MNIST not found and downloading it failed ({exc}): set INKWELL_DATA_DIR "
                "to the folder with the four IDX .gz files"
            )
    return found


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store with its schema migrated once (creating one takes ~1 s: dozens of
    migrations). Homes get a copy (`copy_mlflow_db`); what a registry holds is the test's."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def copy_mlflow_db(template: Path, home: Path) -> Path:
    """Make `home` (if needed) with an empty, migrated MLflow store where the default settings
    look for it (`<home>/mlflow.db`); returns `home`."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, home / "mlflow.db")
    return home


@pytest.fixture
def inkwell_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, empty_mlflow_db: Path
) -> Path:
    """A fresh INKWELL_HOME (empty registry, artifacts, sample store) for one test."""
    home = copy_mlflow_db(empty_mlflow_db, tmp_path / "inkwell-home")
    monkeypatch.setenv("INKWELL_HOME", str(home))
    monkeypatch.setenv("INKWELL_DATA_DIR", str(mnist_dir))
    for name in ("INKWELL_TRACKING_URI", "MLFLOW_TRACKING_URI", "INKWELL_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


def pytest_configure(config: pytest.Config) -> None:
    """With pytest-xdist, keep the file order `pytest_collection_modifyitems` gives (xdist's
    `--no-loadscope-reorder`; an addopt would break `pytest -p no:xdist`)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding slow tests first, then files with more tests first; a file's own tests keep
    their order.

    Under `make test` (`--dist loadfile`) a file is one unit of work. pytest-xdist's own order
    (most tests first) handed out the long files with few tests (the end-to-end loop, the
    router's rollouts, fuzzing, `inkwell up`) last, so one worker finished them alone while the
    others idled. Started first, the short files fill in around them; `pytest_configure` turns
    xdist's loadscope reorder off so it keeps this order.
    """
    counts: dict[Path, int] = {}
    slow: dict[Path, int] = {}
    for item in items:
        counts[item.path] = counts.get(item.path, 0) + 1
        if item.get_closest_marker("slow"):
            slow[item.path] = slow.get(item.path, 0) + 1

    def order(path: Path) -> tuple[float, int]:
        # all-slow files (end-to-end runs, fuzzing) are the longest; then the share of slow tests
        share = slow.get(path, 0) / counts[path]
        return (-share, -counts[path]) if share else (1.0, -counts[path])

    first = {path: index for index, path in enumerate(counts)}
    items.sort(key=lambda item: (*order(item.path), first[item.path]))


# A test that failed once and passed on its rerun would leave no trace of why in CI's log
# (`-ra` lists only the name). Keep the first failure's text and print it at the end.
_RERUN_FAILURES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.outcome == "rerun":
        _RERUN_FAILURES.append(f"{report.nodeid} ({report.when}):\n{report.longreprtext[-4000:]}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _RERUN_FAILURES:
        terminalreporter.section("failures that passed on their rerun")
        for text in _RERUN_FAILURES:
            terminalreporter.write_line(text)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """A fixture that starts a process makes its test an integration test."""
    with watch_spawns() as started:
        result = yield
    require_integration_mark(item, started)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test that starts a process must be marked integration (`-m "not integration"`)."""
    with watch_spawns() as started:
        result = yield
    require_integration_mark(item, started)
    return result


def _freeze_test_heap() -> None:
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def frozen_test_heap() -> None:
    """Freeze the test process's start-up heap (torch, MLflow, every collected test module) once.

    An app started in-process (router, service) collects and freezes its heap when started
    (inkwell/heap.py). Inside a frozen process it leaves that freeze alone, so each of the
    suite's hundreds of in-process starts no longer walks the whole test process (about half a
    million objects, 0.4-0.8 s on a busy 2-core machine); objects the tests create stay with
    the collector as usual. `unfrozen_heap` gives a test the unfrozen process apps see in
    production.
    """
    # Left frozen at the end: the process exits, and pytest's last collection stays cheap too.
    _freeze_test_heap()


@pytest.fixture
def unfrozen_heap() -> Iterator[None]:
    """Nothing frozen during the test, as in a component's own process; refrozen afterwards."""
    gc.unfreeze()
    yield
    gc.unfreeze()
    _freeze_test_heap()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster per session; skipped when PostgreSQL is not installed."""
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip(SKIP_REASON)
    with running_cluster(bin_dir) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty sample database: SQLite and (when installed) real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inkwell.db'}"
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()
