"""A throwaway PostgreSQL cluster for tests: Debian's `postgresql` binaries, started in a temp dir.

CI installs them with `apt-get install postgresql`; where they are absent the tests that need
PostgreSQL are skipped with that instruction. As root the cluster runs as the `postgres` user
(PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness import free_port

SKIP_REASON = (
    "PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's `postgresql` package "
    "(apt-get install -y postgresql) to run the sample store and trainer state against it"
)


def find_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, newest version first; None when not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(versions[0]).parent if versions else None


@dataclass(frozen=True)
class Cluster:
    """A running cluster: where it listens, how to get a fresh database, how to stop/start it."""

    port: int
    user: str
    pg_ctl: tuple[str, ...] = ()
    options: str = ""
    log: str = ""

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: clients are disconnected, committed data is on disk)."""
        subprocess.run(
            [*self.pg_ctl, "-m", mode, "-w", "-t", "60", "stop"],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def start(self) -> None:
        """Start the server again on the same port and data directory."""
        subprocess.run(
            [*self.pg_ctl, "-w", "-t", "60", "-o", self.options, "-l", self.log, "start"],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = f"inkwell_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def running_cluster(bin_dir: Path) -> Iterator[Cluster]:
    """initdb + pg_ctl start in a temp dir; stopped (immediate) and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="inkwell-pg-"))
    data = root / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "inkwell", "-A", "trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on"
        cluster = Cluster(
            port=port, user="inkwell", pg_ctl=tuple(pg_ctl), options=options, log=str(root / "log")
        )
        cluster.start()
        yield cluster
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
