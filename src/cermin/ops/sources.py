"""Backup sources of the agent's systems: paths, a PostgreSQL database, a SQLite database, a command.

Every source becomes one snapshot per run, named so drills and the state store find it again:
hostname = the system's hostname, tags `system=<tenant>/<system>` and `source=<name>`. A paths
source is an ordinary backup (with the source's excludes). The others are *stdin snapshots*: one
file, named by `filename` or `<name>.sql` / `<name>.sqlite` / `<name>.out`, whose snapshot path is
that name, exactly as `cermin backup --stdin --stdin-filename NAME` makes them.

- PostgreSQL: `pg_dump -h HOST -p PORT -U USER -w [dump_options] -d DATABASE` in plain SQL format,
  its stdout read straight into the backup (no temporary file). Plain SQL rather than `-Fc`: the
  custom format compresses its data, so one changed row reshuffles every byte after it and nothing
  deduplicates between dumps; plain text dedups well and loads with `psql`. The password goes to the
  child in `PGPASSWORD`, never in argv.
- SQLite: the online backup API (`sqlite3.Connection.backup`) copies the database, consistent even
  while the application writes, into a private temporary file that is then streamed. A temporary
  file is needed here: the backup API writes database pages at random offsets into another SQLite
  database, it cannot produce a stream, and the copy must be complete before it is read.
- Command: any argv (no shell); its stdout is the file.

A producer (pg_dump, a command) that exits non-zero, is killed, or runs past the source's timeout
fails the backup *before the snapshot is committed*: the reader handed to the engine raises at end
of stream when the process failed, the engine's stdin path lets the exception through before
`save_snapshot`, and no snapshot names what was read. The error is one line with the end of the
producer's stderr (secrets it may echo are blanked).

Hooks (`hooks.pre`, `hooks.post` of a system) run around all of a system's sources: argv lists, no
shell, each bounded by `hooks.timeout`. A failing pre hook skips the sources; post hooks run
whatever happened, with CERMIN_RESULT=ok|failed in their environment.

Every child (hooks, commands, pg_dump) gets `childenv.child_env`: none of the agent's secrets (other
tenants' passwords, the state store's URL, CERMIN_PASSWORD, AWS keys); pg_dump only its own password.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from cermin.engine.results import Line, answer, error, error_json, note
from cermin.errors import EXIT_FATAL, CerminError
from cermin.ops.childenv import child_env
from cermin.ops.config import ResolvedSystem, Source, parse_duration, read_secret, source_name

STDIN_SUFFIX = {"postgres": ".sql", "sqlite": ".sqlite", "command": ".out"}
TAIL_BYTES = 8192  # of a producer's stderr kept for the error message
TAIL_LINES = 3


class SourceError(CerminError):
    """A source could not be read (its producer failed, timed out, the database could not be opened)."""


class HookError(CerminError):
    pass


# ---- naming ---------------------------------------------------------------------------------------
def system_tag(system: ResolvedSystem) -> str:
    return f"system={system.id}"


def source_tag(name: str) -> str:
    return f"source={name}"


def source_filter(system: ResolvedSystem, source: Source | str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(hosts, tags) selecting a source's snapshots in `list_snapshots` / `resolve`."""
    name = source if isinstance(source, str) else source_name(source)
    return (system.hostname,), (f"{system_tag(system)},{source_tag(name)}",)


def stdin_filename(source: Source) -> str:
    """The one file of a stdin snapshot (its path in the snapshot)."""
    return source.filename or f"{source_name(source)}{STDIN_SUFFIX[source.type]}"


