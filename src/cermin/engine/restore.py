"""Restore a snapshot (or a subtree of it) into a directory: the trees are walked here, the entries
are created and the files written by worker processes (engine/restorework.py).

The walker creates the directories through dir fds (any depth works) and hands the other entries
of each directory to the workers in batches (a batch: up to 256 entries or 8 MiB of file data,
with the fds of their directories). A directory's metadata is set once its walk is done and every
batch with entries in it has come back, so read-only directories restore too and no mtime is
changed afterwards.

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

import fnmatch
import gc
import os
import stat
import time
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import accumulate

import msgspec

from cermin.engine import fsmeta, restorework
from cermin.engine.progress import Progress, Reporter, Ticker
from cermin.engine.results import Line, error, error_json, fail, note, warning, warning_json
from cermin.engine.treewalk import bad_entry_message, find_node
from cermin.errors import EXIT_FATAL, CerminError, CorruptObject, UsageError
from cermin.format import pack, records
from cermin.format.names import is_valid_name, valid_nodes
from cermin.format.records import DIR, FILE, ID_LEN, NODE_TYPES, SYMLINK, Node, Snapshot, Tree
from cermin.repo.repository import Repository
from cermin.util import display_path, fmt_bytes, plural

# A batch is one hand-off to a worker: large enough that its cost (a message each way) is small
# against the entries' syscalls, small enough that the last batches still spread over the workers.
BATCH_ENTRIES = 256
BATCH_BYTES = 8 * 1024 * 1024
IN_FLIGHT = 2  # batches queued per worker: one running, one waiting, so it never idles
OPEN_BATCHES = 4  # batches being filled at once (one per pack); each holds its directories' fds
TREE_PACK_CACHE = 16 * 1024 * 1024


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


class _Dir:
    """A directory this walk opened: its metadata is set when its walk is done (`walked`) and no batch
    with entries in it is out (`pending`)."""

    __slots__ = ("fd", "path", "node", "owned", "pending", "walked", "worker")

    def __init__(self, fd: int, path: bytes, node: Node | None, owned: bool) -> None:
        self.fd, self.path, self.node, self.owned = fd, path, node, owned
        self.pending = 0
        self.walked = False
        self.worker: int | None = None  # the worker that last had a batch of its entries without data


class _Batch:
    __slots__ = ("groups", "fds", "dirs", "entries", "bytes")

    def __init__(self) -> None:
        self.groups: list[list] = []  # [fd index, out, snap dir path, fresh, nodes]
        self.fds: list[int] = []
        self.dirs: list[_Dir] = []
        self.entries = self.bytes = 0

    def nodes_for(self, d: _Dir, out: bytes, snap_path: bytes, fresh: bool) -> list[Node]:
        if self.dirs and self.dirs[-1] is d:
            return self.groups[-1][4]
        nodes: list[Node] = []
        self.groups.append([len(self.fds), out, snap_path, fresh, nodes])
        self.fds.append(d.fd)
        self.dirs.append(d)
        d.pending += 1
        return nodes

    def full(self) -> bool:
        return self.entries >= BATCH_ENTRIES or self.bytes >= BATCH_BYTES or len(self.fds) >= restorework.MAX_FDS


class Restorer:
    def __init__(
        self, repo: Repository, opts: RestoreOptions, progress: RestoreProgress | None = None, trees=None
    ) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress or RestoreProgress()
        self.workers = opts.workers or max(2, os.cpu_count() or 2)
        # Forked workers read packs themselves from a local store (restorework.fork_safe), through
        # this process from an object store.
        self.local = restorework.fork_safe(repo.backend)
        # Where trees come from: the repository, or anything with its `load_tree(tree_id) -> Tree` that
        # hands out repository trees plus its own (guard/perfile.py merges versions of several snapshots).
        if trees is None:
            trees = _RepoTrees(repo) if self.local else repo
        self.trees = trees
        self._match = _Match(opts.includes, opts.excludes)
        self._meta = dict(owner=not opts.no_owner, xattrs=not opts.no_xattrs, special=not opts.no_special)
        self._pool = None
        self._batches: OrderedDict[bytes | None, _Batch] = OrderedDict()  # open batches by pack
        self._home: dict[bytes, int] = {}  # pack id -> the worker that was last sent a batch starting in it
        self._link_batches: list[_Batch] = []  # per worker: hard-link group members go to one worker
        self._inflight: dict[int, tuple[int, _Batch]] = {}
        self._load = [0] * self.workers  # batches out per worker
        self._next_batch = 0
        self._open: set[_Dir] = set()
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.files = self.dirs = self.other = self.bytes = self.verified = self.invalid = 0

    def _err(self, path: bytes, msg: str) -> None:
        self.errors.append(f"{display_path(path)}: {msg}")

    def _warn(self, path: bytes, msg: str) -> None:
        self.warnings.append(f"{display_path(path)}: {msg}")

    def _bad(self, dir_path: bytes, node: Node, why: str) -> None:
        self.invalid += 1
        self.errors.append(bad_entry_message(dir_path, node, why))

    def sample(self) -> tuple[int, int]:
        """(files, bytes) written so far, as the workers count them."""
        pool = self._pool
        return pool.progress() if pool is not None else (0, 0)

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
            tfd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CerminError(f"cannot use target directory {target}: {e.strerror}") from None
        ok = False
        # Trees decode into many small objects: with the collector running, decoding a tree of
        # 1,000 entries took 11 ms instead of 2 ms; the walk creates no cycles worth collecting.
        gc_was = gc.isenabled()
        gc.disable()
        try:
            if not os.access(target, os.W_OK):
                raise CerminError(f"cannot write to target directory {target}: permission denied")
            self._start(tfd)
            root = _Dir(tfd, b"", None, False)  # the target itself: its metadata is left alone
            if node.type == DIR:
                self._restore_tree(root, b"", subpath.rstrip(b"/"), node.subtree, False)
            else:
                self._restore_nodes(root, b"", parent, [node], False)
            self._flush_all()
            while self._inflight:
                self._collect()
            ok = True
        finally:
            if self._pool is not None:
                self._pool.close(kill=not ok)
            for d in self._open:  # never finished: an error stopped the walk
                os.close(d.fd)
            self._open.clear()
            os.close(tfd)
            if gc_was:
                gc.enable()
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

    def _start(self, tfd: int) -> None:
        repo, meta, verify = self.repo, self._meta, self.opts.verify

        def make_writer(i: int, counters) -> restorework.Writer:  # in the worker
            return restorework.Writer(repo, tfd, meta, verify, counters, i)

        n = self.workers
        self._link_batches = [_Batch() for _ in range(n)]
        self._pool = restorework.ProcessPool(n, make_writer, None if self.local else repo)

    # ---- walking -----------------------------------------------------------------------------
    def _restore_tree(self, d: _Dir, out: bytes, snap_path: bytes, tree_id: bytes, fresh: bool) -> None:
        """Restore the entries of one tree into directory d.

        out: d's path relative to the target. fresh: d is a directory this restore created, so
        nothing is in the way of new entries."""
        try:
            nodes = self.trees.load_tree(tree_id).nodes
        except CerminError as e:
            self._err(snap_path or b"/", str(e))
            return
        if not all_valid(nodes):
            nodes = valid_nodes(nodes, lambda n, why: self._bad(snap_path, n, why))
        self._restore_nodes(d, out, snap_path, nodes, fresh)

    def _restore_nodes(self, d: _Dir, out: bytes, snap_path: bytes, nodes: list[Node], fresh: bool) -> None:
        m = self._match
        others: list[Node] = []
        subdirs: list[tuple[Node, bool]] = []
        if not m.inc and not m.exc:
            for n in nodes:
                if n.type == DIR:
                    subdirs.append((n, True))
                else:
                    others.append(n)
        else:
            for n in nodes:
                path = snap_path + b"/" + n.name
                if m.excluded(n.name, path):
                    continue
                selected = m.included(n.name, path)
                if n.type == DIR:
                    if selected or self._wants_any(n.subtree, path):
                        subdirs.append((n, selected))
                elif selected:
                    others.append(n)
        if others:
            self._queue(d, out, snap_path, fresh, others)
        for n, selected in subdirs:
            self._restore_dir(d, out, snap_path + b"/" + n.name, n, selected, fresh)

    def _queue(self, d: _Dir, out: bytes, snap_path: bytes, fresh: bool, nodes: list[Node]) -> None:
        """Hand these entries of directory d to the workers, in batches by the pack a file starts in
        (backups fill several packs at once, so neighbouring files alternate between packs)."""
        if any([n.links > 1 for n in nodes]):
            for n in nodes:
                if n.links > 1 and n.type == FILE:
                    self._queue_linked(d, out, snap_path, fresh, n)
            nodes = [n for n in nodes if not (n.links > 1 and n.type == FILE)]
        firsts = [n.content[:ID_LEN] for n in nodes if n.content and n.type == FILE]
        locs = iter(self.repo.index.lookup_many(firsts))
        keys = []
        for n in nodes:
            loc = next(locs) if n.content and n.type == FILE else None
            keys.append(loc.pack_id if loc is not None else None)
        i, total = 0, len(nodes)
        while i < total:
            key, j = keys[i], i + 1
            while j < total and keys[j] == key:
                j += 1
            self._add_run(key, d, out, snap_path, fresh, nodes[i:j])
            i = j

    def _add_run(self, key, d: _Dir, out: bytes, snap_path: bytes, fresh: bool, nodes: list[Node]) -> None:
        cum = list(accumulate([n.size for n in nodes]))
        i, total = 0, len(nodes)
        while i < total:
            b = self._batch_for(key)
            base = cum[i - 1] if i else 0
            # up to the entry that fills the batch's bytes, and within its entry count (sliced, not
            # looped over: a directory may hold a million entries)
            j = min(total, i + BATCH_ENTRIES - b.entries, bisect_right(cum, base + BATCH_BYTES - b.bytes, i) + 1)
            b.nodes_for(d, out, snap_path, fresh).extend(nodes[i:j])
            b.entries += j - i
            b.bytes += cum[j - 1] - base
            i = j
            if b.full():
                del self._batches[key]
                self._flush(b, key=key)

    def _batch_for(self, key) -> _Batch:
        b = self._batches.get(key)
        if b is not None:
            self._batches.move_to_end(key)
            return b
        if len(self._batches) >= OPEN_BATCHES:
            old_key, old = self._batches.popitem(last=False)
            self._flush(old, key=old_key)
        b = self._batches[key] = _Batch()
        return b

    def _queue_linked(self, d: _Dir, out: bytes, snap_path: bytes, fresh: bool, n: Node) -> None:
        w = hash((n.device, n.inode, n.content)) % self.workers
        b = self._link_batches[w]
        b.nodes_for(d, out, snap_path, fresh).append(n)
        b.entries += 1
        b.bytes += n.size
        if b.full():
            self._flush(b, w)
            self._link_batches[w] = _Batch()

    def _flush_all(self) -> None:
        while self._batches:
            key, b = self._batches.popitem(last=False)
            self._flush(b, key=key)
        for w, b in enumerate(self._link_batches):
            self._flush(b, w)
            self._link_batches[w] = _Batch()

    def _flush(self, b: _Batch, w: int | None = None, key: bytes | None = None) -> None:
        """Send a batch to worker w; else to the worker that last had its pack (`key`) while that one
        has room, or to the least busy one if it is idle or the pack is new; else wait for results."""
        if not b.entries:
            return
        load = self._load
        while True:
            if w is not None:
                k = w
                if load[k] < IN_FLIGHT:
                    break
            elif key is None:
                # Entries without data (empty files, symlinks, devices) cost a create each: two workers
                # creating in one directory contend for its lock (on ext4 after mass deletions, seconds
                # of spinning per thousand files), so a directory's such entries stay with one worker,
                # the one its last directory went to (a batch's first ones end where earlier batches were).
                home = b.dirs[-1].worker
                k = home if home is not None else min(range(self.workers), key=load.__getitem__)
                if load[k] < IN_FLIGHT:
                    for d in b.dirs:
                        if d.worker is None or d is b.dirs[-1]:
                            d.worker = k
                    break
            else:
                home = self._home.get(key)
                if home is not None and load[home] < IN_FLIGHT:
                    k = home
                    break
                k = min(range(self.workers), key=load.__getitem__)
                if load[k] == 0 or (home is None and load[k] < IN_FLIGHT):
                    break  # an idle worker reads the pack again rather than wait
            self._collect()
        if key is not None:
            self._home[key] = k
        no = self._next_batch
        self._next_batch += 1
        self._inflight[no] = (k, b)
        load[k] += 1
        assert self._pool is not None
        self._pool.send(k, no, b.groups, b.fds)
        b.groups = []  # only its directories are needed until it comes back

    def _collect(self) -> None:
        """Take one batch's result; finish the directories that were waiting only for it."""
        assert self._pool is not None
        no, res = self._pool.recv()
        k, b = self._inflight.pop(no)
        self._load[k] -= 1
        files, other, nbytes, verified, errors, warnings = res
        self.files += files
        self.other += other
        self.bytes += nbytes
        self.verified += verified
        self.errors.extend(errors)
        self.warnings.extend(warnings)
        for d in b.dirs:
            d.pending -= 1
            if not d.pending and d.walked:
                self._finish(d)

    def _finish(self, d: _Dir) -> None:
        if d.node is None:
            return  # the target
        try:
            fsmeta.apply_file_meta(d.fd, d.node, lambda m: self._warn(d.path, m), owned=d.owned, **self._meta)
        except (OSError, ValueError, OverflowError) as e:
            self._warn(d.path, f"cannot set metadata: {_why(e)}")
        finally:
            self._open.discard(d)
            os.close(d.fd)

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

    def _restore_dir(self, parent: _Dir, out: bytes, path: bytes, node: Node, selected: bool, fresh: bool) -> None:
        name = node.name
        dfd = parent.fd
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
            return
        # A directory made in one this restore created (mode 0o700, no setgid bit yet) already has
        # our ids: no chown needed.
        d = _Dir(fd, path, node, created and fresh)
        self._open.add(d)
        sub_match = self._match
        if selected and self._match.inc:  # everything below a selected directory is selected
            self._match = _Match([], [p.decode("utf-8", "surrogateescape") for p in self._match.exc])
        try:
            self._restore_tree(d, out + b"/" + name, path, node.subtree, created)
        finally:
            self._match = sub_match
        d.walked = True
        self.dirs += 1
        if not d.pending:
            self._finish(d)


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


