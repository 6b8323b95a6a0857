"""The backup pipeline: walk, skip unchanged files, chunk/hash/compress/encrypt in worker threads.

- `walker`: the calling thread lists directories through dir fds, applies excludes, stats every entry
  and skips files unchanged since the parent snapshot; it opens every changed file;
- `filesaver` hands changed files (open fds, in batches) to worker processes (`workers`) that read, cut,
  hash and compress them (`chunks`); it packs and encrypts what they send and completes the nodes;
- `trees`: a directory's tree blob is stored once all of its entries are done, by whichever thread
  finished the last one;
- `state`: counters, messages and observers shared by all three (`cermin.engine.observer` for events).
The snapshot is written only after every pack and index is durable (BlobSaver.flush).
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from cermin import __version__
from cermin.engine.backup.filesaver import FileSaver
from cermin.engine.backup.state import BackupState
from cermin.engine.backup.trees import Trees
from cermin.engine.backup.walker import Walker
from cermin.engine.observer import BackupObserver, BackupStart
from cermin.engine.progress import Progress, Reporter, Ticker
from cermin.engine.results import Line, error, error_json, note, warning, warning_json
from cermin.errors import EXIT_INCOMPLETE, CerminError, UsageError
from cermin.format import pack
from cermin.format.records import FILE, Node, Snapshot
from cermin.repo import localstate
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.repo.snapshots import SnapshotRef, list_snapshots, resolve
from cermin.util import display_path, fmt_bytes, now_rfc3339, plural, username

__all__ = ["Backup", "BackupOptions", "BackupProgress", "BackupSummary", "run_backup"]

GC_YOUNG = 20_000  # allocations between two young-generation collections during a backup (Python: 700)


@dataclass
class BackupOptions:
    paths: list[bytes] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    one_file_system: bool = False
    tags: list[str] = field(default_factory=list)
    hostname: str | None = None
    parent: str | None = None
    dry_run: bool = False
    workers: int = 0  # processes reading files; 0: one per CPU, 2 to 8
    stdin: BinaryIO | None = None
    stdin_filename: str = "stdin"
    observers: list[BackupObserver] = field(default_factory=list)  # see cermin.engine.observer
    extra: dict = field(default_factory=dict)
    guard: bool = True  # commands.backup attaches the ransomware guard (cermin.guard.observer) unless False


@dataclass
class BackupProgress:
    """Live counters; written by many threads without locks, so approximate until the summary."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    current: str = ""
    start: float = field(default_factory=time.monotonic)


@dataclass
class BackupSummary:
    snapshot_id: str | None
    snapshot: Snapshot
    parent: str | None
    warnings: list[str]
    errors: list[str]
    duration: float
    packs_written: int
    bytes_uploaded: int
    dry_run: bool

    @property
    def incomplete(self) -> bool:
        return bool(self.errors)

    @property
    def exit_code(self) -> int:
        return EXIT_INCOMPLETE if self.incomplete else 0

    def to_json(self) -> list[dict]:
        s = self.snapshot.summary
        summary = {
            "message_type": "summary",
            "snapshot_id": self.snapshot_id,
            "parent": self.parent,
            "dry_run": self.dry_run,
            "incomplete": self.incomplete,
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs": s.dirs,
            "other": s.other,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "changed_during_read": s.changed_during_read,
            "total_files": s.total_files,
            "total_bytes": s.total_bytes,
            "bytes_read": s.bytes_read,
            "data_blobs": s.data_blobs_added,
            "tree_blobs": s.tree_blobs_added,
            "data_added": s.data_added_raw,
            "data_added_stored": s.data_added_stored,
            "packs_written": self.packs_written,
            "bytes_uploaded": self.bytes_uploaded,
            "duration": round(self.duration, 3),
        }
        return [*map(warning_json, self.warnings), *map(error_json, self.errors), summary]

    def to_text(self, verbose: int = 0) -> list[Line]:
        s = self.snapshot.summary
        lines = [*map(warning, self.warnings), *map(error, self.errors)]
        lines.append(note(f"Files: {s.files_new} new, {s.files_changed} changed, {s.files_unmodified} unmodified"))
        lines.append(note(f"Dirs:  {s.dirs}   other: {s.other}   errors: {len(self.errors)}"))
        lines.append(
            note(
                f"Added to the repository: {fmt_bytes(s.data_added_stored)} stored "
                f"({fmt_bytes(s.data_added_raw)} new data, {plural(s.data_blobs_added, 'data blob')}, "
                f"{plural(s.tree_blobs_added, 'tree blob')}, {plural(self.packs_written, 'pack')})"
            )
        )
        lines.append(
            note(f"processed {plural(s.total_files, 'file')}, {fmt_bytes(s.total_bytes)} in {self.duration:.2f}s")
        )
        if self.dry_run:
            lines.append(note("dry run: nothing was written"))
        else:
            state = " (INCOMPLETE: some files could not be read)" if self.incomplete else ""
            lines.append(note(f"snapshot {(self.snapshot_id or '')[:8]} saved{state}"))
        return lines


