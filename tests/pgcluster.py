"""A PostgreSQL server of a test's own, which the test may stop and start again.

The machine's server (127.0.0.1:5432) is shared by every test and by other sessions, so a
test that restarts its database mid-stream gets its own: ``initdb`` into a temporary
folder, one free port on loopback, trust authentication. The binaries are Debian's
(``/usr/lib/postgresql/<version>/bin``) or those on ``PATH``; as root, the server runs as
the ``postgres`` user (PostgreSQL refuses to run as root).

Example::

    with PostgresCluster() as pg:
        settings = Settings(sql_url=pg.url, ...)
        pg.stop()
        pg.start()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from infra.broker import free_port


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return debian[-1].parent if debian else None


class PostgresCluster:
    """A throw-away PostgreSQL cluster on ``127.0.0.1:<free port>``; skipped (or failed,
    under ``S2A_REQUIRE_POSTGRES=1``) where no PostgreSQL binaries are installed."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            reason = "no PostgreSQL binaries (initdb, pg_ctl) on this machine"
            if os.environ.get("S2A_REQUIRE_POSTGRES") == "1":
                pytest.fail(f"S2A_REQUIRE_POSTGRES=1 but {reason}")
            pytest.skip(reason)
        self.bindir = bindir
        self.port = free_port()
        # Not pytest's tmp_path: its parents are private to root, and the server's user
        # must reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="s2a-pg-"))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        log = self.root / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every connection (a restart, as operators do
        it); ``immediate`` is a crash, recovered from the WAL at the next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)
