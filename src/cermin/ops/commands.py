"""The operations a command, the agent or the dashboard calls: one function per operation.

Each takes the repository (or backend) and an options struct, takes the lock its safety needs
(shared for backup, restore, dump, check, protect and lock extend; exclusive for forget, prune and
repair; none with `no_lock=True`), loads what it needs under that lock, runs the engine steps and
returns a result that renders itself (`to_json()`, `to_text()`, `exit_code`: cermin.engine.results).
The steps below them (`run_backup`, `plan_prune`/`execute_prune`, `run_check`, ...) take no lock:
their callers hold one. Long operations take `progress`: a Reporter of `Progress` events.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from cermin.engine.progress import Reporter
from cermin.engine.results import Combined, Line, answer, note, warning, warning_json
from cermin.errors import UsageError
from cermin.repo.repository import Repository
from cermin.util import fmt_bytes, parse_rfc3339, plural


@contextlib.contextmanager
def repo_lock(repo: Repository, exclusive: bool, operation: str, no_lock: bool = False) -> Iterator:
    """Hold a repository lock for `operation` (none with no_lock); yields the RepoLock or None.
    Raises RepositoryLocked when another process holds a lock that conflicts."""
    if no_lock:
        yield None
        return
    from cermin.repo.lock import RepoLock

    with RepoLock(repo, exclusive, operation) as lock:
        yield lock


def split_ref(ref: str) -> tuple[str, bytes]:
    """'SNAPSHOT[:PATH]' -> (snapshot, path inside it, default /)."""
    snap, _, path = ref.partition(":")
    return snap, os.fsencode(path or "/")


def parse_until(s: str) -> datetime:
    """YYYY-MM-DD (midnight UTC) or an RFC 3339 time."""
    try:
        return parse_rfc3339(s if "T" in s else s + "T00:00:00Z")
    except ValueError:
        raise UsageError(f"bad --until {s!r}: use YYYY-MM-DD or an RFC 3339 time") from None


def parse_percent(s: str, what: str = "--max-unused") -> float:
    """'5%' or '5' -> 0.05."""
    try:
        v = float(s.rstrip("%")) / 100
    except ValueError:
        raise UsageError(f"bad {what} {s!r}") from None
    if not 0 <= v:
        raise UsageError(f"bad {what} {s!r}")
    return v


# ---- backup, restore, dump -------------------------------------------------------------------
def backup(
    repo: Repository, opts, progress: Reporter | None = None, no_lock: bool = False, on_alarm: str | None = None
):
    """A new snapshot (BackupOptions -> BackupSummary). The index is loaded under the shared lock, so
    no prune can remove a pack this backup deduplicates against. When the new snapshot's verdict is
    suspicious or infected the result is an AlarmedBackup (the summary, then the alarm) and the
    `on_alarm` command runs (guard/alarm.py)."""
    import dataclasses

    from cermin.engine.backup import run_backup
    from cermin.guard.observer import GuardObserver

    if getattr(opts, "guard", True) and not any(isinstance(o, GuardObserver) for o in opts.observers):
        # the ransomware guard's verdict goes into every snapshot (Snapshot.extra["guard"])
        opts = dataclasses.replace(opts, observers=[*opts.observers, GuardObserver()])
    with repo_lock(repo, False, "backup", no_lock):
        repo.load_index()
        summary = run_backup(repo, opts, progress)
    if summary.snapshot_id is None:
        return summary
    from cermin.guard.alarm import AlarmedBackup, check_new_snapshot
    from cermin.repo.snapshots import SnapshotRef

    alarm = check_new_snapshot(repo, SnapshotRef(summary.snapshot_id, summary.snapshot), on_alarm)
    return summary if alarm is None else AlarmedBackup(summary, alarm)


def restore(
    repo: Repository,
    snapshot: str,
    opts,
    progress: Reporter | None = None,
    no_lock: bool = False,
    hosts: tuple[str, ...] = (),
    paths: tuple[bytes, ...] = (),
):
    """Restore SNAPSHOT ('latest', 'last-clean', an id prefix; `hosts`/`paths` narrow 'latest' and
    'last-clean') per RestoreOptions -> RestoreSummary."""
    from cermin.engine.restore import run_restore
    from cermin.guard.lastclean import resolve_snapshot

    ref = resolve_snapshot(repo, snapshot, hosts, (), paths)
    with repo_lock(repo, False, "restore", no_lock):
        repo.load_index()
        summary = run_restore(repo, ref.snapshot, opts, progress)
    summary.snapshot_id, summary.verify = ref.id, opts.verify
    return summary


def restore_per_file(
    repo: Repository,
    snapshot: str,
    opts,
    progress: Reporter | None = None,
    no_lock: bool = False,
    hosts: tuple[str, ...] = (),
    paths: tuple[bytes, ...] = (),
    lookback: int | None = None,
    removed: bool = True,
    dry_run: bool = False,
):
    """`restore --per-file-last-clean SNAPSHOT`: every path of SNAPSHOT at its newest version that no
    verdict or file-level flag marks, per RestoreOptions (no includes/excludes) -> PerFileRestore,
    which lists what came from where (guard/perfile.py). `lookback`: snapshots searched beyond the last
    clean one; `removed`: bring back files removed in flagged snapshots; `dry_run`: plan only."""
    from cermin.guard.lastclean import resolve_snapshot
    from cermin.guard.perfile import DEFAULT_LOOKBACK, per_file_restore

    if not dry_run and not opts.target:
        raise UsageError("give the directory to restore into (--target)")
    ref = resolve_snapshot(repo, snapshot, hosts, (), paths)
    lookback = DEFAULT_LOOKBACK if lookback is None else lookback
    with repo_lock(repo, False, "restore", no_lock):
        repo.load_index()
        return per_file_restore(repo, ref, opts, progress, lookback, removed, dry_run)


def dump(repo: Repository, snapshot: str, path: str, out: BinaryIO, no_lock: bool = False):
    """Write the file PATH of SNAPSHOT to `out`, or a tar of the directory PATH -> DumpResult."""
    from cermin.engine.dump import dump_node
    from cermin.guard.lastclean import resolve_snapshot

    ref = resolve_snapshot(repo, snapshot)
    with repo_lock(repo, False, "dump", no_lock):
        repo.load_index()
        return dump_node(repo, ref.snapshot.tree, os.fsencode(path), out)


# ---- check, repair ---------------------------------------------------------------------------
@dataclass
class CheckOptions:
    read_data: bool = False
    subset: str | None = None  # 'N%' or 'n/m'
    extend_locks: bool = False  # Object Lock repositories: `lock extend` afterwards, under the same lock
    no_lock: bool = False


def check(repo: Repository, opts: CheckOptions, progress: Reporter | None = None):
    """CheckReport (and the lock extension, when asked)."""
    from cermin.engine.check import run_check

    with repo_lock(repo, False, "check", opts.no_lock):
        report = run_check(repo, opts.read_data, opts.subset, progress)
        locks = LockExtension(_extend(repo)) if opts.extend_locks else None
    return Combined(locks, report)


def repair_index(repo: Repository, no_lock: bool = False):
    from cermin.engine.repair import repair_index as run

    with repo_lock(repo, True, "repair index", no_lock):
        return run(repo)


def repair_packs(
    repo: Repository, pack_ids: list[str] | None = None, progress: Reporter | None = None, no_lock: bool = False
):
    from cermin.engine.repair import repair_packs as run

    with repo_lock(repo, True, "repair packs", no_lock):
        return run(repo, pack_ids or None, progress=progress)


def repair_snapshots(repo: Repository, forget_originals: bool = False, no_lock: bool = False):
    from cermin.engine.repair import repair_snapshots as run

    with repo_lock(repo, True, "repair snapshots", no_lock):
        repo.load_index()
        return run(repo, forget_originals)


# ---- forget, prune, protect ------------------------------------------------------------------
@dataclass
class PruneOptions:
    max_unused: float = 0.05  # fraction of the used data that may stay unused in kept packs
    dry_run: bool = False
    extend_locks: bool = False
    no_lock: bool = False


@dataclass
class PruneOutcome:
    """The plan, and what executing it did (None for a dry run)."""

    plan: object  # PrunePlan
    result: object | None = None  # PruneResult
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        from cermin.errors import EXIT_APPROVAL

        return EXIT_APPROVAL if self.result is not None and self.result.approval else 0

    def _planted(self) -> list[str]:
        from cermin.engine.repair import _planted

        return _planted(self.plan.foreign)

    def to_json(self) -> list[dict]:
        from cermin.engine.forget import approval_json

        out = [*map(warning_json, self._planted())]
        out.append({"message_type": "prune_plan", "dry_run": self.dry_run, **self.plan.to_json()})
        r = self.result
        if r is None:
            return out
        if r.approval:
            return [*out, approval_json(r.approval, r.packs_queued + r.index_files_queued, self._what())]
        summary = {"packs_written": r.packs_written, "bytes_written": r.bytes_written}
        summary |= {"packs_deleted": r.packs_deleted, "bytes_deleted": r.bytes_deleted}
        summary |= {"temp_files_removed": r.temp_files_removed, "temp_bytes_removed": r.temp_bytes_removed}
        return [*out, {"message_type": "summary", **summary}]

    def _what(self) -> str:
        r = self.result
        return f"deleting {plural(r.packs_queued, 'pack')} and {plural(r.index_files_queued, 'old index file')}"

    def to_text(self, verbose: int = 0) -> list[Line]:
        from cermin.engine.forget import approval_text

        p, r = self.plan, self.result
        say = answer if self.dry_run else note  # the plan is the answer of a dry run, chatter otherwise
        lines = [*map(warning, self._planted())]
        if self.dry_run:
            lines.append(answer("dry run: nothing is changed"))
        lines.append(
            say(
                f"used: {plural(p.used_blobs, 'blob')}, {fmt_bytes(p.used_bytes)}; "
                f"unused: {plural(p.unused_blobs, 'blob')}, {fmt_bytes(p.unused_bytes)}"
            )
        )
        lines.append(
            say(
                f"packs: keep {len(p.keep_packs)}, repack {len(p.repack_packs)} "
                f"({plural(p.repack_blobs, 'blob')}, {fmt_bytes(p.repack_bytes)}), delete {len(p.delete_packs)}, "
                f"delete unindexed {len(p.unindexed_packs)}"
            )
        )
        if p.temp_files:
            lines.append(say(f"temporary files of interrupted writes: {len(p.temp_files)} ({fmt_bytes(p.temp_bytes)})"))
        lines.append(say(f"frees about {fmt_bytes(p.bytes_freed)} of {fmt_bytes(p.total_bytes)}"))
        if r is None:
            return lines
        if r.approval:
            return [*lines, approval_text(r.approval, r.packs_queued + r.index_files_queued, self._what())]
        lines.append(
            answer(
                f"deleted {plural(r.packs_deleted, 'pack')} ({fmt_bytes(r.bytes_deleted)}), "
                f"wrote {plural(r.packs_written, 'pack')} ({fmt_bytes(r.bytes_written)})"
            )
        )
        if r.temp_files_removed:
            n = plural(r.temp_files_removed, "temporary file")
            lines.append(answer(f"removed {n} of interrupted writes ({fmt_bytes(r.temp_bytes_removed)})"))
        return lines


def _prune(repo: Repository, opts: PruneOptions, lock, progress: Reporter | None) -> PruneOutcome:
    from cermin.engine.prune import execute_prune, plan_prune

    plan = plan_prune(repo, opts.max_unused)
    if opts.dry_run:
        return PruneOutcome(plan, None, True)
    return PruneOutcome(plan, execute_prune(repo, plan, lock, progress))


def prune(repo: Repository, opts: PruneOptions, progress: Reporter | None = None):
    """Plan, then (unless a dry run) repack, re-index and delete, under the exclusive lock."""
    with repo_lock(repo, True, "prune", opts.no_lock) as lock:
        out = _prune(repo, opts, lock, progress)
        locks = LockExtension(_extend(repo)) if opts.extend_locks and not opts.dry_run else None
    return Combined(out, locks)


@dataclass
class ForgetOptions:
    snapshot_ids: list[str] = field(default_factory=list)  # these, or those the policy does not keep
    policy: object | None = None  # KeepPolicy
    hosts: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    paths: tuple[bytes, ...] = ()
    group_by: tuple[str, ...] = ("host", "paths")
    dry_run: bool = False
    prune: PruneOptions | None = None  # prune right after, under the same lock
    no_lock: bool = False


def forget(repo: Repository, opts: ForgetOptions, progress: Reporter | None = None):
    """ForgetResult (and the PruneOutcome of `opts.prune`)."""
    from cermin.engine.forget import forget as run

    with repo_lock(repo, True, "forget", opts.no_lock) as lock:
        res = run(repo, opts.snapshot_ids, opts.policy, opts.hosts, opts.tags, opts.paths, opts.group_by, opts.dry_run)
        pruned = None
        if opts.prune is not None and not opts.dry_run and not res.approval:
            pruned = _prune(repo, opts.prune, lock, progress)
    return Combined(res, pruned)


def protect(repo: Repository, snapshot: str, until: datetime, no_lock: bool = False):
    """Keep SNAPSHOT from forget and prune until `until` -> ProtectResult."""
    from cermin.engine.protect import protect as run
    from cermin.repo.snapshots import resolve

    with repo_lock(repo, False, "protect", no_lock):
        repo.load_index()
        return run(repo, resolve(repo, snapshot), until)


# ---- guard -----------------------------------------------------------------------------------
def guard_mark(repo: Repository, start: str, end: str, reason: str, infected: bool = False, no_lock: bool = False):
    """Flag every snapshot taken from `start` to `end` ("" = still going on) -> MarkResult."""
    from cermin.guard.report import mark

    with repo_lock(repo, False, "guard mark", no_lock):
        return mark(repo, start, end, reason, infected)


def guard_ack(repo: Repository, snapshot: str, reason: str, no_lock: bool = False):
    """Acknowledge SNAPSHOT's alarm as benign -> AckResult."""
    from cermin.guard.report import ack

    with repo_lock(repo, False, "guard ack", no_lock):
        return ack(repo, snapshot, reason)


