"""Restore drills: restore a system from one of its copies, verify it, check it, time it, sign it.

`run_drill(cfg, system, copy, snapshot)`:
1. picks one snapshot per source (ops/sources.py names them: host = the system's hostname, tags
   `system=` and `source=`) from the copy's repository: the latest, the last clean one
   (`"last-clean"`, guard/lastclean.py), or one snapshot given by id (only its source is drilled);
2. restores each into a private sandbox (`<workdir>/drills/<tenant>-<system>-XXXX/<source>/`, mode
   0700) with the restore's own read-back verification — every chunk of every file is re-read and
   checked against its id — as the drill's user, without setting owners, xattrs or special files;
3. runs the system's application checks (ops/drillchecks.py);
4. measures the RTO on the monotonic clock from the start to the last check, and compares it with
   the class RTO; the verdict is `pass` only when every file was restored and verified, every check
   ran and passed, and the RTO was met;
5. signs the report with the agent's Ed25519 key (ops/agentkey.py), appends it to the repository it
   restored from as a `drill_report` aux record (when that repository takes writes) and writes it
   as JSON and a readable HTML page (ops/drillreport.py); removes the sandbox unless `keep` — whatever
   happened: an exception, Ctrl-C or SIGTERM (cli/main.py raises it) unwinds through one finally. A
   sandbox carries a marker file locked while its drill runs; what a drill killed outright (SIGKILL, a
   crash) left is removed by the next drill's sweep (`sweep_sandboxes`).
A drill never raises for what it finds — a damaged pack, a missing snapshot, an unreachable
repository, a failing check: each is an error in the signed report and the verdict is `fail`. Only a
configuration error (unknown system or copy) or an unusable signing key raises.

`drill_system(repo, system, refs, sandbox)` is steps 2-3 on an open repository: what `recover run`
will call for many systems in parallel, each into its own target.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cermin import __version__
from cermin.engine.results import Line, answer, error, fail, note, warning
from cermin.errors import EXIT_FATAL, CerminError, SnapshotNotFound, UsageError
from cermin.ops.agentkey import AgentKey, load_or_create_key
from cermin.ops.config import Config, ConfigError, ResolvedSystem, Source, fmt_duration, source_name
from cermin.ops.drillchecks import Restored, run_check
from cermin.ops.drillreport import (
    MAX_ERRORS,
    CheckResult,
    DrillReport,
    RestoredSnapshot,
    SignedReport,
    clean_text,
    sign,
    store_report,
    summary_lines,
    write_report_files,
)
from cermin.ops.repos import copy_repo_name, open_config_repo
from cermin.ops.sources import source_filter, source_tag, system_tag

LATEST = "latest"
LAST_CLEAN = "last-clean"


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- which snapshots -------------------------------------------------------------------------------
def select_snapshots(repo, system: ResolvedSystem, selection: str | None) -> tuple[dict, list[str]]:
    """({source name: SnapshotRef}, errors) for `selection`: None/"latest", "last-clean" or an id."""
    from cermin.guard.lastclean import last_clean
    from cermin.repo.snapshots import resolve

    refs: dict = {}
    errors: list[str] = []
    if selection not in (None, LATEST, LAST_CLEAN):
        ref = resolve(repo, selection)
        tags = set(ref.snapshot.tags)
        if system_tag(system) not in tags:
            raise UsageError(f"snapshot {ref.id[:8]} is not one of {system.id} (it has no tag {system_tag(system)})")
        names = [source_name(s) for s in system.sources if source_tag(source_name(s)) in tags]
        if len(names) != 1:
            raise UsageError(f"snapshot {ref.id[:8]} names no source of {system.id} (tags: {', '.join(sorted(tags))})")
        return {names[0]: ref}, errors
    for src in system.sources:
        name = source_name(src)
        hosts, tags = source_filter(system, name)
        try:
            if selection == LAST_CLEAN:
                refs[name] = last_clean(repo, hosts, tags)
            else:
                refs[name] = resolve(repo, LATEST, hosts, tags)
        except SnapshotNotFound as e:
            errors.append(f"source {name}: no snapshot to restore ({e})")
    return refs, errors


# ---- restore, verify, check -----------------------------------------------------------------------
@dataclass
class SystemDrill:
    """What drill_system found: the restores, the checks and what went wrong."""

    snapshots: list[RestoredSnapshot] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def drill_system(
    repo,
    system: ResolvedSystem,
    refs: dict,
    sandbox: str,
    environ=None,
    progress=None,
    no_lock: bool = False,
    monotonic: Callable[[], float] = time.monotonic,
) -> SystemDrill:
    """Restore each `refs` snapshot (source name -> SnapshotRef) into `sandbox/<source>/` with
    read-back verification, then run the system's checks. Errors are collected, never raised."""
    from cermin.engine.progress import Phases
    from cermin.engine.restore import RestoreOptions, run_restore
    from cermin.format.names import is_valid_name
    from cermin.guard.verdict import effective_verdicts
    from cermin.ops.commands import repo_lock

    out = SystemDrill()
    step = Phases(progress, "drill")
    sources = {source_name(s): s for s in system.sources}
    restored = Restored(sandbox)
    with repo_lock(repo, False, "drill", no_lock):
        repo.load_index()
        try:
            verdicts = effective_verdicts(repo, list(refs.values()))
        except CerminError as e:
            verdicts = {}
            out.errors.append(f"guard verdicts unavailable: {e}")
        for name, ref in refs.items():
            src = sources[name]
            step("restore", f"restoring {name} ({ref.id[:8]})")
            target = os.path.join(sandbox, name)
            os.mkdir(target, 0o700)
            t0 = monotonic()
            opts = RestoreOptions(target=target, verify=True, no_owner=True, no_xattrs=True, no_special=True)
            files = size = verified = 0
            errs: list[str] = []
            try:
                s = run_restore(repo, ref.snapshot, opts, progress)
                files, size, verified, errs = s.files, s.bytes, s.verified_files, list(s.errors)
                if not errs and verified != files:
                    errs.append(f"only {verified} of {files} files could be verified")
            except CerminError as e:
                errs.append(f"restore of snapshot {ref.id[:8]} failed: {e}")
            if src.type != "paths" and not errs:
                path = ref.snapshot.paths[0] if len(ref.snapshot.paths) == 1 else b""
                if is_valid_name(path):
                    restored.files[name] = os.path.join(target, os.fsdecode(path))
                else:
                    errs.append(f"snapshot {ref.id[:8]} is not a one-file snapshot of a {src.type} source")
            v = verdicts.get(ref.id)
            out.snapshots.append(
                RestoredSnapshot(
                    source=name,
                    type=src.type,
                    id=ref.id,
                    time=ref.snapshot.time,
                    files=files,
                    bytes=size,
                    verified_files=verified,
                    errors=len(errs),
                    guard_verdict=v.verdict if v is not None else "unknown",
                    seconds=round(monotonic() - t0, 3),
                )
            )
            if errs:
                restored.failed.add(name)
                out.errors += [clean_text(f"source {name}: {x}") for x in errs]
            else:
                restored.dirs[name] = target
                restored.file_counts[name] = files
    for i, chk in enumerate(system.checks):
        name = chk.name or f"{chk.type}-{i + 1}"
        step("check", f"check {name}")
        out.checks.append(run_check(chk, name, check_source(system, chk), restored, environ, monotonic))
    return out