# ---- the producer: a child process read as a stream ----------------------------------------------
class Producer:
    """A child's stdout as a readable stream for the engine (`readinto`). At end of stream the child
    is waited for; if it failed (non-zero exit, a signal, the timeout) reading raises SourceError, so
    a stdin backup stops before its snapshot is written. `close()` kills a child still running (the
    backup itself failed) and its process group."""

    def __init__(self, argv: list[str], env: dict[str, str], timeout: float, what: str, secrets=()) -> None:
        self.what = what
        self.timeout = timeout
        self.secrets = [s for s in secrets if s]
        self.timed_out = False
        self.done = False
        self.bytes = 0
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                bufsize=0,
                start_new_session=True,  # its own process group: a timeout kills helpers it started too
            )
        except OSError as e:
            raise SourceError(f"{what}: cannot run {argv[0]}: {e.strerror or e}") from None
        _grow_pipe(self.proc.stdout.fileno())
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self._reader = threading.Thread(target=self._read_stderr, name="producer-stderr", daemon=True)
        self._reader.start()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _read_stderr(self) -> None:
        f = self.proc.stderr
        while True:
            b = f.read(4096)
            if not b:
                return
            self._tail.append(b)
            self._tail_len += len(b)
            while self._tail_len - len(self._tail[0]) >= TAIL_BYTES:
                self._tail_len -= len(self._tail.popleft())

    def _expire(self) -> None:
        self.timed_out = True
        self._kill()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def readinto(self, b) -> int:
        n = self.proc.stdout.readinto(b)
        if n:
            self.bytes += n
            return n
        self._finish()
        return 0

    def read(self, size: int = -1) -> bytes:  # for callers without readinto
        buf = bytearray(size if size and size > 0 else 1 << 20)
        n = self.readinto(memoryview(buf))
        return bytes(buf[:n])

    def _finish(self) -> None:
        if self.done:
            return
        rc = self.proc.wait()
        self._timer.cancel()
        self._reader.join(timeout=5)
        self.done = True
        if self.timed_out:
            raise SourceError(f"{self.what}: still running after {self.timeout:g}s: stopped{self._stderr_tail()}")
        if rc < 0:
            name = _signal_name(-rc)
            raise SourceError(f"{self.what}: killed by {name}{self._stderr_tail()}")
        if rc != 0:
            raise SourceError(f"{self.what}: exit code {rc}{self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        text = b"".join(self._tail).decode("utf-8", "replace")
        for s in self.secrets:
            text = text.replace(s, "***")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()][-TAIL_LINES:]
        tail = " | ".join(lines)
        return f": {tail[-500:]}" if tail else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self._kill()
            self.proc.wait()
        self._timer.cancel()
        for f in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                f.close()


def _grow_pipe(fd: int) -> None:
    """Fewer, larger reads: a 1 MiB pipe instead of 64 KiB (Linux; ignored elsewhere)."""
    import fcntl

    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


# ---- PostgreSQL tools ---------------------------------------------------------------------------
def pg_tool(name: str, environ=None) -> str:
    """pg_dump / psql: CERMIN_PG_BIN (a directory), else PATH, else the newest /usr/lib/postgresql/*/bin."""
    import glob
    import shutil

    environ = os.environ if environ is None else environ
    d = environ.get("CERMIN_PG_BIN")
    if d:
        return os.path.join(d, name)
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: _version_key(p.split("/")[-3]))
    if cands:
        return cands[-1]
    raise SourceError(f"{name} is not installed (install the PostgreSQL client, or set CERMIN_PG_BIN)")


def _version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))


def pg_env(source: Source, environ=None) -> tuple[dict[str, str], str]:
    """(the child's environment, the password or ""): none of the agent's secrets (`child_env`), the
    source's own password only, in PGPASSWORD."""
    environ = os.environ if environ is None else environ
    password = ""
    if source.password_file or source.password_env:
        password = read_secret(source.password_file, source.password_env, environ, f"password of {source.database}")
    env = child_env(None, environ, {"PGPASSWORD": password} if password else None)
    env.setdefault("PGCONNECT_TIMEOUT", "30")
    env["PGAPPNAME"] = "cermin"
    return env, password


def pg_conn_args(source: Source) -> list[str]:
    return ["-h", source.host, "-p", str(source.port), "-U", source.user, "-w"]