def guard_scan(
    repo: Repository,
    snapshots: list[str],
    opts=None,
    progress: Reporter | None = None,
    no_lock: bool = False,
    all_snapshots: bool = False,
):
    """Re-evaluate SNAPSHOTS ('latest', 'last-clean', id prefixes; every live snapshot with
    `all_snapshots`) by reading their data, per guard.scan.ScanOptions; each result is written as a
    `guard_scan` aux record unless `opts.record` is False -> ScanResult. Under a shared lock, so no
    prune removes the packs being read."""
    from cermin.guard.lastclean import resolve_snapshot
    from cermin.guard.scan import ScanOptions, load_yara, run_scan
    from cermin.repo.snapshots import list_snapshots

    opts = opts or ScanOptions()
    if isinstance(opts.yara, str):  # compiled before anything is read: a bad rule fails fast
        import dataclasses

        opts = dataclasses.replace(opts, yara=load_yara(opts.yara))
    if not snapshots and not all_snapshots:
        raise UsageError("name the snapshots to scan (or --all)")
    refs = [resolve_snapshot(repo, s) for s in snapshots]
    with repo_lock(repo, False, "guard scan", no_lock):
        if all_snapshots:
            refs += list_snapshots(repo)
        repo.load_index()
        return run_scan(repo, refs, opts, progress)


