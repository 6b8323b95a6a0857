"""A real PostgreSQL 15 (Debian's packages) started for tests on a temporary directory and a loopback port.

`initdb` and `postgres` refuse to run as root. As root the server runs as the `postgres` user (`runuser`,
the cluster directory owned by it) when that user can reach the binaries; on machines where it cannot
(here `/` is mode 0700, so no other user can execute anything) it runs in a user namespace where our uid
is mapped to 1000 (`unshare --user --map-user=1000`): PostgreSQL sees a non-root user, the kernel still
sees root for file access. As any other user it runs as that user. Trust authentication on 127.0.0.1 and
on a unix socket inside the data directory; nothing listens beyond loopback.

Under pytest-xdist each worker is its own process with its own session, so the session fixture
(`postgres` in conftest.py) gives one server per worker; ports are picked free and a start that loses a
port race retries on another.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

BIN = os.environ.get("CERMIN_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wrapper() -> list[str]:
    """How to run the server's programs as a user that is not root (see the module's docstring)."""
    if os.geteuid() != 0:
        return []
    probe = os.path.join(BIN, "pg_ctl")
    for wrap in (
        ["runuser", "-u", "postgres", "--"],
        ["unshare", "--user", "--map-user=1000", "--map-group=1000", "--"],
    ):
        try:
            if subprocess.run([*wrap, probe, "--version"], capture_output=True, timeout=30).returncode == 0:
                return wrap
        except (OSError, subprocess.TimeoutExpired):
            continue
    raise RuntimeError("cannot run PostgreSQL as a user other than root here (neither runuser nor unshare works)")


def available() -> bool:
    return os.path.exists(os.path.join(BIN, "initdb")) and os.path.exists(os.path.join(BIN, "pg_ctl"))


class Postgres:
    """One running cluster: `.host`, `.port`, `.user`, `.dsn`, `.url`, `new_database(name)`, `psql(sql)`."""

    user = "postgres"
    host = "127.0.0.1"

    def __init__(self, root: str | None = None) -> None:
        # Outside pytest's basetemp: that tree is mode 0700 root, which the postgres user cannot enter.
        # Short, too: the unix socket path must fit in 107 bytes.
        self.root = root or tempfile.mkdtemp(prefix="cermin-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = 0
        self._wrap: list[str] = _wrapper()
        self._started = False

    # ---- addresses --------------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A libpq URI (psql, pg_dump, psycopg all accept it)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def url_for(self, database: str) -> str:
        """A SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def bin(self, name: str) -> str:
        return os.path.join(BIN, name)

    # ---- life cycle -------------------------------------------------------------------------------
    def _server_cmd(self, *argv: str) -> list[str]:
        return [*self._wrap, *argv]

    def start(self, attempts: int = 5) -> Postgres:
        if not available():
            raise RuntimeError(f"PostgreSQL 15 is not installed in {BIN} (apt-get install postgresql)")
        if self._wrap[:1] == ["runuser"]:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        init = subprocess.run(
            self._server_cmd(self.bin("initdb"), "-D", self.data, "-A", "trust", "-U", self.user, "-E", "UTF8", "-N"),
            capture_output=True,
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
        last = ""
        for _ in range(attempts):
            self.port = _free_port()
            opts = (
                f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
            )
            log = os.path.join(self.data, "server.log")
            r = subprocess.run(
                self._server_cmd(self.bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", log, "-w", "-t", "60", "start"),
                capture_output=True,
                timeout=90,
            )
            if r.returncode == 0:
                self._started = True
                atexit.register(self.stop)  # a crashed session still stops its server
                return self
            try:
                with open(log, errors="replace") as f:
                    last = f.read()[-2000:]
            except OSError:
                last = r.stderr.decode(errors="replace")[-2000:]
            time.sleep(0.2)  # most likely lost the port to another process: try another
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def stop(self) -> None:
        if self._started:
            self._started = False
            subprocess.run(
                self._server_cmd(self.bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop"),
                capture_output=True,
                timeout=90,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- SQL --------------------------------------------------------------------------------------
    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> str:
        """Run SQL (stop at the first error); the rows as unaligned text, one per line, '|' between fields."""
        r = subprocess.run(
            [self.bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn_for(database)],
            input=sql.encode(),
            capture_output=True,
            timeout=120,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.decode(errors='replace')[-2000:]}")
        return r.stdout.decode()

    def new_database(self, name: str) -> str:
        """Create an empty database (dropped first if it exists); returns its name."""
        if not _IDENT.match(name):
            raise ValueError(f"database names here are lower-case identifiers: {name!r}")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")
        self.psql(f"CREATE DATABASE {name};")
        return name

    def drop_database(self, name: str) -> None:
        if not _IDENT.match(name):
            raise ValueError(f"database names here are lower-case identifiers: {name!r}")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")

    def databases(self) -> list[str]:
        return self.psql("SELECT datname FROM pg_database ORDER BY 1;").split()
