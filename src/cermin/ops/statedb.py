"""Opening the state store's database (cermin.ops.state): which URLs it takes, and how a SQLite
connection is set up."""

from __future__ import annotations

import sqlite3
import time

import sqlalchemy as sa
from sqlalchemy import event, exc

from cermin.ops.statevalues import StateError


def state_url(url: str) -> sa.URL:
    """Parse and check a state store URL: sqlite:///path, or postgresql[+psycopg]://... (psycopg 3)."""
    try:
        u = sa.make_url(url)
    except (exc.ArgumentError, ValueError, TypeError):
        raise StateError(f"bad state store URL {url!r}: use sqlite:///PATH or postgresql+psycopg://...") from None
    backend, _, driver = u.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return u.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return u.set(drivername="sqlite")
    shown = u.render_as_string(hide_password=True)
    raise StateError(f"unsupported state store URL {shown!r}: use sqlite:///PATH or postgresql+psycopg://...")


def _sqlite_setup(engine: sa.Engine, busy_ms: int, wal: bool) -> None:
    """WAL (readers never block the writer), a busy timeout (writers queue instead of failing), foreign
    keys on, and BEGIN emitted by us: the sqlite3 module's own transaction handling does not BEGIN before
    SELECT or DDL, which breaks both consistent reads and transactional migrations."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.execute("PRAGMA foreign_keys = ON")
        if wal:
            # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once, without
            # the busy handler, while another process does the same: wait for it like the busy timeout would.
            deadline = time.monotonic() + busy_ms / 1000
            while True:
                try:
                    cur.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; the store is a record, not data
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("cermin_write") else "BEGIN")
