"""
A real PostgreSQL server for tests: Debian's ``postgresql`` binaries, ``initdb`` into a
temporary directory, listening on a free loopback port and a Unix socket in that directory.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
unprivileged ``nobody`` (through ``runuser``) in a directory it owns. Missing binaries are an
error naming the package, never a skip (``.ci/run`` installs ``postgresql``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import attrs

#: Where Debian puts the server binaries (``/usr/lib/postgresql/<major>/bin``).
_BIN_GLOB = "/usr/lib/postgresql/*/bin"
DATABASE = "txrelay"


def server_bin() -> Path:
    """The newest installed PostgreSQL's binary directory; fails clearly when none is."""
    found = sorted(glob.glob(_BIN_GLOB), key=lambda p: int(p.split("/")[-2]))
    for directory in reversed(found):
        if os.access(os.path.join(directory, "pg_ctl"), os.X_OK):
            return Path(directory)
    raise RuntimeError(
        "PostgreSQL's server binaries are missing (no /usr/lib/postgresql/*/bin/pg_ctl): "
        "install Debian's postgresql package (apt-get install postgresql); .ci/run does")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Postgres:
    """A running server (see :func:`start_postgres`)."""

    bin: Path
    root: Path
    port: int
    user: str | None  # the OS user the server runs as (None: this one)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE} user=postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check,
                              cwd=self.root, timeout=120)

    def start(self) -> None:
        """Start the server (again) on the same port and wait until it accepts."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 "
                  f"-c unix_socket_directories={self.root} -c fsync=off", "start")

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``: like a crash, for outage tests)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                  "stop", check=False)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""


def start_postgres() -> Postgres:
    """initdb, start, and create the :data:`DATABASE` database; stop it with ``close``."""
    pg_bin = server_bin()
    user = None
    root = Path(tempfile.mkdtemp(prefix="txrelay-pg-"))
    if os.geteuid() == 0:
        user = "nobody"
        shutil.chown(root, user)
    pg = Postgres(pg_bin, root, free_port(), user)
    try:
        pg._run(str(pg_bin / "initdb"), "-D", str(pg.data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync")
        pg.start()
        deadline = time.monotonic() + 30
        while True:
            made = pg._run(str(pg_bin / "createdb"), "-h", str(root), "-p", str(pg.port),
                           "-U", "postgres", DATABASE, check=False)
            if made.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {made.stderr}\n{pg.log()}")
            time.sleep(0.2)
    except subprocess.CalledProcessError as e:
        close_postgres(pg)
        raise RuntimeError(f"PostgreSQL did not start: {e.cmd}: {e.stderr}\n{pg.log()}") from e
    return pg


def close_postgres(pg: Postgres) -> None:
    """Stop the server and remove its directory."""
    pg.stop()
    shutil.rmtree(pg.root, ignore_errors=True)
