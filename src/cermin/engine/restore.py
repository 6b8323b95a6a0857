"""Restore a snapshot (or a subtree of it) into a directory, files written by parallel workers.

The walker creates directories and entries through dir fds (any depth works) and hands each
regular file's fd to a worker, which writes the blobs at their offsets (holes stay holes),
optionally reads the file back to verify it, and sets its metadata. Directory metadata is set
after all entries inside were created, so read-only directories restore too.

A snapshot is hostile input. Every tree's entries pass `format.names.valid_nodes` before any
filesystem call: an invalid name (empty, `.`, `..`, `/`, NUL), an unknown type or a repeated name
is skipped and counted as an error. Nothing restore creates or changes is reached through a
symlink: directories are opened with O_NOFOLLOW relative to their parent's fd, entries are
created with O_EXCL / mkdirat / symlinkat / mknodat (a Unix socket: bound under a temporary name
through /proc/self/fd/N of its directory, then linkat), metadata goes through the entry's own fd
(or lchown/lutimes for symlinks), and a hard link's source is re-found from the target's fd
component by component and must still be the very file this run created.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cermin.engine import fsmeta
from cermin.engine.progress import Progress, Reporter, Ticker
from cermin.engine.results import Line, error, error_json, fail, note, warning, warning_json
from cermin.engine.treewalk import bad_entry_message, find_node
from cermin.errors import EXIT_FATAL, CerminError, UsageError
from cermin.format import pack
from cermin.format.names import is_valid_name, valid_nodes
from cermin.format.records import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, ID_LEN, SOCKET, SYMLINK, Node, Snapshot
from cermin.repo.packcache import PackCache
from cermin.repo.repository import Repository
from cermin.util import display_path, fmt_bytes, plural

BATCH_FILES = 64
BATCH_BYTES = 8 * 1024 * 1024


@dataclass
class RestoreOptions:
    target: str
    subpath: bytes = b"/"
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    verify: bool = False
    workers: int = 0
    # For snapshots that are not trusted (see docs/restore.md):
    no_owner: bool = False  # keep the restoring user's ids (and drop setuid/setgid bits)
    no_xattrs: bool = False  # set no extended attributes
    no_special: bool = False  # drop setuid/setgid bits, do not create device nodes


@dataclass
class RestoreProgress:
    files: int = 0
    bytes: int = 0
    total_files: int = 0
    total_bytes: int = 0
    start: float = field(default_factory=time.monotonic)


@dataclass
class RestoreSummary:
    target: str
    files: int
    dirs: int
    other: int
    bytes: int
    verified_files: int
    warnings: list[str]
    errors: list[str]
    duration: float
    invalid_entries: int = 0  # tree entries skipped for an invalid name or type, or a repeated name (in errors)
    snapshot_id: str = ""
    verify: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_FATAL if self.errors else 0

    def to_json(self) -> list[dict]:
        summary = {
            "message_type": "summary",
            "snapshot_id": self.snapshot_id,
            "target": self.target,
            "files_restored": self.files,
            "dirs_restored": self.dirs,
            "other_restored": self.other,
            "bytes_restored": self.bytes,
            "files_verified": self.verified_files,
            "invalid_entries": self.invalid_entries,
            "errors": len(self.errors),
            "duration": round(self.duration, 3),
        }
        return [*map(warning_json, self.warnings), *map(error_json, self.errors), summary]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(warning, self.warnings), *map(error, self.errors)]
        lines.append(
            note(
                f"restored snapshot {self.snapshot_id[:8]} to {self.target}: {plural(self.files, 'file')}, "
                f"{plural(self.dirs, 'dir')}, {fmt_bytes(self.bytes)} in {self.duration:.2f}s"
            )
        )
        if self.verify:
            lines.append(note(f"verified {plural(self.verified_files, 'file')}"))
        if self.errors:
            lines.append(fail(f"{plural(len(self.errors), 'entry', 'entries')} could not be restored"))
        return lines


class _Match:
    def __init__(self, includes: list[str], excludes: list[str]) -> None:
        self.inc = [os.fsencode(p.rstrip("/")) for p in includes if p]
        self.exc = [os.fsencode(p.rstrip("/")) for p in excludes if p]

    @staticmethod
    def _hit(patterns: list[bytes], name: bytes, path: bytes) -> bool:
        for p in patterns:
            if b"/" in p:
                if fnmatch.fnmatchcase(path, p if p.startswith(b"/") else b"*/" + p):
                    return True
            elif fnmatch.fnmatchcase(name, p):
                return True
        return False

    def excluded(self, name: bytes, path: bytes) -> bool:
        return bool(self.exc) and self._hit(self.exc, name, path)

    def included(self, name: bytes, path: bytes) -> bool:
        return not self.inc or self._hit(self.inc, name, path)


class Restorer:
    def __init__(
        self, repo: Repository, opts: RestoreOptions, progress: RestoreProgress | None = None, trees=None
    ) -> None:
        self.repo = repo
        # Where trees come from: the repository, or anything with its `load_tree(tree_id) -> Tree` that
        # hands out repository trees plus its own (guard/perfile.py merges versions of several snapshots).
        self.trees = trees if trees is not None else repo
        self.opts = opts
        self.progress = progress or RestoreProgress()
        self.workers = opts.workers or max(2, os.cpu_count() or 2)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cermin-restore")
        self._slots = threading.BoundedSemaphore(self.workers * 2)  # batches in flight
        self._batch: list[tuple] = []
        self._batch_bytes = 0
        self._match = _Match(opts.includes, opts.excludes)
        self._mutex = threading.Lock()
        # snapshot (device, inode, content) -> (path relative to the target, st_dev, st_ino) of the file this
        # run created. The content is part of the key: entries of one tree may come from several snapshots
        # (per-file restore), where one inode held different versions, and a link never changes content.
        self._links: dict[tuple[int, int, bytes], tuple[bytes, int, int]] = {}
        self._tfd = -1
        self._meta = dict(owner=not opts.no_owner, xattrs=not opts.no_xattrs, special=not opts.no_special)
        self._zero_ids: set[bytes] = set()
        self._packs = PackCache(repo)
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.files = self.dirs = self.other = self.bytes = self.verified = self.invalid = 0

    def _err(self, path: bytes, msg: str) -> None:
        with self._mutex:
            self.errors.append(f"{display_path(path)}: {msg}")

    def _bad(self, dir_path: bytes, node: Node, why: str) -> None:
        with self._mutex:
            self.invalid += 1
            self.errors.append(bad_entry_message(dir_path, node, why))

    def run(self, snap: Snapshot) -> RestoreSummary:
        t0 = time.monotonic()
        if not self.opts.target:
            raise UsageError("the restore target must not be empty")
        parts = [c for c in self.opts.subpath.split(b"/") if c]
        if not all(is_valid_name(c) for c in parts):
            raise UsageError("the path inside the snapshot must not contain . or .. or NUL")
        subpath = b"/" + b"/".join(parts)  # canonical: include/exclude patterns see absolute paths
        parent = b"/" + b"/".join(parts[:-1]) if len(parts) > 1 else b""
        target = os.path.abspath(self.opts.target)
        node = find_node(self.trees, snap.tree, subpath)  # a path that does not resolve creates no target
        try:
            os.makedirs(target, exist_ok=True)
            tfd = self._tfd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CerminError(f"cannot use target directory {target}: {e.strerror}") from None
        try:
            if not os.access(target, os.W_OK):
                raise CerminError(f"cannot write to target directory {target}: permission denied")
            futures: list[Future] = []
            if node.type == DIR:
                self._restore_tree(tfd, b"", subpath.rstrip(b"/"), node.subtree, futures, False)
            else:
                self._restore_entry(tfd, b"", parent, node, futures, False)
            self._submit_batch(futures)
            for f in futures:
                f.result()
        finally:
            for item in self._batch:  # never handed to a worker (an error stopped the walk)
                os.close(item[0])
            self._batch = []
            self.pool.shutdown(wait=True)
            os.close(tfd)
        return RestoreSummary(
            target=target,
            files=self.files,
            dirs=self.dirs,
            other=self.other,
            bytes=self.bytes,
            verified_files=self.verified,
            warnings=self.warnings,
            errors=self.errors,
            duration=time.monotonic() - t0,
            invalid_entries=self.invalid,
        )

    # ---- walking -----------------------------------------------------------------------------
    def _restore_tree(self, dfd: int, out: bytes, snap_path: bytes, tree_id: bytes, futures, fresh: bool) -> bool:
        """Restore the entries of one tree into dfd; True when anything was restored.

        out: dfd's path relative to the target. fresh: dfd is a directory this restore created, so
        nothing is in the way of new entries."""
        try:
            nodes = valid_nodes(self.trees.load_tree(tree_id).nodes, lambda n, why: self._bad(snap_path, n, why))
        except CerminError as e:
            self._err(snap_path or b"/", str(e))
            return False
        any_restored = False
        for node in nodes:
            if self._restore_entry(dfd, out, snap_path, node, futures, fresh):
                any_restored = True
        return any_restored

    def _restore_entry(self, dfd: int, out: bytes, snap_path: bytes, node: Node, futures, fresh: bool) -> bool:
        path = snap_path + b"/" + node.name
        if self._match.excluded(node.name, path):
            return False
        selected = self._match.included(node.name, path)
        if node.type == DIR:
            if not selected and not self._wants_any(node.subtree, path):
                return False
            return self._restore_dir(dfd, out, path, node, selected, futures)
        if not selected:
            return False
        if node.type in (CHARDEV, BLOCKDEV) and self.opts.no_special:
            self._warn(path, "device node not restored (--no-special)")
            return False
        try:
            if node.type == FILE:
                return self._restore_file(dfd, out, path, node, futures, fresh)
            try:
                self._restore_special(dfd, node, fresh)
            except OSError as e:
                if node.type != SOCKET:
                    raise
                self._warn(path, f"socket not restored: {_why(e)}")  # e.g. no /proc: skipped, not a failure
                return False
            fsmeta.apply_path_meta(dfd, node.name, node, lambda m: self._warn(path, m), **self._meta)
            self.other += 1
            return True
        except (OSError, ValueError, OverflowError) as e:  # values from a hostile tree: out of range
            self._err(path, f"cannot restore: {_why(e)}")
            return False

    def _warn(self, path: bytes, msg: str) -> None:
        with self._mutex:
            self.warnings.append(f"{display_path(path)}: {msg}")

    def _wants_any(self, tree_id: bytes, snap_path: bytes) -> bool:
        """With --include, whether anything below this directory is selected (trees only)."""
        try:
            nodes = valid_nodes(self.trees.load_tree(tree_id).nodes)
        except CerminError:
            return True
        for n in nodes:
            p = snap_path + b"/" + n.name
            if self._match.excluded(n.name, p):
                continue
            if self._match.included(n.name, p) or (n.type == DIR and self._wants_any(n.subtree, p)):
                return True
        return False

    def _restore_dir(self, dfd, out, path, node, selected, futures) -> bool:
        name = node.name
        created = True
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                created = False
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=dfd)
                    os.mkdir(name, 0o700, dir_fd=dfd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            if not created:  # an existing (maybe read-only) directory: writable while we fill it
                os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)
        except OSError as e:
            self._err(path, f"cannot create directory: {e.strerror}")
            return False
        try:
            sub_match = self._match
            if selected and self._match.inc:  # everything below a selected directory is selected
                self._match = _Match([], [p.decode("utf-8", "surrogateescape") for p in self._match.exc])
            try:
                self._restore_tree(fd, out + b"/" + name, path, node.subtree, futures, created)
            finally:
                self._match = sub_match
            try:
                fsmeta.apply_file_meta(fd, node, lambda m: self._warn(path, m), **self._meta)
            except (OSError, ValueError, OverflowError) as e:
                self._warn(path, f"cannot set metadata: {_why(e)}")
            self.dirs += 1
            return True
        finally:
            os.close(fd)

    def _link(self, first: tuple[bytes, int, int], dfd: int, name: bytes) -> None:
        """Hard-link `name` in dfd to the file this run created first for the same snapshot inode.

        The source is found again from the target's fd, each directory opened with O_NOFOLLOW, and
        must still be that very file (st_dev, st_ino): a link never reaches outside the target."""
        rel, dev, ino = first
        *dirs, src = rel.split(b"/")[1:]
        opened: list[int] = []
        cur = self._tfd
        try:
            for d in dirs:
                cur = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                opened.append(cur)
            st = os.stat(src, dir_fd=cur, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
                raise OSError(errno.ESTALE, "the first copy of this hard link was replaced")
            _remove_existing(dfd, name)
            os.link(src, name, src_dir_fd=cur, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            for fd in opened:
                os.close(fd)

    def _restore_special(self, dfd: int, node: Node, fresh: bool) -> None:
        name = node.name
        if not fresh:
            _remove_existing(dfd, name)
        if node.type == SYMLINK:
            os.symlink(node.target, name, dir_fd=dfd)
        elif node.type == FIFO:
            os.mkfifo(name, 0o600, dir_fd=dfd)
        elif node.type in (CHARDEV, BLOCKDEV):
            kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
            os.mknod(name, 0o600 | kind, node.rdev, dir_fd=dfd)
        elif node.type == SOCKET:
            fsmeta.make_socket(dfd, name)

    def _restore_file(self, dfd, out, path, node: Node, futures, fresh: bool) -> bool:
        name = node.name
        key = (node.device, node.inode, node.content)
        first = self._links.get(key) if node.links > 1 else None
        if first is not None:
            try:
                self._link(first, dfd, name)
                self.files += 1
                return True
            except OSError:
                pass  # e.g. the first copy was replaced meanwhile: write the content again
        try:
            if not fresh:
                _remove_existing(dfd, name)
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        except OSError as e:
            self._err(path, f"cannot create file: {e.strerror}")
            return False
        if node.links > 1 and first is None:
            st = os.fstat(fd)
            self._links[key] = (out + b"/" + name, st.st_dev, st.st_ino)
        self._batch.append((fd, path, node, fresh))
        self._batch_bytes += node.size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch(futures)
        self.files += 1
        return True

    def _submit_batch(self, futures) -> None:
        """Files go to workers in batches: one hand-off serves many small files."""
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        self._slots.acquire()
        futures.append(self.pool.submit(self._write_batch, batch))

    def _write_batch(self, batch) -> None:
        try:
            for i, (fd, path, node, fresh) in enumerate(batch):
                try:
                    self._write_file(fd, path, node, fresh)
                except BaseException:
                    for rest in batch[i + 1 :]:
                        os.close(rest[0])
                    raise
        finally:
            self._slots.release()

    # ---- workers -----------------------------------------------------------------------------
    def _write_file(self, fd: int, path: bytes, node: Node, fresh: bool) -> None:
        try:
            off = end = 0
            c = node.content
            for i in range(0, len(c), ID_LEN):
                bid = c[i : i + ID_LEN]
                if bid in self._zero_ids:
                    off += self.repo.index.raw_length(bid) or 0
                    continue
                data = self._packs.load_blob(bid, pack.DATA)
                if data.count(0) != len(data):
                    _pwrite_all(fd, data, off)
                    end = off + len(data)
                else:
                    self._zero_ids.add(bid)  # written as a hole
                off += len(data)
                self.progress.bytes += len(data)
            if off != node.size:
                raise CerminError(f"content is {off} bytes, expected {node.size}")
            if end < off:
                os.ftruncate(fd, off)  # trailing zero chunks: the size without writing them
            if self.opts.verify:
                self._verify(fd, node)
            fsmeta.apply_file_meta(fd, node, lambda m: self._warn(path, m), owned=fresh, **self._meta)
            with self._mutex:
                self.bytes += off
            self.progress.files += 1
        except CerminError as e:
            self._err(path, str(e))
        except (OSError, ValueError, OverflowError) as e:
            self._err(path, f"write error: {_why(e)}")
        finally:
            os.close(fd)

    def _verify(self, fd: int, node: Node) -> None:
        """Read the written file back and check every chunk against its blob id."""
        off = 0
        c = node.content
        for i in range(0, len(c), ID_LEN):
            bid = c[i : i + ID_LEN]
            n = self.repo.index.raw_length(bid)
            data = os.pread(fd, n, off) if n else b""
            if self.repo.blob_id(data) != bid:
                raise CerminError(f"verification failed at offset {off}: restored bytes differ")
            off += len(data)
        with self._mutex:
            self.verified += 1


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n


def _remove_existing(dfd: int, name: bytes) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, "a directory is in the way")
    os.unlink(name, dir_fd=dfd)


def run_restore(
    repo: Repository, snap: Snapshot, opts: RestoreOptions, progress: Reporter | None = None, trees=None
) -> RestoreSummary:
    """Restore `snap`, its live counters sampled into `progress` events. Takes no lock: the caller holds
    a shared one (`cermin.ops.commands.restore` takes it and loads the index under it). `trees`: where
    the walk loads trees (default the repository; see Restorer)."""
    r = Restorer(repo, opts, trees=trees)
    c = r.progress

    def sample(t: float) -> Progress:
        return Progress(
            operation="restore",
            unit="files",
            done=c.files,
            total=c.total_files,
            bytes_done=c.bytes,
            bytes_total=c.total_bytes,
            elapsed=t,
        )

    with Ticker(progress, sample):
        return r.run(snap)
