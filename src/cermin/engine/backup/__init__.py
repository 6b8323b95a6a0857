"""The backup pipeline: walk, skip unchanged files, chunk/hash/compress/encrypt in worker threads.

The walker (calling thread) lists directories through dir fds and opens every changed file; a
bounded pool of workers reads, chunks and stores file contents while the walker goes on. A
directory's tree blob is stored once all of its entries are done, and the snapshot is written
only after every pack and index is durable (BlobSaver.flush).
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from cermin import __version__
from cermin.engine import fsmeta
from cermin.engine.fsread import CACHEDIR_TAG, Excluder, SparseReader, WalkPath
from cermin.engine.fsread import is_cache_dir as _is_cache_dir
from cermin.engine.fsread import open_for_read as _open_for_read
from cermin.errors import CerminError, UsageError
from cermin.format import pack, records
from cermin.format.records import DIR, FILE, SYMLINK, Node, Snapshot, SnapshotSummary, Tree
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.repo.snapshots import SnapshotRef, list_snapshots, resolve
from cermin.util import display_path, now_rfc3339, username

WHOLE_READ_LIMIT = 8 * 1024 * 1024  # files up to this size are read in one go and cut in memory
BATCH_FILES = 64  # changed files handed to a worker at once ...
BATCH_BYTES = 4 * 1024 * 1024  # ... or fewer when they add up to this much


@dataclass
class FileReport:
    """What the guard hook sees for each file whose content was read (never a second read)."""

    path: bytes
    node: Node
    previous: Node | None
    chunks: list[tuple[int, int]]  # (raw length, stored length or 0 when deduplicated) per chunk


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
    workers: int = 0  # 0: one per CPU, at least 2
    stdin: BinaryIO | None = None
    stdin_filename: str = "stdin"
    on_file: Callable[[FileReport], None] | None = None
    extra: dict = field(default_factory=dict)


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


class _DirJob:
    """A directory being backed up: its nodes, and how many of them are still being worked on."""

    __slots__ = ("nodes", "pending", "listed", "parent", "slot", "tree_id", "done")

    def __init__(self, parent: _DirJob | None, slot: int, root: bool = False) -> None:
        self.nodes: list[Node | None] = []
        self.pending = 0  # files being read and subdirectories not yet stored
        self.listed = False  # the walker has added every entry
        self.parent = parent
        self.slot = slot  # index of this directory's node in the parent's nodes
        self.tree_id = b""
        self.done = threading.Event() if root else None


def _unchanged(prev: Node | None, st: os.stat_result) -> bool:
    return (
        prev is not None
        and prev.type == FILE
        and prev.size == st.st_size
        and prev.mtime_ns == st.st_mtime_ns
        and prev.ctime_ns == st.st_ctime_ns
        and prev.inode == st.st_ino
    )


class Backup:
    def __init__(self, repo: Repository, opts: BackupOptions, progress: BackupProgress | None = None) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress or BackupProgress()
        self.workers = opts.workers or max(2, os.cpu_count() or 2)
        self.saver = BlobSaver(repo, builders=1, dry_run=opts.dry_run)  # AES-GCM is fast: one open pack is enough
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cermin-file")
        # Chunks of large files; a separate pool so a file job never waits on its own pool.
        self.chunk_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cermin-chunk")
        # Batches in flight: bounds open files to (workers + 2) * BATCH_FILES.
        self._slots = threading.BoundedSemaphore(self.workers + 1)
        self._batch: list[tuple] = []
        self._batch_bytes = 0
        self._excl = Excluder(opts.excludes)
        self._tls = threading.local()
        self._mutex = threading.Lock()
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.sum = SnapshotSummary()
        self._root_dev = 0
        self._fatal: BaseException | None = None

    # ---- messages ----------------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        with self._mutex:
            self.warnings.append(msg)

    def _error(self, path: bytes, msg: str) -> None:
        with self._mutex:
            self.errors.append(f"{display_path(path)}: {msg}")

    # ---- entry point -------------------------------------------------------------------------
    def run(self) -> BackupSummary:
        t0 = time.monotonic()
        self.sum.backup_start = now_rfc3339()
        parent = self._find_parent()
        try:
            if self.opts.stdin is not None:
                tree_id, paths = self._stdin_tree(), [os.fsencode(self.opts.stdin_filename)]
            else:
                paths = self._targets()
                tree_id = self._save_virtual(self._path_tree(paths), b"", parent.snapshot.tree if parent else b"")
            self.saver.flush()
        finally:
            self.pool.shutdown(wait=True)
            self.chunk_pool.shutdown(wait=True)
            self.saver.close()
        s = self.sum
        s.backup_end = now_rfc3339()
        s.errors = len(self.errors)
        s.data_blobs_added = self.saver.added[pack.DATA]
        s.tree_blobs_added = self.saver.added[pack.TREE]
        s.data_added_raw, s.data_added_stored = self.saver.raw_added, self.saver.stored_added
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
            incomplete=bool(self.errors),
            program_version=f"cermin {__version__}",
            summary=s,
            extra=dict(self.opts.extra),
        )
        snap_id = None if self.opts.dry_run else self.repo.save_snapshot(snap)
        return BackupSummary(
            snapshot_id=snap_id,
            snapshot=snap,
            parent=parent.id if parent else None,
            warnings=self.warnings,
            errors=self.errors,
            duration=time.monotonic() - t0,
            packs_written=self.saver.packs_written,
            bytes_uploaded=self.saver.bytes_uploaded,
            dry_run=self.opts.dry_run,
        )

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

    def _find_parent(self) -> SnapshotRef | None:
        if self.opts.parent:
            return resolve(self.repo, self.opts.parent)
        if self.opts.stdin is not None:
            return None
        host = self.opts.hostname or socket.gethostname()
        paths = sorted({os.path.normpath(os.path.abspath(p)) for p in self.opts.paths})
        for ref in reversed(list_snapshots(self.repo, hosts=(host,))):
            # A snapshot dated beyond the clock-skew allowance is not trusted as the latest: a
            # planted one would otherwise pass its file contents on to every later backup unread.
            if ref.future:
                continue
            if sorted(ref.snapshot.paths) == paths and not ref.snapshot.extra.get("repaired"):
                return ref
        return None

    @staticmethod
    def _path_tree(paths: list[bytes]) -> dict:
        """Nest absolute paths into {component: subtree or None (a target)}."""
        root: dict = {}
        for p in paths:
            parts = [c for c in p.split(b"/") if c]
            if not parts:  # backing up "/"
                return {None: None}
            d = root
            for c in parts[:-1]:
                d = d.setdefault(c, {})
            d[parts[-1]] = None
        return root

    # ---- trees -------------------------------------------------------------------------------
    def _child_nodes(self, tree_id: bytes) -> dict[bytes, Node]:
        if not tree_id:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(tree_id).nodes}
        except CerminError as e:
            self._warn(f"parent tree unreadable, files are re-read: {e}")
            return {}

    def _store_tree(self, nodes: list[Node]) -> bytes:
        data = records.encode(Tree(nodes=nodes))
        tid = self.repo.blob_id(data)
        self.saver.save(pack.TREE, tid, data)
        return tid

    def _save_virtual(self, tree: dict, prefix: bytes, parent_tree: bytes) -> bytes:
        """Trees for the path components above the targets, then the targets themselves."""
        job = _DirJob(None, 0, root=True)
        if None in tree:  # "/" itself
            fd = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._root_dev = os.fstat(fd).st_dev
                self._walk_dir(fd, WalkPath(None, b""), parent_tree, job)
            finally:
                os.close(fd)
            return self._wait(job)
        prev = self._child_nodes(parent_tree)
        for name in sorted(tree):
            full = prefix + b"/" + name
            sub = tree[name]
            if sub is None:
                dfd = os.open(prefix or b"/", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    self._root_dev = st.st_dev
                    self._save_entry(dfd, name, st, WalkPath(None, prefix), prev.get(name), job)
                finally:
                    os.close(dfd)
                continue
            node = fsmeta.node_from_stat(name, os.lstat(full), DIR)
            p = prev.get(name)
            node.subtree = self._save_virtual(sub, full, p.subtree if p and p.type == DIR else b"")
            job.nodes.append(node)
        self._listed(job)
        return self._wait(job)

    def _wait(self, job: _DirJob) -> bytes:
        self._submit_batch()  # nothing more will be added before this tree is needed
        while not job.done.wait(0.2):
            if self._fatal is not None:
                break
        if self._fatal is not None:
            raise self._fatal
        return job.tree_id

    # ---- directory completion: a tree is stored when its last entry is done, by whichever
    # thread finishes it, so the walker never waits at a directory boundary.
    def _listed(self, job: _DirJob) -> None:
        with self._mutex:
            job.listed = True
            ready = job.pending == 0
        if ready:
            self._finish(job)

    def _entry_done(self, job: _DirJob) -> None:
        with self._mutex:
            job.pending -= 1
            ready = job.listed and job.pending == 0
        if ready:
            self._finish(job)

    def _finish(self, job: _DirJob | None) -> None:
        while job is not None:
            job.tree_id = self._store_tree([n for n in job.nodes if n is not None])
            job.nodes = []
            parent = job.parent
            if parent is None:
                job.done.set()
                return
            parent.nodes[job.slot].subtree = job.tree_id
            with self._mutex:
                parent.pending -= 1
                ready = parent.listed and parent.pending == 0
            job = parent if ready else None

    def _walk_dir(self, dfd: int, path: WalkPath, parent_tree: bytes, job: _DirJob) -> None:
        prev = self._child_nodes(parent_tree)
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(dfd))
        except OSError as e:
            self._error(path.join(b""), f"cannot list directory: {e.strerror}")
            names = []
        if self.opts.exclude_caches and CACHEDIR_TAG in names and _is_cache_dir(dfd):
            names = [CACHEDIR_TAG]
        for name in names:
            if self._fatal is not None:
                raise self._fatal
            full = path.join(name) if self._excl else b""
            if self._excl and self._excl.excluded(name, full):
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                self._error(path.join(name), "vanished before it could be read")
                continue
            except OSError as e:
                self._error(path.join(name), f"cannot stat: {e.strerror}")
                continue
            self._save_entry(dfd, name, st, path, prev.get(name), job)
        self.progress.dirs += 1
        self._listed(job)

    # ---- entries -----------------------------------------------------------------------------
    def _save_entry(
        self, dfd: int, name: bytes, st: os.stat_result, path: WalkPath, prev: Node | None, job: _DirJob
    ) -> None:
        """Add the entry's node to `job`: complete now, or completed later by a worker or subtree."""
        ntype = fsmeta.node_type(st.st_mode)
        if ntype is None:
            self._warn(f"{display_path(path.join(name))}: unknown file type, skipped")
            return
        node = fsmeta.node_from_stat(name, st, ntype)
        s = self.sum
        if ntype == DIR:
            self._save_subdir(dfd, name, st, path, prev, node, job)
            return
        if ntype == FILE:
            s.total_files += 1
            s.total_bytes += st.st_size
            if _unchanged(prev, st) and all(b in self.saver for b in prev.blob_ids()):
                node.content = prev.content
                node.xattrs = prev.xattrs  # an xattr change moves ctime, so these are current
                s.files_unmodified += 1
                self.progress.files += 1
                job.nodes.append(node)
                return
            self._submit_file(dfd, name, st, path, prev, node, job)
            return
        s.other += 1
        if ntype == SYMLINK:
            try:
                node.target = os.readlink(name, dir_fd=dfd)
            except OSError as e:
                self._error(path.join(name), f"cannot read symlink: {e.strerror}")
                return
        else:
            try:
                node.xattrs = fsmeta.read_xattrs(fsmeta.proc_path(dfd, name))
            except OSError:
                pass
        job.nodes.append(node)

    def _save_subdir(self, dfd, name, st, path, prev, node, job: _DirJob) -> None:
        self.sum.dirs += 1
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError:
            self._error(path.join(name), "vanished before it could be read")
            return
        except OSError as e:
            self._error(path.join(name), f"cannot open directory: {e.strerror}")
            return
        try:
            try:
                node.xattrs = fsmeta.read_xattrs(fd)
            except OSError as e:
                self._warn(f"{display_path(path.join(name))}: cannot read xattrs: {e.strerror}")
            if self.opts.one_file_system and st.st_dev != self._root_dev:
                node.subtree = self._store_tree([])  # mount point kept, its contents are not
                job.nodes.append(node)
                return
            child = _DirJob(job, len(job.nodes))
            job.nodes.append(node)
            with self._mutex:
                job.pending += 1
            prev_tree = prev.subtree if prev is not None and prev.type == DIR else b""
            self._walk_dir(fd, WalkPath(path, name), prev_tree, child)
        finally:
            os.close(fd)

    def _submit_file(self, dfd, name, st, path, prev, node, job: _DirJob) -> None:
        """Open the file here (relative to the dir fd) and queue it; small files travel in batches
        so one hand-off to a worker thread serves many files."""
        try:
            fd = _open_for_read(name, dfd)
        except FileNotFoundError:
            self._error(path.join(name), "vanished before it could be read")
            return
        except OSError as e:
            self._error(path.join(name), f"cannot open: {e.strerror}")
            return
        slot = len(job.nodes)
        job.nodes.append(node)
        with self._mutex:
            job.pending += 1
        self._batch.append((fd, st, node, path, prev, job, slot))
        self._batch_bytes += st.st_size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        self._slots.acquire()  # bounds batches in flight, and so open files and memory
        try:
            self.pool.submit(self._file_batch, batch)
        except BaseException:
            self._slots.release()
            for item in batch:
                os.close(item[0])
            raise

    def _file_batch(self, batch) -> None:
        try:
            for i, (fd, st, node, path, prev, job, slot) in enumerate(batch):
                if self._fatal is not None:
                    for rest in batch[i:]:
                        os.close(rest[0])
                    return
                if self._read_file(fd, st, node, path, prev) is None:
                    job.nodes[slot] = None
                self._entry_done(job)
        except BaseException as e:  # storage failure: the whole backup stops, nothing is committed
            if self._fatal is None:
                self._fatal = e
        finally:
            self._slots.release()

    def _chunker(self):
        c = getattr(self._tls, "chunker", None)
        if c is None:
            c = self._tls.chunker = self.repo.make_chunker()
        return c

    def _read_file(self, fd: int, st: os.stat_result, node: Node, path: WalkPath, prev: Node | None) -> Node | None:
        """Worker: chunk and store one file; returns its node or None when it could not be read."""
        try:
            try:
                try:
                    node.xattrs = fsmeta.read_xattrs(fd)
                except OSError:
                    pass
                sparse = st.st_blocks * 512 < st.st_size
                if sparse:
                    ids, chunks, size = self._store_stream(SparseReader(fd))
                elif st.st_size <= WHOLE_READ_LIMIT:
                    ids, chunks, size = self._store_whole(fd)
                else:
                    ids, chunks, size = self._store_stream(io.FileIO(fd, "rb", closefd=False))
                after = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self._error(path.join(node.name), f"read error: {e.strerror or e}")
            return None
        node.content = b"".join(ids)
        node.size = size
        s = self.sum
        with self._mutex:
            s.bytes_read += size
            if prev is None:
                s.files_new += 1
            else:
                s.files_changed += 1
            if size != st.st_size or after.st_mtime_ns != st.st_mtime_ns or after.st_size != st.st_size:
                s.changed_during_read += 1
                self.warnings.append(
                    f"{display_path(path.join(node.name))}: changed while it was read "
                    f"(saved {size} bytes as read; next backup reads it again)"
                )
        self.progress.files += 1
        if self.opts.on_file is not None:
            self.opts.on_file(FileReport(path.join(node.name), node, prev, chunks))
        return node

    def _store_stream(self, f) -> tuple[list[bytes], list[tuple[int, int]], int]:
        """Large files: this thread reads and cuts; hashing, compression and encryption of the
        chunks run on the chunk pool, a bounded window ahead, so one big file uses every core."""
        blob_id, save, prog = self.repo.blob_id, self.saver.save, self.progress

        def store(data: bytes) -> tuple[bytes, int, int]:
            bid = blob_id(data)
            return bid, len(data), save(pack.DATA, bid, data).stored_len

        ids: list[bytes] = []
        chunks: list[tuple[int, int]] = []
        window: deque = deque()
        size = 0

        def collect_one() -> None:
            nonlocal size
            bid, n, stored = window.popleft().result()
            ids.append(bid)
            chunks.append((n, stored))
            size += n
            prog.bytes += n

        for ch in self._chunker().cut_stream(f):
            # chunk.data is only valid until the next chunk: the job gets its own copy.
            window.append(self.chunk_pool.submit(store, bytes(ch.data)))
            if len(window) >= 2 * self.workers:
                collect_one()
        while window:
            collect_one()
        return ids, chunks, size

    def _store_whole(self, fd: int) -> tuple[list[bytes], list[tuple[int, int]], int]:
        """Files up to WHOLE_READ_LIMIT: one read into a per-thread buffer, then cut in memory.

        cut_stream allocates an 8 MiB buffer per call, which dominated small-file backups."""
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = memoryview(bytearray(WHOLE_READ_LIMIT + 1))
        n = 0
        while n < len(buf):
            k = os.readv(fd, [buf[n:]])  # straight into the buffer: no FileIO, no extra fstat
            if not k:
                break
            n += k
        if n == len(buf):  # grew past the limit while we read: start over, streaming
            os.lseek(fd, 0, os.SEEK_SET)
            return self._store_stream(io.FileIO(fd, "rb", closefd=False))
        data = buf[:n]
        if n < self.repo.secrets.chunker_min:  # FastCDC never cuts below its minimum
            return self._store_chunks([data] if n else [])
        return self._store_chunks(ch.data for ch in self._chunker().cut_buf(data))

    def _store_chunks(self, datas) -> tuple[list[bytes], list[tuple[int, int]], int]:
        blob_id, save, prog = self.repo.blob_id, self.saver.save, self.progress
        ids: list[bytes] = []
        chunks: list[tuple[int, int]] = []
        size = 0
        for data in datas:
            n = len(data)
            bid = blob_id(data)
            r = save(pack.DATA, bid, data)
            ids.append(bid)
            chunks.append((n, r.stored_len))
            size += n
            prog.bytes += n
        return ids, chunks, size

    def _stdin_tree(self) -> bytes:
        name = os.fsencode(self.opts.stdin_filename)
        if not name or b"/" in name or name in (b".", b".."):
            raise UsageError("--stdin-filename must be a plain file name")
        ids, _, size = self._store_stream(self.opts.stdin)
        now = time.time_ns()
        node = Node(
            name=name,
            type=FILE,
            mode=0o600,
            uid=os.getuid(),
            gid=os.getgid(),
            user=fsmeta.user_name(os.getuid()),
            group=fsmeta.group_name(os.getgid()),
            mtime_ns=now,
            ctime_ns=now,
            size=size,
            content=b"".join(ids),
        )
        s = self.sum
        s.files_new = s.total_files = 1
        s.bytes_read = s.total_bytes = size
        return self._store_tree([node])


def run_backup(repo: Repository, opts: BackupOptions, progress: BackupProgress | None = None) -> BackupSummary:
    return Backup(repo, opts, progress).run()