def guard_report(repo: Repository, snapshot: str):
    """Explain SNAPSHOT's verdict -> GuardReport (takes no lock: reads only)."""
    from cermin.guard.report import report

    return report(repo, snapshot)


# ---- Object Lock -----------------------------------------------------------------------------
def _extend(repo: Repository):
    from cermin.engine.objectlock import extend_locks

    return extend_locks(repo)


@dataclass
class LockExtension:
    """The one-line account of `--extend-locks` after check or prune."""

    report: object  # LockReport
    exit_code = 0

    def to_json(self) -> list[dict]:
        r = self.report
        return [{"message_type": "lock", "checked": r.checked, "extended": r.extended, "until": r.until}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        r = self.report
        return [note(f"Object Lock: extended {r.extended} of {plural(r.checked, 'object')} to {r.until[:10]}")]


@dataclass
class LockStatus:
    """`lock status` (dry run) and `lock extend`."""

    report: object  # LockReport
    dry_run: bool
    exit_code = 0

    def to_json(self) -> list[dict]:
        r = self.report
        d = {"message_type": "lock", "policy": r.policy, "checked": r.checked, "extended": r.extended}
        d |= {"lapsing": len(r.lapsing), "until": r.until, "hidden": r.hidden, "planted": r.planted}
        return [d | {"missing": r.missing, "warnings": r.warnings, "dry_run": self.dry_run}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        r, p = self.report, self.report.policy
        verb = "would extend" if self.dry_run else "extended"
        lines = [
            answer(f"policy: {p['mode']} lock of {p['days']} days, maintenance every {p['maintenance_days']} days"),
            answer(f"checked {plural(r.checked, 'object')}; {verb} {len(r.lapsing)} to {r.until[:10]}"),
            *map(warning, r.warnings),
        ]
        if r.hidden:
            lines.append(
                warning(
                    f"{plural(len(r.hidden), 'object')} hidden behind delete markers (still readable): "
                    "`cermin lock unhide` makes them visible again; someone deleted them with these credentials"
                )
            )
        if r.planted:
            lines.append(
                warning(
                    f"{plural(len(r.planted), 'object')} with newer versions cermin did not write (ignored; the "
                    "originals are the ones kept locked): someone overwrote them with these credentials"
                )
            )
        if r.missing:
            lines.append(
                warning(f"{plural(len(r.missing), 'needed object')} with no version at all: run `cermin check`")
            )
        return lines


def lock_status(repo: Repository) -> LockStatus:
    """What `lock extend` would do now, and hidden or planted objects (takes no lock: changes nothing)."""
    from cermin.engine.objectlock import extend_locks

    return LockStatus(extend_locks(repo, dry_run=True), True)


def lock_extend(repo: Repository, no_lock: bool = False) -> LockStatus:
    with repo_lock(repo, False, "lock extend", no_lock):
        return LockStatus(_extend(repo), False)


@dataclass
class Unhidden:
    keys: list[str]
    exit_code = 0

    def to_json(self) -> list[dict]:
        return [{"message_type": "unhide", "keys": self.keys}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        return [answer(f"made {plural(len(self.keys), 'object')} visible again")]


def lock_unhide(backend) -> Unhidden:
    """Remove delete markers that hide locked objects. Needs no password and no lock (see objectlock)."""
    from cermin.engine.objectlock import unhide

    return Unhidden(unhide(backend))


# ---- repository-level --------------------------------------------------------------------------
@dataclass
class Unlocked:
    removed: list[str]
    exit_code = 0

    def to_json(self) -> list[dict]:
        return [{"message_type": "unlock", "removed": self.removed}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        return [answer(f"removed {plural(len(self.removed), 'lock')}")]


def unlock(repo: Repository, remove_all: bool = False) -> Unlocked:
    from cermin.repo.lock import remove_stale_locks

    return Unlocked(remove_stale_locks(repo, remove_all))


def stats(repo: Repository, snapshot_ids: list[str], mode: str, hosts=(), tags=()):
    """Stats over the given snapshots (default: those matching hosts and tags)."""
    from cermin.engine.stats import compute_stats
    from cermin.repo import snapshots

    if snapshot_ids:
        refs = [snapshots.resolve(repo, s) for s in snapshot_ids]
    else:
        refs = snapshots.list_snapshots(repo, hosts=tuple(hosts), tags=tuple(tags))
    return compute_stats(repo, refs, mode)


# ---- init and key slots ------------------------------------------------------------------------
@dataclass
class Initialized:
    id: str
    location: str
    object_lock: bool = False
    shares_ids: bool = False  # made with --copy-chunker-params-from

    @property
    def exit_code(self) -> int:
        return 0

    def _warnings(self) -> list[str]:
        from cermin.engine.objectlock import DEPLOYMENT_WARNING

        return [DEPLOYMENT_WARNING] if self.object_lock else []

    def to_json(self) -> list[dict]:
        line = {"message_type": "initialized", "id": self.id, "repository": self.location}
        if self.shares_ids:
            line["copied_chunker_params"] = True
        return [line, *map(warning_json, self._warnings())]

    def to_text(self, verbose: int = 0) -> list[Line]:
        return [
            note(f"created cermin repository {self.id[:10]} at {self.location}"),
            *([note("chunker parameters and blob ids shared with the source repository")] if self.shares_ids else []),
            note("Keep the password safe: without it the data cannot be recovered."),
            *map(warning, self._warnings()),
        ]


def init(
    backend,
    password,
    lock_days: int | None = None,
    lock_mode: str = "compliance",
    maintenance_days=7,
    secrets_from: Repository | None = None,
    compression_level: int | None = None,
):
    """A new repository on `backend` (with an Object Lock policy when lock_days is given). `password`:
    bytes, or a function asked only once the policy is known to be possible. `secrets_from`: an open
    repository whose chunker parameters and blob-id key the new one shares (a mirror of it).
    `compression_level`: zstd level for good (default 3, or `secrets_from`'s)."""
    from cermin.engine.objectlock import new_lock_policy

    extra = {}
    if lock_days is not None:
        extra["object_lock"] = new_lock_policy(backend, lock_days, lock_mode, maintenance_days)
    pw = password() if callable(password) else password
    repo = Repository.init(backend, pw, extra=extra, secrets_from=secrets_from, compression_level=compression_level)
    return Initialized(repo.config.id, backend.location, lock_days is not None, secrets_from is not None)


@dataclass
class KeyList:
    keys: list  # KeyInfo
    exit_code = 0

    def to_json(self) -> list[dict]:
        fields = ("id", "current", "created", "hostname", "username")
        return [{"message_type": "key", **{f: getattr(k, f) for f in fields}} for k in self.keys]

    def to_text(self, verbose: int = 0) -> list[Line]:
        return [
            answer(f"{'*' if k.current else ' '} {k.id[:12]}  {k.created[:19]}  {k.username}@{k.hostname}")
            for k in self.keys
        ]


@dataclass
class KeyChanged:
    """`key add` / `key remove` / `key passwd`: message_type key_added / key_removed / key_changed."""

    message_type: str
    id: str
    exit_code = 0

    def to_json(self) -> list[dict]:
        return [{"message_type": self.message_type, "id": self.id}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        said = {"key_added": "added key {}", "key_removed": "removed key {}"}
        return [answer(said.get(self.message_type, "password changed (key {})").format(self.id[:12]))]


def key_list(repo: Repository) -> KeyList:
    from cermin.repo.keyops import list_keys

    return KeyList(list_keys(repo))


def key_add(repo: Repository, new_password: bytes) -> KeyChanged:
    from cermin.repo.keyops import add_key

    return KeyChanged("key_added", add_key(repo, new_password))


def key_remove(repo: Repository, key_id: str) -> KeyChanged:
    from cermin.repo.keyops import remove_key

    return KeyChanged("key_removed", remove_key(repo, key_id))


def key_passwd(repo: Repository, new_password: bytes) -> KeyChanged:
    from cermin.repo.keyops import change_password

    return KeyChanged("key_changed", change_password(repo, new_password))


# ---- mirror ------------------------------------------------------------------------------------
def mirror(src: Repository, dst: Repository, opts, progress: Reporter | None = None, no_lock: bool = False):
    """Copy the snapshots of `src` (A) that `dst` (B) lacks, per MirrorOptions -> MirrorResult.

    A shared lock on A ("mirror-source": read-only, so a read token or a read-only mount goes on
    without one) keeps prune in A from deleting packs being read; a shared lock on B keeps B's
    prune from deleting packs the copy deduplicates against. Nothing is written to A."""
    from cermin.engine.mirror import mirror as run

    with repo_lock(src, False, "mirror-source", no_lock), repo_lock(dst, False, "mirror", no_lock):
        return run(src, dst, opts, progress)


def mirror_status(src: Repository | None, dst: Repository, source_id: str | None = None):
    """How far B is behind A (or, with src None, what B alone says of its mirror runs). Takes no
    lock: like `snapshots`, it only lists and reads records."""
    from cermin.engine.mirrorstatus import mirror_status as run

    return run(src, dst, source_id=source_id)


def mirror_verify(src: Repository, dst: Repository, read_data: bool = False, no_lock: bool = False):
    """Prove every snapshot B mirrored from A restores the same tree, without writing to disk."""
    from cermin.engine.mirrorstatus import mirror_verify as run

    with repo_lock(src, False, "mirror-source", no_lock), repo_lock(dst, False, "mirror verify", no_lock):
        return run(src, dst, read_data)
