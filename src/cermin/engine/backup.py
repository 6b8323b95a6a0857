"""The backup pipeline: walk, skip unchanged files, chunk/hash/compress/encrypt in worker threads.

The walker (calling thread) lists directories through dir fds and opens every changed file; a
bounded pool of workers reads, chunks and stores file contents while the walker goes on. A
directory's tree blob is stored once all of its entries are done, and the snapshot is written
only after every pack and index is durable (BlobSaver.flush).
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from cermin import __version__
from cermin.engine import fsmeta
from cermin.errors import CerminError, UsageError
from cermin.format import pack, records
from cermin.format.records import DIR, FILE, SYMLINK, Node, Snapshot, SnapshotSummary, Tree
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.repo.snapshots import SnapshotRef, list_snapshots, resolve
from cermin.util import display_path, now_rfc3339, username

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
_O_NOATIME = getattr(os, "O_NOATIME", 0)


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


class _Path:
    """Path of the directory being walked, built only when a message needs it."""

    __slots__ = ("parent", "name")

    def __init__(self, parent: _Path | None, name: bytes) -> None:
        self.parent = parent
        self.name = name

    def join(self, name: bytes) -> bytes:
        parts = [name]
        p: _Path | None = self
        while p is not None:
            parts.append(p.name)
            p = p.parent
        return b"/".join(reversed(parts)).replace(b"//", b"/")


class _Excluder:
    def __init__(self, patterns: list[str]) -> None:
        self.base: list[bytes] = []
        self.full: list[bytes] = []
        for p in patterns:
            b = os.fsencode(p.rstrip("/"))
            if not b:
                continue
            if b.startswith(b"/"):
                self.full.append(b)
            elif b"/" in b:
                self.full.append(b"*/" + b)
            else:
                self.base.append(b)

    def __bool__(self) -> bool:
        return bool(self.base or self.full)

    def excluded(self, name: bytes, path: bytes) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.base) or any(
            fnmatch.fnmatchcase(path, p) for p in self.full
        )


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
        self.saver = BlobSaver(repo, builders=self.workers, dry_run=opts.dry_run)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cermin-file")
        self._slots = threading.BoundedSemaphore(self.workers * 4)
        self._excl = _Excluder(opts.excludes)
        self._tls = threading.local()
        self._mutex = threading.Lock()
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.sum = SnapshotSummary()
        self._root_dev = 0

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
        if None in tree:  # "/" itself
            fd = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._root_dev = os.fstat(fd).st_dev
                return self._save_dir(fd, _Path(None, b""), parent_tree)
            finally:
                os.close(fd)
        prev = self._child_nodes(parent_tree)
        nodes = []
        for name in sorted(tree):
            full = prefix + b"/" + name
            sub = tree[name]
            if sub is None:
                dfd = os.open(prefix or b"/", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    self._root_dev = st.st_dev
                    node = self._save_entry(dfd, name, st, _Path(None, prefix), prev.get(name))
                finally:
                    os.close(dfd)
                if isinstance(node, Future):
                    node = node.result()
                if node is not None:
                    nodes.append(node)
                continue
            st = os.lstat(full)
            node = fsmeta.node_from_stat(name, st, DIR)
            p = prev.get(name)
            node.subtree = self._save_virtual(sub, full, p.subtree if p and p.type == DIR else b"")
            nodes.append(node)
        return self._store_tree(nodes)

    def _save_dir(self, dfd: int, path: _Path, parent_tree: bytes) -> bytes:
        prev = self._child_nodes(parent_tree)
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(dfd))
        except OSError as e:
            self._error(path.join(b""), f"cannot list directory: {e.strerror}")
            names = []
        if self.opts.exclude_caches and CACHEDIR_TAG in names and self._is_cache_dir(dfd):
            names = [CACHEDIR_TAG]
        slots: list[Node | Future | None] = []
        for name in names:
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
            slots.append(self._save_entry(dfd, name, st, path, prev.get(name)))
        nodes = []
        for s in slots:
            if isinstance(s, Future):
                s = s.result()
            if s is not None:
                nodes.append(s)
        self.progress.dirs += 1
        return self._store_tree(nodes)

    def _is_cache_dir(self, dfd: int) -> bool:
        try:
            fd = os.open(CACHEDIR_TAG, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        except OSError:
            return False
        try:
            return os.read(fd, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        finally:
            os.close(fd)

    # ---- entries -----------------------------------------------------------------------------
    def _save_entry(self, dfd: int, name: bytes, st: os.stat_result, path: _Path, prev: Node | None):
        """Return a Node, a Future of a Node (file being read), or None when the entry is skipped."""
        ntype = fsmeta.node_type(st.st_mode)
        if ntype is None:
            self._warn(f"{display_path(path.join(name))}: unknown file type, skipped")
            return None
        node = fsmeta.node_from_stat(name, st, ntype)
        s = self.sum
        if ntype == DIR:
            return self._save_subdir(dfd, name, st, path, prev, node)
        if ntype == FILE:
            s.total_files += 1
            s.total_bytes += st.st_size
            if _unchanged(prev, st) and all(b in self.saver for b in prev.blob_ids()):
                node.content = prev.content
                node.xattrs = prev.xattrs  # an xattr change moves ctime, so these are current
                s.files_unmodified += 1
                self.progress.files += 1
                return node
            return self._submit_file(dfd, name, st, path, prev, node)
        s.other += 1
        if ntype == SYMLINK:
            try:
                node.target = os.readlink(name, dir_fd=dfd)
            except OSError as e:
                self._error(path.join(name), f"cannot read symlink: {e.strerror}")
                return None
        else:
            try:
                node.xattrs = fsmeta.read_xattrs(fsmeta.proc_path(dfd, name))
            except OSError:
                pass
        return node

    def _save_subdir(self, dfd, name, st, path, prev, node) -> Node | None:
        self.sum.dirs += 1
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError:
            self._error(path.join(name), "vanished before it could be read")
            return None
        except OSError as e:
            self._error(path.join(name), f"cannot open directory: {e.strerror}")
            return None
        try:
            try:
                node.xattrs = fsmeta.read_xattrs(fd)
            except OSError as e:
                self._warn(f"{display_path(path.join(name))}: cannot read xattrs: {e.strerror}")
            if self.opts.one_file_system and st.st_dev != self._root_dev:
                node.subtree = self._store_tree([])  # mount point kept, its contents are not
                return node
            prev_tree = prev.subtree if prev is not None and prev.type == DIR else b""
            node.subtree = self._save_dir(fd, _Path(path, name), prev_tree)
            return node
        finally:
            os.close(fd)

    def _submit_file(self, dfd, name, st, path, prev, node) -> Future | None:
        self._slots.acquire()
        try:
            fd = _open_for_read(name, dfd)
        except FileNotFoundError:
            self._slots.release()
            self._error(path.join(name), "vanished before it could be read")
            return None
        except OSError as e:
            self._slots.release()
            self._error(path.join(name), f"cannot open: {e.strerror}")
            return None
        try:
            return self.pool.submit(self._read_file, fd, st, node, path, prev)
        except BaseException:
            os.close(fd)
            self._slots.release()
            raise

    def _chunker(self):
        c = getattr(self._tls, "chunker", None)
        if c is None:
            c = self._tls.chunker = self.repo.make_chunker()
        return c

    def _read_file(self, fd: int, st: os.stat_result, node: Node, path: _Path, prev: Node | None) -> Node | None:
        """Worker: chunk and store one file; returns its node or None when it could not be read."""
        try:
            with io.FileIO(fd, "rb", closefd=True) as f:
                try:
                    node.xattrs = fsmeta.read_xattrs(fd)
                except OSError:
                    pass
                sparse = st.st_blocks * 512 < st.st_size
                ids, chunks, size = self._store_stream(_SparseReader(fd) if sparse else f)
                after = os.fstat(fd)
        except OSError as e:
            self._error(path.join(node.name), f"read error: {e.strerror or e}")
            return None
        finally:
            self._slots.release()
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
        blob_id, save, prog = self.repo.blob_id, self.saver.save, self.progress
        ids: list[bytes] = []
        chunks: list[tuple[int, int]] = []
        size = 0
        for ch in self._chunker().cut_stream(f):
            data = ch.data  # valid until the next chunk: hashed and stored before moving on
            bid = blob_id(data)
            r = save(pack.DATA, bid, data)
            ids.append(bid)
            chunks.append((ch.length, r.stored_len))
            size += ch.length
            prog.bytes += ch.length
        return ids, chunks, size

    def _stdin_tree(self) -> bytes:
        name = os.fsencode(self.opts.stdin_filename)
        if not name or b"/" in name:
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


class _SparseReader:
    """readinto() that fills holes with zeros from memory instead of reading them (SEEK_DATA/SEEK_HOLE)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self._zeros = b""

    def readinto(self, b) -> int:
        n, pos, fd = len(b), self.pos, self.fd
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:  # ENXIO: only a hole (or nothing) after pos
            if e.errno != errno.ENXIO:
                raise
            data = os.fstat(fd).st_size
            if data <= pos:
                return 0
        if data > pos:
            k = min(n, data - pos)
            if len(self._zeros) < k:
                self._zeros = bytes(max(k, 1 << 22))
            b[:k] = memoryview(self._zeros)[:k]
        else:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            k = os.preadv(fd, [b[: min(n, hole - pos)]], pos) if hole > pos else 0
        self.pos += k
        return k


def _open_for_read(name: bytes, dfd: int) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(name, flags | _O_NOATIME, dir_fd=dfd)
    except PermissionError:
        fd = os.open(name, flags, dir_fd=dfd)  # O_NOATIME needs ownership
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(0, "replaced by a non-regular file")
    return fd


def run_backup(repo: Repository, opts: BackupOptions, progress: BackupProgress | None = None) -> BackupSummary:
    return Backup(repo, opts, progress).run()