def check_source(system: ResolvedSystem, chk) -> Source | None:
    """The source whose restored data a check reads: its `source`, or the only source of its type
    (postgres, sqlite); None for a check over the whole sandbox."""
    if chk.source:
        hits = [s for s in system.sources if source_name(s) == chk.source]
        return hits[0] if hits else None
    if chk.type in ("postgres", "sqlite"):
        hits = [s for s in system.sources if s.type == chk.type]
        return hits[0] if len(hits) == 1 else None
    return None


# ---- the whole drill ---------------------------------------------------------------------------------
@dataclass
class DrillResult:
    """A signed drill report and where it went. `report` is what was signed."""

    signed: SignedReport
    digest: str  # SHA-256 (hex) of the signed bytes
    aux: str | None = None  # the drill_report record in the repository
    store_error: str = ""
    json_path: str = ""
    html_path: str = ""
    write_error: str = ""
    sandbox: str = ""  # kept (keep=True)
    key_created: str = ""  # the key was generated for this drill (its path)
    swept: list[str] = field(default_factory=list)  # sandboxes of drills that died, removed first

    @property
    def report(self) -> DrillReport:
        return self.signed.report

    @property
    def passed(self) -> bool:
        return self.report.verdict == "pass"

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else EXIT_FATAL

    def to_json(self) -> list[dict]:
        from cermin.ops.drillreport import envelope_json

        d = {"message_type": "drill_report", **envelope_json(self.signed), "digest": self.digest}
        d |= {"aux": self.aux, "json_path": self.json_path or None, "html_path": self.html_path or None}
        if self.store_error:
            d["store_error"] = self.store_error
        if self.write_error:
            d["write_error"] = self.write_error
        if self.sandbox:
            d["sandbox"] = self.sandbox
        return [d]

    def to_text(self, verbose: int = 0) -> list[Line]:
        r = self.report
        lines: list[Line] = []
        if self.key_created:
            lines.append(warning(f"made a new agent key {self.key_created} ({self.signed.key_fingerprint})"))
        if self.swept:
            lines.append(note(f"removed {len(self.swept)} sandbox(es) left by drills that did not finish"))
        lines += summary_lines(self.signed)
        lines += [error(x) for x in r.errors]
        lines += [fail(f"check {c.name} failed: {c.detail}") for c in r.checks if not c.ok and not c.skipped]
        target = fmt_duration(r.rto_target_s)
        rto = f"RTO {r.rto_measured_s:.1f}s (class target {target}): {'met' if r.met else 'NOT MET'}"
        lines.append(answer(f"drill {r.system} from the {r.copy} copy ({r.repository}): {r.verdict.upper()}, {rto}"))
        if self.json_path:
            lines.append(note(f"report {self.json_path} (and .html), signed by {self.signed.key_fingerprint}"))
        if self.aux:
            lines.append(note(f"stored in the repository as drill_report {self.aux[:12]}"))
        if self.store_error:
            lines.append(warning(f"the report could not be stored in the repository: {self.store_error}"))
        if self.write_error:
            lines.append(warning(f"the report files could not be written: {self.write_error}"))
        if self.sandbox:
            lines.append(note(f"restored data kept in {self.sandbox}"))
        return lines