class _RepoTrees:
    """Trees of a local repository, read through a cache of whole tree packs and not kept once
    decoded: the repository's own tree cache reads each tree in two calls and keeps 256 decoded
    trees, ~80 MiB when they hold 1,000 entries each. (Object stores keep the repository's path:
    range reads, no packs held.)"""

    def __init__(self, repo: Repository) -> None:
        self.packs = restorework.WorkerPacks(repo, TREE_PACK_CACHE)

    def load_tree(self, tree_id: bytes) -> Tree:
        raw = self.packs.load_blob(tree_id, pack.TREE)
        try:
            return records.tree_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise CorruptObject(f"tree {tree_id.hex()[:16]} cannot be decoded ({e})") from None


_NODE_TYPES = frozenset(NODE_TYPES)


def all_valid(nodes: list[Node]) -> bool:
    """True only when `format.names.valid_nodes` would keep every entry: the same conditions, checked
    over the whole tree at once in C (joins, sets) instead of three calls per entry. Anything else,
    or anything unusual (a name that is not bytes), is left to valid_nodes, which names the problem."""
    try:
        names = [n.name for n in nodes]
        seen = set(names)
        if len(seen) != len(names) or b"" in seen or b"." in seen or b".." in seen:
            return False
        if set(map(type, names)) - {bytes}:
            return False
        joined = b"".join(names)
        if b"/" in joined or b"\x00" in joined:
            return False
        types = {n.type for n in nodes}
        if types - _NODE_TYPES:
            return False
        if SYMLINK in types:
            for n in nodes:
                if n.type == SYMLINK and (not n.target or type(n.target) is not bytes or b"\x00" in n.target):
                    return False
        return True
    except TypeError:  # an unhashable type or name
        return False


def run_restore(
    repo: Repository, snap: Snapshot, opts: RestoreOptions, progress: Reporter | None = None, trees=None
) -> RestoreSummary:
    """Restore `snap`, its live counters sampled into `progress` events. Takes no lock: the caller holds
    a shared one (`cermin.ops.commands.restore` takes it and loads the index under it). `trees`: where
    the walk loads trees (default the repository; see Restorer)."""
    r = Restorer(repo, opts, trees=trees)
    c = r.progress

    def sample(t: float) -> Progress:
        files, nbytes = r.sample()
        return Progress(
            operation="restore",
            unit="files",
            done=files,
            total=c.total_files,
            bytes_done=nbytes,
            bytes_total=c.total_bytes,
            elapsed=t,
        )

    with Ticker(progress, sample):
        return r.run(snap)
