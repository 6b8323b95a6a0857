"""Application checks of a drill: prove the restored data is usable, not only present (ops/drill.py).

- postgres: a scratch database `cermin_drill_<random>` is created on the source's server, the restored
  dump is loaded with `psql -v ON_ERROR_STOP=1`, the query must return at least one row, and the
  scratch database is dropped whatever happened. The dump came out of a repository, so it is hostile
  input: psql runs in *restricted mode* (`\\restrict` with a random key is sent before the dump), in
  which psql refuses every backslash command — a planted `\\! rm -rf /` in a dump cannot run on this
  host. pg_dump's own `\\restrict`/`\\unrestrict` lines (15.14 and later) are dropped on the way in.
  This needs psql 13.22, 14.19, 15.14, 16.10, 17.6 or later; an older one fails the check. The SQL
  itself runs on the database server with the source's role: give drills a role without superuser.
- sqlite: the restored file is opened read-only and immutable (no journal, no lock files), untrusted
  schema off; `PRAGMA integrity_check` must answer ok and the query must return a row.
- command: argv with `{restore_dir}` replaced, run in the sandbox; exit status 0 passes.
- files: at least `min_files` (at least 1) regular files were restored.
Each check is bounded by its `timeout`; its result is a CheckResult, never an exception.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import subprocess
import threading
import time

from cermin.errors import CerminError
from cermin.ops.config import Check, Source, parse_duration
from cermin.ops.drillreport import CheckResult, clean_text
from cermin.ops.sources import pg_conn_args, pg_env, pg_tool

# psql releases that know \restrict (the fix of CVE-2025-8714), by major version
_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
_RESTRICT_LINE = re.compile(rb"^\\(un)?restrict\s+[A-Za-z0-9]+\s*$")
_COPY_START = re.compile(rb"^COPY .* FROM stdin;\s*$")
_COPY_END = (b"\\.\n", b"\\.\r\n", b"\\.")


class CheckFailed(CerminError):
    pass


class Restored:
    """What a check may read: the sandbox, and per source its directory and stdin file (if any)."""

    def __init__(self, sandbox: str) -> None:
        self.sandbox = sandbox
        self.dirs: dict[str, str] = {}  # source name -> its restore directory
        self.files: dict[str, str] = {}  # source name -> the stdin snapshot's file (postgres, sqlite, command)
        self.file_counts: dict[str, int] = {}
        self.failed: set[str] = set()  # sources whose restore or verification failed


def run_check(
    chk: Check, name: str, source: Source | None, restored: Restored, environ, monotonic=time.monotonic
) -> CheckResult:
    src_name = "" if source is None else _source_name(source)
    t0 = monotonic()

    def result(ok: bool, detail: str, skipped: bool = False) -> CheckResult:
        return CheckResult(
            name=name,
            type=chk.type,
            source=src_name,
            ok=ok,
            skipped=skipped,
            detail=clean_text(detail),
            seconds=round(monotonic() - t0, 3),
        )

    if source is None and (chk.source or chk.type in ("postgres", "sqlite")):
        return result(False, f"no {chk.source or chk.type} source in the system for this check")
    if src_name and src_name not in restored.dirs and src_name not in restored.failed:
        return result(False, f"not run: source {src_name} is not part of this drill", skipped=True)
    if src_name in restored.failed:
        return result(False, f"not run: the restore of source {src_name} failed")
    timeout = parse_duration(chk.timeout)
    try:
        if chk.type == "postgres":
            return result(True, _postgres(chk, source, _stdin_file(restored, src_name), environ, timeout))
        if chk.type == "sqlite":
            return result(True, _sqlite(chk, _stdin_file(restored, src_name), timeout, monotonic))
        if chk.type == "command":
            where = restored.dirs[src_name] if src_name else restored.sandbox
            return result(True, _command(chk, where, restored.sandbox, environ, timeout))
        if chk.type == "files":
            n = restored.file_counts.get(src_name, 0) if src_name else sum(restored.file_counts.values())
            want = max(1, chk.min_files)
            if n < want:
                raise CheckFailed(f"{n} files restored, at least {want} expected")
            return result(True, f"{n} files restored (at least {want})")
        raise CheckFailed(f"unknown check type {chk.type!r}")
    except CerminError as e:
        return result(False, str(e))


def _source_name(source: Source) -> str:
    from cermin.ops.config import source_name

    return source_name(source)


def _stdin_file(restored: Restored, src_name: str) -> str:
    path = restored.files.get(src_name)
    if not path:
        raise CheckFailed(f"source {src_name} restored no database file")
    return path


def _open_plain(path: str):
    """The restored file, refusing a symlink or anything but a regular file (the snapshot is hostile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise CheckFailed(f"cannot open the restored {os.path.basename(path)}: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise CheckFailed(f"the restored {os.path.basename(path)} is not a regular file")
    return f


# ---- postgres -----------------------------------------------------------------------------------
def psql_restricts(psql: str, env: dict) -> bool:
    try:
        out = subprocess.run([psql, "--version"], capture_output=True, env=env, timeout=30).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return False
    m = re.search(r"(\d+)\.(\d+)", out)
    if not m:
        return False
    major, minor = int(m.group(1)), int(m.group(2))
    return major >= 18 or minor >= _RESTRICT_SINCE.get(major, 1 << 30)


def _postgres(chk: Check, source: Source, dump: str, environ, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    env, password = pg_env(source, environ)
    psql = pg_tool("psql", environ)
    if not psql_restricts(psql, env):
        raise CheckFailed(
            f"{psql} cannot load an untrusted dump safely (it lacks \\restrict): "
            "use psql 13.22, 14.19, 15.14, 16.10, 17.6 or later (or set CERMIN_PG_BIN)"
        )
    base = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", *pg_conn_args(source)]
    scratch = f"cermin_drill_{secrets.token_hex(6)}"
    hide = (password,)

    def sql(db: str, text: str, what: str) -> str:
        left = max(1.0, deadline - time.monotonic())
        try:
            p = subprocess.run(
                [*base, "-A", "-t", "-d", db, "-c", text],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                timeout=left,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"{what}: still running after {timeout:g}s") from None
        if p.returncode != 0:
            raise CheckFailed(f"{what}: {_tail(p.stderr, hide)}")
        return p.stdout.decode("utf-8", "replace")

    maint = _maintenance_db(sql, source, scratch)
    try:
        _load(base, scratch, dump, env, deadline, timeout, hide)
        query = chk.query.strip().rstrip(";")
        out = sql(scratch, f"SELECT count(*) FROM (\n{query}\n) AS cermin_drill_rows", "the check query")
        try:
            rows = int(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise CheckFailed(f"the check query gave no row count: {out[:200]!r}") from None
        if rows < 1:
            raise CheckFailed("the check query returned no rows")
        return f"dump loaded into a scratch database; the query returned {rows} row{'s' if rows != 1 else ''}"
    finally:
        with contextlib.suppress(CerminError):
            _drop(sql, maint, scratch)


def _maintenance_db(sql, source: Source, scratch: str) -> str:
    """Create the scratch database from the first database we may connect to; that one's name."""
    last: CerminError | None = None
    for db in dict.fromkeys(("postgres", source.database, "template1")):
        try:
            sql(db, f'CREATE DATABASE "{scratch}"', "creating the scratch database")
            return db
        except CheckFailed as e:
            last = e
            if "permission denied" in str(e) or "already exists" in str(e):
                break
    raise last or CheckFailed("cannot create the scratch database")


def _drop(sql, maint: str, scratch: str) -> None:
    try:
        sql(maint, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', "dropping the scratch database")
    except CheckFailed:
        sql(maint, f'DROP DATABASE IF EXISTS "{scratch}"', "dropping the scratch database")  # before 13


def _load(base: list[str], db: str, dump: str, env: dict, deadline: float, timeout: float, hide) -> None:
    """Stream the dump into psql in restricted mode (see the module's docstring)."""
    with _open_plain(dump) as f:
        p = subprocess.Popen(
            [*base, "-d", db],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
        reader.start()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)

        timer = threading.Timer(max(1.0, deadline - time.monotonic()), expire)
        timer.start()
        try:
            try:
                p.stdin.write(b"\\restrict " + secrets.token_hex(24).encode() + b"\n")
                for chunk in _without_restrict_lines(f):
                    p.stdin.write(chunk)
                p.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # psql stopped (an error with ON_ERROR_STOP, or the timeout): its status says why
            rc = p.wait()
        finally:
            timer.cancel()
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        reader.join(timeout=5)
    if expired.is_set():
        raise CheckFailed(f"loading the dump: still running after {timeout:g}s")
    if rc != 0:
        stderr = b"".join(err)
        if b"backslash commands are restricted" in stderr:
            raise CheckFailed("the dump holds psql backslash commands: refused (a dump from pg_dump has none)")
        raise CheckFailed(f"loading the dump failed: {_tail(stderr, hide)}")


def _without_restrict_lines(f):
    """The dump's lines, minus pg_dump's own \\restrict / \\unrestrict lines outside COPY data."""
    in_copy = False
    batch: list[bytes] = []
    size = 0
    for line in f:
        if in_copy:
            if line in _COPY_END:
                in_copy = False
        elif _RESTRICT_LINE.match(line):
            continue
        elif line.startswith(b"COPY ") and _COPY_START.match(line):
            in_copy = True
        batch.append(line)
        size += len(line)
        if size >= 1 << 20:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def _tail(stderr: bytes, hide=()) -> str:
    text = stderr.decode("utf-8", "replace")
    for s in hide:
        if s:
            text = text.replace(s, "***")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-500:] or "no message"


# ---- sqlite -------------------------------------------------------------------------------------
def _sqlite(chk: Check, path: str, timeout: float, monotonic) -> str:
    import sqlite3
    from urllib.parse import quote

    with _open_plain(path):
        pass  # a regular file, not a symlink
    deadline = monotonic() + timeout
    try:
        con = sqlite3.connect(f"file:{quote(path)}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as e:
        raise CheckFailed(f"cannot open the restored database: {e}") from None
    try:
        con.set_progress_handler(lambda: 1 if monotonic() > deadline else 0, 10000)
        try:
            con.execute("PRAGMA trusted_schema=OFF")
            found = [r[0] for r in con.execute("PRAGMA integrity_check(20)").fetchall()]
            if found != ["ok"]:
                raise CheckFailed(f"integrity_check: {'; '.join(map(str, found))[:500]}")
            row = con.execute(chk.query).fetchone()
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise CheckFailed(f"still running after {timeout:g}s") from None
            raise CheckFailed(f"{e}") from None
        except sqlite3.Error as e:
            raise CheckFailed(f"{e}") from None
        if row is None:
            raise CheckFailed("integrity ok, but the query returned no rows")
        return "integrity_check ok; the query returned rows"
    finally:
        con.close()


# ---- command ------------------------------------------------------------------------------------
def _command(chk: Check, restore_dir: str, sandbox: str, environ, timeout: float) -> str:
    argv = [a.replace("{restore_dir}", restore_dir) for a in chk.command]
    from cermin.ops.childenv import child_env  # none of the agent's secrets (other tenants' among them)

    env = child_env(None, environ, {"CERMIN_RESTORE_DIR": restore_dir})
    try:
        p = subprocess.run(
            argv, cwd=sandbox, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{argv[0]}: still running after {timeout:g}s: stopped") from None
    except OSError as e:
        raise CheckFailed(f"cannot run {argv[0]}: {e.strerror or e}") from None
    if p.returncode != 0:
        raise CheckFailed(f"{argv[0]}: exit code {p.returncode}: {_tail(p.stderr or p.stdout)}")
    return f"{argv[0]} exited 0"