# ---- one source ---------------------------------------------------------------------------------
def backup_source(
    repo,
    system: ResolvedSystem,
    source: Source,
    progress=None,
    no_lock: bool = False,
    environ=None,
    on_alarm: str | None = None,
    tmpdir: str | None = None,
):
    """One snapshot of `source` -> BackupSummary (an AlarmedBackup, which reads as one, when the guard
    flags it). Raises SourceError when the source could not be read; then no snapshot is written."""
    from cermin.engine.backup import BackupOptions
    from cermin.ops import commands

    name = source_name(source)
    tags = [system_tag(system), source_tag(name)]
    base = dict(hostname=system.hostname, tags=tags)
    if source.type == "paths":
        opts = BackupOptions(
            paths=[os.fsencode(p) for p in source.paths],
            excludes=list(source.exclude),
            one_file_system=source.one_file_system,
            **base,
        )
        return commands.backup(repo, opts, progress, no_lock, on_alarm)
    fname = stdin_filename(source)
    what = f"source {name} of {system.id}"
    timeout = parse_duration(source.timeout)
    if source.type == "sqlite":
        with sqlite_copy(source.path, what, tmpdir) as f:
            opts = BackupOptions(stdin=f, stdin_filename=fname, **base)
            return commands.backup(repo, opts, progress, no_lock, on_alarm)
    if source.type == "postgres":
        env, password = pg_env(source, environ)
        argv = [pg_tool("pg_dump", environ), *pg_conn_args(source), *source.dump_options, "-d", source.database]
        producer = Producer(argv, env, timeout, f"{what}: pg_dump", secrets=(password,))
    elif source.type == "command":
        env = child_env(None, environ)
        producer = Producer(list(source.command), env, timeout, f"{what}: {source.command[0]}")
    else:
        raise SourceError(f"{what}: unknown source type {source.type!r}")
    try:
        opts = BackupOptions(stdin=producer, stdin_filename=fname, **base)
        return commands.backup(repo, opts, progress, no_lock, on_alarm)
    finally:
        producer.close()


@contextlib.contextmanager
def sqlite_copy(path: str, what: str = "sqlite source", tmpdir: str | None = None):
    """A consistent copy of a live SQLite database (online backup API) in a private temporary
    directory, open for reading; removed afterwards."""
    import shutil
    import sqlite3
    from urllib.parse import quote

    if not os.path.isfile(path):
        raise SourceError(f"{what}: {path} is not a file")
    d = tempfile.mkdtemp(prefix="cermin-sqlite-", dir=tmpdir)  # mode 0700: the copy is as secret as the database
    try:
        dst_path = os.path.join(d, "copy.sqlite")
        try:
            src = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=60)
            try:
                dst = sqlite3.connect(dst_path)
                try:
                    # In one step (pages=-1): a copy made in steps restarts whenever the application
                    # writes, and might never finish on a busy database.
                    src.backup(dst)
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as e:
            raise SourceError(f"{what}: cannot copy {path}: {e}") from None
        with open(dst_path, "rb") as f:
            yield f
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- a whole system: hooks around its sources ---------------------------------------------------
@dataclass
class SourceResult:
    name: str
    type: str
    summary: object | None = None  # BackupSummary (or AlarmedBackup)
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.summary is not None and not self.summary.incomplete

    def to_json(self) -> dict:
        s = self.summary
        d = {"source": self.name, "type": self.type, "ok": self.ok, "seconds": round(self.seconds, 3)}
        if s is not None:
            d |= {"snapshot_id": s.snapshot_id, "incomplete": s.incomplete, "bytes": s.snapshot.summary.total_bytes}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class SystemBackup:
    """One run over a system's sources (and its hooks)."""

    system: str
    sources: list[SourceResult] = field(default_factory=list)
    hook_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.hook_errors and bool(self.sources) and all(r.ok for r in self.sources)

    @property
    def errors(self) -> list[str]:
        return [*self.hook_errors, *(r.error for r in self.sources if r.error)]  # each names its source

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_FATAL

    def to_json(self) -> list[dict]:
        d = {"message_type": "system_backup", "system": self.system, "ok": self.ok}
        d |= {"sources": [r.to_json() for r in self.sources], "hook_errors": self.hook_errors}
        return [*map(error_json, self.errors), d | {"seconds": round(self.seconds, 3)}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(error, self.errors)]
        for r in self.sources:
            if r.summary is not None and r.summary.snapshot_id:
                lines.append(note(f"{self.system} {r.name}: snapshot {r.summary.snapshot_id[:8]} ({r.seconds:.1f}s)"))
        lines.append(answer(f"{self.system}: {'ok' if self.ok else 'FAILED'} in {self.seconds:.1f}s"))
        return lines


