"""Application checks of a drill: prove the restored data is usable, not only present (ops/drill.py).

- postgres: a scratch database `cermin_drill_<random>` is created, the restored dump is loaded into it
  with `psql -v ON_ERROR_STOP=1`, the query must return at least one row, and the scratch database is
  dropped whatever happened. Where: the check's own `host`, `port`, `user`, `password_file` /
  `password_env` and `database` (connected to for CREATE/DROP DATABASE), each defaulting to the
  source's (`check_target`). The dump came out of a repository — anyone holding that repository's
  password (a tenant's mirror: the tenant) could have planted one — so it is hostile input:
  * psql runs in *restricted mode* (`\\restrict` with a random key is sent before the dump), in which
    it refuses every backslash command — a planted `\\! rm -rf /` cannot run on this host. This needs
    psql 13.22, 14.19, 15.14, 16.10, 17.6 or later; an older one fails the check.
  * Restricted mode does not limit SQL, which runs on the database server with the check's login: a
    superuser's `COPY ... TO PROGRAM` is a shell on the database host, a CREATEROLE login can take over
    other roles. Before anything is created the login's rights are read; on the source's own server
    (`same_server`: the same port and host) a superuser, a CREATEROLE login or a member of
    pg_execute_server_program / pg_read_server_files / pg_write_server_files is refused — the check
    fails, nothing is loaded. A scratch server of its own (another host or port) may use any login.
  * The load runs inside the scratch database only (private: CONNECT revoked from PUBLIC; psql cannot
    `\\connect` elsewhere), with `statement_timeout`, `lock_timeout` and
    `idle_in_transaction_session_timeout` set first (pg_dump's header lines switching them off are
    dropped). A dump can set them again; the check's deadline is the bound that holds: psql's process
    group is killed and the scratch database dropped WITH (FORCE), which ends its server session.
    Databases the login owns that appeared during the load (and are not a drill's scratch database)
    are dropped and fail the check. A login may still change its own password or settings: give drills
    a role used for nothing else.
  * pg_dump's `\\restrict`/`\\unrestrict` lines (15.14 and later), and its ownership and privilege
    lines (`ALTER ... OWNER TO`, GRANT, REVOKE, ALTER DEFAULT PRIVILEGES) are not replayed: the scratch
    database's objects belong to the check's login, which need not be (or be able to become) the
    source's roles. psql's output is kept as a bounded tail.
- sqlite: the restored file is opened read-only and immutable (no journal, no lock files), untrusted
  schema off; `PRAGMA integrity_check` must answer ok and the query must return a row.
- command: argv with `{restore_dir}` replaced, run in the sandbox in a session of its own; exit status 0
  passes. Past its timeout, and whatever it left running when it exits, its process group is killed.
- files: at least `min_files` (at least 1) regular files were restored.
Each check is bounded by its `timeout`; its result is a CheckResult, never an exception.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import socket
import stat
import subprocess
import threading
import time

import msgspec

from cermin.errors import CerminError
from cermin.ops.bounded import TAIL_KEEP, Tail, kill_group, run_bounded
from cermin.ops.config import Check, Source, parse_duration
from cermin.ops.drillreport import CheckResult, clean_text
from cermin.ops.sources import pg_conn_args, pg_env, pg_tool

# psql releases that know \restrict (the fix of CVE-2025-8714), by major version
_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
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
# the login's rights: a superuser, CREATEROLE, or a member of a role that reads/writes the server's files
# or runs programs on its host (COPY ... TO PROGRAM) must not load a hostile dump on the source's server
_ROLE_QUERY = (
    "SELECT r.rolsuper, r.rolcreaterole, EXISTS (SELECT 1 FROM pg_catalog.pg_roles g WHERE g.rolname IN "
    "('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files') "
    "AND pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER')) "
    "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
)
_OWNED_DBS = (  # hex: a name the dump chose may hold any character
    "SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_catalog.pg_database WHERE datdba = "
    "(SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) ORDER BY 1"
)
_SCRATCH = re.compile(r"^cermin_drill_[0-9a-f]{12}$")
DROP_TIMEOUT = 60.0  # seconds for dropping the scratch database, whatever is left of the check's timeout
# pg_dump's own lines that a drill does not replay (outside COPY data, whole lines): its \restrict pair,
# the header switching the session's time limits off, and ownership and privileges — the scratch database's
# objects belong to the check's login, which need not be (or be able to become) the source's roles
_DROPPED = (
    re.compile(rb"^\\(un)?restrict\s+[A-Za-z0-9]+\s*$"),
    re.compile(
        rb"^SET (statement_timeout|lock_timeout|idle_in_transaction_session_timeout|transaction_timeout) = 0;\s*$"
    ),
    re.compile(rb"^ALTER [A-Z][A-Z ]* .* OWNER TO .+;\s*$"),
    re.compile(rb"^(GRANT|REVOKE) .+;\s*$"),
    re.compile(rb"^ALTER DEFAULT PRIVILEGES .+;\s*$"),
)


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


def check_target(chk: Check, source: Source) -> Source:
    """Where a postgres check connects: the check's host, port, user and password, each defaulting to the
    source's — the source's password only when host, port and user are the source's as well."""
    host, port, user = chk.host or source.host, chk.port or source.port, chk.user or source.user
    if chk.password_file or chk.password_env:
        pw_file, pw_env = chk.password_file, chk.password_env
    elif (host, port, user) == (source.host, source.port, source.user):
        pw_file, pw_env = source.password_file, source.password_env
    else:
        pw_file = pw_env = ""
    return msgspec.structs.replace(source, host=host, port=port, user=user, password_file=pw_file, password_env=pw_env)