def resolve_key(cfg: Config, signing_key, workdir: str) -> tuple[AgentKey, bool]:
    if isinstance(signing_key, AgentKey):
        return signing_key, False
    return load_or_create_key(signing_key or cfg.agent.key_file or os.path.join(workdir, "agent.key"))


def run_drill(
    cfg: Config,
    system: ResolvedSystem | str,
    copy: str = "primary",
    snapshot: str | None = None,
    workdir: str | None = None,
    signing_key: AgentKey | str | None = None,
    now: Callable[[], datetime] | None = None,
    progress=None,
    keep: bool = False,
    reports_dir: str | None = None,
    agent_name: str | None = None,
    environ=None,
    repo=None,
    no_lock: bool = False,
    monotonic: Callable[[], float] = time.monotonic,
) -> DrillResult:
    """One drill of `system` from its `copy` (see the module's docstring) -> DrillResult.
    `snapshot`: None (latest of each source), "last-clean", or a snapshot id; `signing_key`: an
    AgentKey or the path of one (default: the config's key_file or <workdir>/agent.key, made if
    absent); `repo`: the copy's repository already open."""
    if isinstance(system, str):
        system = cfg.system(system)
    workdir = workdir or cfg.agent.workdir
    swept = sweep_sandboxes(workdir)  # before the clock starts: cleaning up after others is not recovering
    t0 = monotonic()
    now = now or (lambda: datetime.now(UTC))
    started = now()
    key, created = resolve_key(cfg, signing_key, workdir)
    repo_name = copy_repo_name(cfg, system, copy)
    entry = cfg.repositories[repo_name]
    errors: list[str] = []
    found = SystemDrill()
    sandbox: Sandbox | None = None
    try:  # from the sandbox on, one finally removes it: on an error, an interrupt or SIGTERM (cli/main.py)
        try:
            if repo is None:
                repo = open_config_repo(cfg, repo_name, environ)
            refs, errors = select_snapshots(repo, system, snapshot)
            if snapshot not in (None, LATEST, LAST_CLEAN) and refs:
                snapshot = next(iter(refs.values())).id  # the report names the full id, not the prefix asked for
            if refs:
                sandbox = make_sandbox(workdir, system)
                found = drill_system(repo, system, refs, sandbox.path, environ, progress, no_lock, monotonic)
                errors += found.errors
        except CerminError as e:
            what = "the repository" if repo is None else "the drill"
            errors.append(clean_text(f"{what} ({repo_name}, {copy} copy): {e}"))
        except OSError as e:
            errors.append(clean_text(f"sandbox under {workdir}: {e.strerror or e}"))
        measured = monotonic() - t0
        if not found.snapshots and not errors:
            errors.append("nothing was restored")
        met = measured <= system.policy.rto
        checks_ok = all(c.ok for c in found.checks if not c.skipped)
        verdict = "pass" if not errors and found.snapshots and checks_ok and met else "fail"
        if len(errors) > MAX_ERRORS:
            errors = [*errors[:MAX_ERRORS], f"(+{len(errors) - MAX_ERRORS} more errors)"]
        report = DrillReport(
            id=secrets.token_hex(16),
            system=system.id,
            tenant=system.tenant,
            policy=system.policy.name,
            copy=copy,
            repository=repo_name,
            repository_id=repo.config.id if repo is not None else "",
            location=entry.url,
            selection=snapshot or LATEST,
            snapshots=found.snapshots,
            checks=found.checks,
            rto_measured_s=round(measured, 3),
            rto_target_s=system.policy.rto,
            met=met,
            verdict=verdict,
            errors=errors,
            started=rfc3339(started),
            finished=rfc3339(now()),
            agent=agent_name or cfg.agent.name or socket.gethostname(),
            host=socket.gethostname(),
            cermin_version=__version__,
        )
        signed, digest = sign(report, key)
        result = DrillResult(signed, digest, key_created=key.path if created else "", swept=swept)
        if repo is not None:
            result.aux, result.store_error = _store(repo, signed, report.finished, no_lock)
        try:
            result.json_path, result.html_path = write_report_files(
                signed, reports_dir or os.path.join(workdir, "reports")
            )
        except OSError as e:
            result.write_error = f"{e.strerror or e}: {e.filename or reports_dir}"
        if keep and sandbox is not None:
            result.sandbox = sandbox.path
        return result
    finally:
        if sandbox is not None:
            sandbox.release(keep)