class Backup:
    """One backup run: wires state, walker, file saver and tree completion, then writes the snapshot."""

    def __init__(self, repo: Repository, opts: BackupOptions, progress: BackupProgress | None = None) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress or BackupProgress()
        # Processes reading files. Past ~8 the walking process is the bound, and each costs two buffers.
        self.workers = opts.workers or min(8, max(2, os.cpu_count() or 2))
        self.saver = BlobSaver(repo, builders=1, dry_run=opts.dry_run)  # AES-GCM is fast: one open pack is enough
        self.state = BackupState(repo, self.saver, self.progress, list(opts.observers))
        self.trees = Trees(self.state)
        self.files = FileSaver(self.state, self.trees, self.workers)
        self.walker = Walker(
            self.state, self.trees, self.files, opts.excludes, opts.exclude_caches, opts.one_file_system
        )

    @property
    def warnings(self) -> list[str]:
        return self.state.warnings

    @property
    def errors(self) -> list[str]:
        return self.state.errors

    # ---- entry point -------------------------------------------------------------------------
    def run(self) -> BackupSummary:
        t0 = time.monotonic()
        st = self.state
        s = st.sum
        s.backup_start = now_rfc3339()
        name = b""
        if self.opts.stdin is not None:
            name = os.fsencode(self.opts.stdin_filename)
            if not name or b"/" in name or name in (b".", b".."):
                raise UsageError("--stdin-filename must be a plain file name")
        parent = self._find_parent()
        if st.obs is not None:
            st.obs.start(_start_event(parent, name))
        self.adopted = self._adopt_unindexed()
        with _collector_settled():
            tree_id, paths = self._store_all(parent, name)
        s.backup_end = now_rfc3339()
        s.data_blobs_added = self.saver.added[pack.DATA]
        s.tree_blobs_added = self.saver.added[pack.TREE]
        s.data_added_raw, s.data_added_stored = self.saver.raw_added, self.saver.stored_added
        extra = dict(self.opts.extra)
        if st.obs is not None:
            s.errors = len(st.errors)
            extra.update(st.obs.finish(s, taken=extra))
        s.errors = len(st.errors)
        snap = Snapshot(
            time=s.backup_start,
            tree=tree_id,
            paths=paths,
            hostname=self.opts.hostname or socket.gethostname(),
            username=username(),
            uid=os.getuid(),
            gid=os.getgid(),
            tags=sorted(set(self.opts.tags)),
            parent=parent.id if parent else "",
            incomplete=bool(st.errors),
            program_version=f"cermin {__version__}",
            summary=s,
            extra=extra,
        )
        snap_id = None if self.opts.dry_run else self.repo.save_snapshot(snap)
        if snap_id is not None:  # a stdin snapshot too: its paths are its file name, never an absolute path
            localstate.remember_snapshot(self.repo.config.id, localstate.group_key(snap.hostname, snap.paths), snap_id)
        return BackupSummary(
            snapshot_id=snap_id,
            snapshot=snap,
            parent=parent.id if parent else None,
            warnings=st.warnings,
            errors=st.errors,
            duration=time.monotonic() - t0,
            packs_written=self.saver.packs_written,
            bytes_uploaded=self.saver.bytes_uploaded,
            dry_run=self.opts.dry_run,
        )

    def _store_all(self, parent: SnapshotRef | None, name: bytes) -> tuple[bytes, list[bytes]]:
        """Read and store every file, tree and pack: the tree id and the snapshot's paths."""
        try:
            if self.opts.stdin is not None:
                prev = self._previous_stdin(parent, name)
                tree_id, paths = self.trees.store([self.files.save_stdin(self.opts.stdin, name, prev)]), [name]
            else:
                paths = self._targets()
                self.files.start()
                tree_id = self.walker.walk_targets(paths, parent.snapshot.tree if parent else b"")
                self.files.flush_packs()
            self.saver.flush()
        except BaseException:
            self.files.close(abort=True)
            raise
        finally:
            self.files.close()
            self.saver.close()
        return tree_id, paths

    def _targets(self) -> list[bytes]:
        if not self.opts.paths:
            raise UsageError("nothing to back up: give at least one path")
        out: list[bytes] = []
        for p in self.opts.paths:
            a = os.path.normpath(os.path.abspath(p))
            try:
                os.lstat(a)
            except FileNotFoundError:
                raise CerminError(f"backup path {display_path(a)} does not exist") from None
            except OSError as e:
                raise CerminError(f"cannot access backup path {display_path(a)}: {e.strerror}") from None
            out.append(a)
        out = sorted(set(out))
        # Drop a path already covered by another given path.
        return [p for p in out if not any(p != q and p.startswith(q.rstrip(b"/") + b"/") for q in out)]

    def _adopt_unindexed(self):
        """Reuse what an interrupted backup left durable: packs in no index are indexed from their
        own authenticated headers before anything is stored, so their blobs are not uploaded again."""
        from cermin.repo.indexfiles import adopt_packs

        adopted = adopt_packs(self.repo, write=not self.opts.dry_run)
        if adopted.refused:
            first = min(adopted.refused)
            self.repo.warn(
                f"not adopted: {plural(len(adopted.refused), 'pack')} in no index ({first[:12]}: "
                f"{adopted.refused[first]}); `cermin check` names them, `cermin prune` removes them"
            )
        return adopted

    def _find_parent(self) -> SnapshotRef | None:
        if self.opts.parent:
            return resolve(self.repo, self.opts.parent)
        host = self.opts.hostname or socket.gethostname()
        tags: list[str] = []
        if self.opts.stdin is not None:
            # The stream is read whole every time: its parent is what the guard compares it with (the
            # previous dump's size, compressibility and format, BackupStart's totals). Same host, the
            # same file name and, when tags are given, the same tags (one source of one system).
            paths = [os.fsencode(self.opts.stdin_filename)]
            tags = sorted(set(self.opts.tags))
        else:
            paths = sorted({os.path.normpath(os.path.abspath(p)) for p in self.opts.paths})
        # A parent's unchanged files are carried forward unread, so only a snapshot this client
        # wrote itself may be one: whoever holds the password can plant a "newer" snapshot whose
        # metadata matches the disk but whose contents are theirs (for a stream: a "previous version"
        # that makes the next one look unchanged to the guard). Without a record (a new client, a
        # lost cache) there is no parent, and every file is read once (a stream is judged as new).
        own = set(localstate.own_snapshots(self.repo.config.id, localstate.group_key(host, paths)))
        foreign = None
        for ref in reversed(list_snapshots(self.repo, hosts=(host,))):
            snap = ref.snapshot
            if ref.future or sorted(snap.paths) != paths or snap.extra.get("repaired") or snap.hostname != host:
                continue
            if tags and sorted(set(snap.tags)) != tags:
                continue
            if ref.id in own:
                break
            foreign = foreign or ref
        else:
            ref = None
        if foreign is not None and self.opts.stdin is not None:
            self.state.warn(
                f"snapshot {foreign.id[:8]} is newer than any this client wrote for {display_path(paths[0])}: "
                "not used as the parent, the guard compares the stream with an older one or none "
                "(`--parent` trusts it)"
            )
        elif foreign is not None:
            self.state.warn(
                f"snapshot {foreign.id[:8]} is newer than any this client wrote for these paths: not used as "
                "the parent, so its files are read again (`--parent` trusts it)"
            )
        return ref

    def _previous_stdin(self, parent: SnapshotRef | None, name: bytes) -> Node | None:
        """The stream's previous version: the file of that name in the parent's root tree."""
        if parent is None:
            return None
        prev = self.trees.child_nodes(parent.snapshot.tree).get(name)
        return prev if prev is not None and prev.type == FILE else None