def run_hooks(cmds, timeout: float, env: dict[str, str], phase: str) -> list[str]:
    """Run each argv in turn (no shell); the errors, one line each. A failing pre hook stops the rest."""
    from cermin.ops.bounded import run_bounded  # the tail of its output only; its process group killed on timeout

    errors: list[str] = []
    for argv in cmds:
        try:
            p = run_bounded(list(argv), env, timeout)
        except OSError as e:
            errors.append(f"{phase} hook {argv[0]}: cannot run: {e.strerror or e}")
        else:
            if p.timed_out:
                errors.append(f"{phase} hook {argv[0]}: still running after {timeout:g}s: stopped")
            elif p.returncode != 0:
                tail = [ln.strip() for ln in (p.stderr or p.stdout).decode("utf-8", "replace").splitlines()]
                tail = [ln for ln in tail if ln][-1:]
                why = f": {tail[0][:300]}" if tail else ""
                errors.append(f"{phase} hook {argv[0]}: exit code {p.returncode}{why}")
        if errors and phase == "pre":
            break
    return errors


def backup_system(
    repo,
    system: ResolvedSystem,
    progress=None,
    no_lock: bool = False,
    environ=None,
    on_alarm: str | None = None,
    tmpdir: str | None = None,
) -> SystemBackup:
    """Pre hooks, every source (one failing source does not stop the others), post hooks -> SystemBackup.
    Raises nothing for a source or hook failure: they are in the result, one line each. Post hooks run
    whatever happened (an interrupt too): they may resume an application the pre hooks froze."""
    environ = dict(os.environ if environ is None else environ)
    t0 = time.monotonic()
    out = SystemBackup(system.id)
    hook_timeout = parse_duration(system.hooks.timeout)
    ids = {"CERMIN_SYSTEM": system.id, "CERMIN_TENANT": system.tenant, "CERMIN_HOSTNAME": system.hostname}
    env = child_env(None, environ, ids)
    finished = False
    try:
        out.hook_errors += run_hooks(system.hooks.pre, hook_timeout, env | {"CERMIN_PHASE": "pre"}, "pre")
        if not out.hook_errors:
            for src in system.sources:
                r = SourceResult(source_name(src), src.type)
                s0 = time.monotonic()
                try:
                    r.summary = backup_source(repo, system, src, progress, no_lock, environ, on_alarm, tmpdir)
                except CerminError as e:
                    r.error = _one_line(str(e))
                except OSError as e:  # a full or unwritable workdir, a vanished file: this source failed
                    where = f" ({e.filename})" if e.filename else ""
                    r.error = _one_line(f"source {r.name} of {system.id}: {e.strerror or e}{where}")
                except Exception as e:  # a bug must not skip the post hooks nor repeat committed sources
                    r.error = _one_line(f"source {r.name} of {system.id}: {type(e).__name__}: {e}")
                r.seconds = time.monotonic() - s0
                out.sources.append(r)
        finished = True
    finally:
        result = "ok" if finished and out.ok else "failed"
        post = env | {"CERMIN_PHASE": "post", "CERMIN_RESULT": result}
        out.hook_errors += run_hooks(system.hooks.post, hook_timeout, post, "post")
        out.seconds = time.monotonic() - t0
    return out


def _one_line(text: str) -> str:
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or "failed"