def _store(repo, signed: SignedReport, time_: str, no_lock: bool) -> tuple[str | None, str]:
    from cermin.ops.commands import repo_lock

    try:
        with repo_lock(repo, False, "drill report", no_lock):
            return store_report(repo, signed, time_), ""
    except CerminError as e:
        return None, clean_text(str(e), 300)


SANDBOX_MARKER = ".cermin-drill-sandbox"  # in every sandbox cermin made; locked while its drill runs


@dataclass
class Sandbox:
    """A drill's private directory `<workdir>/drills/<tenant>-<system>-XXXX/` (mode 0700). Its marker file
    says cermin made it and is held locked (flock) while the drill runs: a sandbox whose marker nobody
    holds was left by a drill that died (SIGKILL, a crash, a power cut), and the next drill removes it
    (`sweep_sandboxes`). Kept (`--keep`), it loses its marker: no sweep takes data asked for."""

    path: str
    fd: int  # the marker, locked

    def release(self, keep: bool = False) -> None:
        try:
            if keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, SANDBOX_MARKER))
            else:
                remove_tree(self.path)
        finally:
            os.close(self.fd)  # the lock goes with it


def make_sandbox(workdir: str, system: ResolvedSystem) -> Sandbox:
    import fcntl

    base = os.path.join(workdir, "drills")
    os.makedirs(base, mode=0o700, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"{system.tenant}-{system.name}-", dir=base)  # mode 0700
    fd = -1
    try:
        # locked before it has its name: a sweep never finds the marker unlocked while its drill lives
        tmp = os.path.join(path, SANDBOX_MARKER + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"cermin drill of {system.id}: pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.rename(tmp, os.path.join(path, SANDBOX_MARKER))
    except BaseException:
        remove_tree(path)
        if fd >= 0:
            os.close(fd)
        raise
    return Sandbox(path, fd)


def sweep_sandboxes(workdir: str) -> list[str]:
    """Remove the sandboxes under `<workdir>/drills/` that cermin made (their marker is there) and no
    running drill holds (its marker is not locked): what drills that died left behind. Their paths.
    Anything else there is left alone; a sweep that cannot look is no error."""
    import fcntl

    base = os.path.join(workdir, "drills")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(base, name)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
            fd = os.open(os.path.join(path, SANDBOX_MARKER), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not a sandbox of cermin's (kept, or not ours), or gone meanwhile
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a drill runs in it (this process's other threads included)
            remove_tree(path)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def remove_tree(path: str) -> None:
    """rmtree that also removes what a restore made read-only."""

    def again(func, p, exc) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=again)
    else:
        shutil.rmtree(path, onerror=again)


# ---- `cermin drill SNAP`: which system a snapshot belongs to ------------------------------------------
def find_snapshot_system(cfg: Config, snap: str, copy: str = "primary", environ=None):
    """(system, open repository, full snapshot id) of the snapshot `snap` (an id prefix) in the
    `copy` repositories of the configuration, by its `system=` tag."""
    from cermin.repo.snapshots import resolve

    opened: dict[str, object] = {}
    problems: list[str] = []
    hits = []
    for sy in cfg.systems:
        name = sy.copies.get(copy)
        if not name or name in opened:
            continue
        try:
            repo = opened[name] = open_config_repo(cfg, name, environ)
        except CerminError as e:
            opened[name] = None
            problems.append(f"{name}: {e}")
            continue
        try:
            ref = resolve(repo, snap)
        except SnapshotNotFound:
            continue
        tags = {t.split("=", 1)[1] for t in ref.snapshot.tags if t.startswith("system=")}
        for s in cfg.systems:
            if s.id in tags and s.copies.get(copy) == name:
                hits.append((s, repo, ref.id))
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UsageError(f"snapshot {snap} is ambiguous: {', '.join(h[0].id for h in hits)}")
    why = f" (could not open: {'; '.join(problems)})" if problems else ""
    raise ConfigError(f"{snap!r} is neither a system in {cfg.path} nor a snapshot of one in its {copy} copies{why}")