def run_backup(repo: Repository, opts: BackupOptions, progress: Reporter | None = None) -> BackupSummary:
    """One backup, its live counters sampled into `progress` events. Takes no lock: the caller holds a
    shared one (`cermin.ops.commands.backup` takes it and loads the index under it)."""
    b = Backup(repo, opts)
    c = b.progress

    def sample(t: float) -> Progress:
        return Progress(operation="backup", unit="files", done=c.files, dirs_done=c.dirs, bytes_done=c.bytes, elapsed=t)

    with Ticker(progress, sample):
        return b.run()


_gc_lock = threading.Lock()
_gc_users = 0  # backups running in this process under the settled collector
_gc_saved: tuple = ()  # (threshold, froze) as the first of them found them


@contextmanager
def _collector_settled() -> Iterator[None]:
    """For the backups running: what is alive at the first one's start (modules, the index, the parent
    snapshot) is frozen out of the collector's scans, and young collections come less often (a backup
    allocates millions of short-lived objects, few of them in cycles). The agent and the dashboard run
    backups, several at once, in long-lived processes: the last one to finish puts everything back as
    the first one found it. Objects frozen by someone else stay their business."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            threshold, froze = gc.get_threshold(), not gc.get_freeze_count()
            _gc_saved = (threshold, froze)
            if froze:
                gc.freeze()
            if threshold[0]:  # 0: automatic collection is off, and stays off
                gc.set_threshold(max(threshold[0], GC_YOUNG), *threshold[1:])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                threshold, froze = _gc_saved
                gc.set_threshold(*threshold)
                if froze:
                    gc.unfreeze()


def _start_event(parent: SnapshotRef | None, stdin: bytes = b"") -> BackupStart:
    if parent is None:
        return BackupStart(stdin=stdin)
    ps = parent.snapshot.summary

    def count(v) -> int:
        return v if isinstance(v, int) and 0 <= v < 1 << 62 else -1

    files, size = count(getattr(ps, "total_files", -1)), count(getattr(ps, "total_bytes", -1))
    return BackupStart(parent.id, files, size, stdin)