def same_server(a: Source, b: Source) -> bool:
    """Whether two connection settings may reach the same PostgreSQL server: the same port and a host in
    common, every address of this machine (loopback, a unix socket, an address bound here) counting as one.
    In doubt, the same: the answer decides whether a superuser may load a hostile dump."""
    return a.port == b.port and bool(_endpoints(a.host) & _endpoints(b.host))


def _endpoints(hosts: str) -> set[str]:
    out: set[str] = set()
    for host in hosts.split(","):  # libpq takes a list
        host = host.strip().lower()
        if not host or host.startswith(("/", "@")) or host == "localhost":
            out.add("this host")  # a unix socket, or the default
            continue
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            out.add(host)
            continue
        for info in infos:
            ip = str(info[4][0]).split("%", 1)[0]
            out.add(ip)
            if _is_local(ip):
                out.add("this host")
    return out


def _is_local(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_loopback or addr.is_unspecified:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))  # only an address of this machine can be bound
        return True
    except OSError:
        return False


def _postgres(chk: Check, source: Source, dump: str, environ, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    target = check_target(chk, source)
    env, password = pg_env(target, environ)
    psql = pg_tool("psql", environ)
    if not psql_restricts(psql, env):
        raise CheckFailed(
            f"{psql} cannot load an untrusted dump safely (it lacks \\restrict): "
            "use psql 13.22, 14.19, 15.14, 16.10, 17.6 or later (or set CERMIN_PG_BIN)"
        )
    base = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", *pg_conn_args(target)]
    scratch = f"cermin_drill_{secrets.token_hex(6)}"
    hide = (password,)
    login = f"{target.user} on {target.host}:{target.port}"

    def sql(db: str, text: str, what: str, seconds: float | None = None) -> str:
        left = seconds if seconds is not None else max(1.0, deadline - time.monotonic())
        limits = f"-c statement_timeout={int(left * 1000)} -c lock_timeout={int(min(left, 60) * 1000)}"
        try:
            p = run_bounded([*base, "-A", "-t", "-d", db, "-c", text], env | {"PGOPTIONS": limits}, left)
        except OSError as e:
            raise CheckFailed(f"cannot run {psql}: {e.strerror or e}") from None
        if p.timed_out:
            raise CheckFailed(f"{what}: still running after {seconds if seconds is not None else timeout:g}s")
        if p.returncode != 0:
            raise CheckFailed(f"{what}: {_tail(p.stderr, hide)}")
        return p.stdout.decode("utf-8", "replace")

    maint, rights = _maintenance_db(sql, chk, source)
    if rights and same_server(target, source):
        raise CheckFailed(
            f"refused: the login {login} is {rights} on the source's own server, where the restored dump "
            "(untrusted input) would run with its rights: give the check a login without them (user = ...), "
            "or a scratch server of its own (host/port)"
        )
    owned = _owned(sql, maint)
    sql(maint, f'CREATE DATABASE "{scratch}"', "creating the scratch database")
    try:
        sql(maint, f'REVOKE ALL ON DATABASE "{scratch}" FROM PUBLIC', "making the scratch database private")
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
        _drop_planted(sql, maint, owned)


def _maintenance_db(sql, chk: Check, source: Source) -> tuple[str, str]:
    """(the first database the check's login may connect to — the scratch database is made from there —,
    what makes the login too powerful to load a hostile dump on the source's server, or "")."""
    last: CerminError | None = None
    for db in (chk.database,) if chk.database else dict.fromkeys(("postgres", source.database, "template1")):
        try:
            out = sql(db, _ROLE_QUERY, "reading the login's rights")
        except CheckFailed as e:
            last = e
            continue
        flags = (out.strip().splitlines() or [""])[-1].split("|")
        if len(flags) != 3:
            return db, "a role whose rights cannot be read"
        names = ("a superuser", "CREATEROLE", "a member of pg_*_server_*")
        why = [w for w, f in zip(names, flags, strict=True) if f != "f"]
        return db, " and ".join(why)
    raise last or CheckFailed("cannot connect to create the scratch database")


def _drop(sql, maint: str, scratch: str) -> None:
    try:
        sql(maint, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', "dropping the scratch database", DROP_TIMEOUT)
    except CheckFailed:
        sql(maint, f'DROP DATABASE IF EXISTS "{scratch}"', "dropping the scratch database", DROP_TIMEOUT)  # before 13


def _owned(sql, maint: str, seconds: float | None = None) -> set[str]:
    out = sql(maint, _OWNED_DBS, "listing the login's databases", seconds)
    return {bytes.fromhex(x).decode("utf-8", "replace") for x in out.split()}


def _drop_planted(sql, maint: str, before: set[str]) -> None:
    """Databases the dump made (the login owns them, they were not there before, and they are no drill's
    scratch database): dropped, and the check fails naming them."""
    try:
        now = _owned(sql, maint, DROP_TIMEOUT)
    except CheckFailed:
        return
    planted = sorted(d for d in now - before if not _SCRATCH.match(d))
    for db in planted:
        with contextlib.suppress(CheckFailed):
            _drop(sql, maint, db.replace('"', '""'))
    if planted:
        names = ", ".join(repr(d) for d in planted)
        raise CheckFailed(f"the dump created databases of its own: {names[:300]} (dropped)")


def _load(base: list[str], db: str, dump: str, env: dict, deadline: float, timeout: float, hide) -> None:
    """Stream the dump into psql in restricted mode (see the module's docstring), under time limits."""
    with _open_plain(dump) as f:
        p = subprocess.Popen(
            [*base, "-d", db],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        err = Tail(TAIL_KEEP)

        def read_stderr() -> None:
            while chunk := p.stderr.read1(65536):
                err.add(chunk)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            kill_group(p.pid)

        left = max(1.0, deadline - time.monotonic())
        timer = threading.Timer(left, expire)
        timer.start()
        try:
            try:
                p.stdin.write(b"\\restrict " + secrets.token_hex(24).encode() + b"\n")
                ms = int(left * 1000)
                p.stdin.write(
                    f"SET statement_timeout = {ms};\nSET lock_timeout = {min(ms, 60_000)};\n"
                    f"SET idle_in_transaction_session_timeout = {min(ms, 60_000)};\n".encode()
                )
                for chunk in _filtered(f):
                    p.stdin.write(chunk)
                p.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # psql stopped (an error with ON_ERROR_STOP, or the timeout): its status says why
            rc = p.wait()
        finally:
            timer.cancel()
            if p.poll() is None:  # interrupted: nothing of it survives
                kill_group(p.pid)
                p.wait()
            reader.join(timeout=5)
            with contextlib.suppress(OSError):
                p.stderr.close()
    stderr = bytes(err.buf)
    if expired.is_set():
        raise CheckFailed(f"loading the dump: still running after {timeout:g}s")
    if rc != 0:
        if b"backslash commands are restricted" in stderr:
            raise CheckFailed("the dump holds psql backslash commands: refused (a dump from pg_dump has none)")
        raise CheckFailed(f"loading the dump failed: {_tail(stderr, hide)}")


def _filtered(f):
    """The dump's lines, minus the pg_dump lines a drill does not replay (_DROPPED) outside COPY data."""
    in_copy = False
    batch: list[bytes] = []
    size = 0
    for line in f:
        if in_copy:
            if line in _COPY_END:
                in_copy = False
        elif line.startswith((b"\\", b"SET ", b"ALTER ", b"GRANT ", b"REVOKE ")) and any(
            r.match(line) for r in _DROPPED
        ):
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
        p = run_bounded(argv, env, timeout, cwd=sandbox, kill_leftovers=True)
    except OSError as e:
        raise CheckFailed(f"cannot run {argv[0]}: {e.strerror or e}") from None
    if p.timed_out:
        raise CheckFailed(f"{argv[0]}: still running after {timeout:g}s: stopped")
    if p.returncode != 0:
        raise CheckFailed(f"{argv[0]}: exit code {p.returncode}: {_tail(p.stderr or p.stdout)}")
    return f"{argv[0]} exited 0"
