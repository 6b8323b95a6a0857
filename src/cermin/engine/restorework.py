"""Restore workers: create the non-directory entries of a batch of directories and write the files.

The restorer (engine/restore.py) walks the trees, makes the directories and hands each worker
batches of (directory fd, entries). A worker creates each entry in that directory with O_EXCL /
symlinkat / mknodat (never following a symlink), writes a file's blobs at their offsets (all-zero
blobs stay holes), optionally reads it back (--verify) and sets its metadata through its own fd.

Workers are forked processes (the profile of an earlier thread version was per-file Python work and
GIL hand-offs on two cores): each has its own window of pack ranges, its own GIL and umask 0, so a
plain file costs openat(mode) + pwrite + futimens + close. Directory fds go over a Unix socket
(SCM_RIGHTS), results come back as msgpack. A worker reads a local repository itself; object-store
clients (obstore's runtime, urllib3 pools) hang after fork, so from those it reads through its
parent (backend/forked.py), which makes the requests on a thread per worker.

All members of a hard-link group go to the same worker (by key), in walk order: it makes the first
one and links the others to it, re-found from the target's fd.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
import select
import signal
import socket
import stat
import struct
import time
from collections import OrderedDict, deque

import msgspec

from cermin.backend import forked
from cermin.backend.base import Kind
from cermin.engine import fsmeta
from cermin.errors import CerminError, CorruptObject
from cermin.format import pack
from cermin.format.records import BLOCKDEV, CHARDEV, FIFO, FILE, ID_LEN, SOCKET, SYMLINK, Node
from cermin.repo.packcache import blob_from_packs
from cermin.util import display_path

# A group: (index into the batch's fds, dir path relative to the target, dir path in the snapshot,
# fresh: the directory was created by this restore, entries).
Group = tuple[int, bytes, bytes, bool, list[Node]]
_batch_decoder = msgspec.msgpack.Decoder(tuple[int, list[tuple[int, bytes, bytes, bool, list[Node]]]])
_encoder = msgspec.msgpack.Encoder()
_HEADER = struct.Struct("<II")  # payload length, number of fds
# A worker reads the blobs of up to WINDOW bytes of files at a time, one read per pack for blobs no
# more than READ_GAP apart: each stretch of a pack is read once, and only ~WINDOW is held.
WINDOW = 8 * 1024 * 1024
READ_GAP = 256 * 1024
MAX_PREFETCH_IDS = 1024  # blobs listed at once (a hostile tree may give a file any size)
READ_SERVER_WAIT = 30.0  # seconds to let a read for a worker in progress end when the pool closes
MAX_FDS = 32  # directories per batch: bounds the fds open at once (SCM_RIGHTS carries at most 253)
_COUNTERS = struct.Struct("<qq")  # per worker: files done, bytes written (progress, read by the parent)


def fork_safe(backend) -> bool:
    """Whether a forked child may read packs through this backend: local directories and memory only
    (wrappers such as retry or fault injection are plain Python around them)."""
    from cermin.backend.local import LocalBackend
    from cermin.backend.memory import MemoryBackend

    for _ in range(16):
        if isinstance(backend, LocalBackend | MemoryBackend):
            return True
        inner = getattr(backend, "inner", None)
        if inner is None:
            return False
        backend = inner
    return False


class Writer:
    """One worker's state: its window of pack ranges, the all-zero blobs seen, its hard-link groups."""

    def __init__(self, repo, tfd: int, meta: dict, verify: bool, counters, slot: int):
        self.repo = repo
        # a versioned store may hold a newer version planted over a pack: a blob that fails
        # authentication in what `load` returns is read again from the version cermin wrote
        self.versions = repo.backend.caps.versions
        self.planted: set[bytes] = set()  # packs read from their first version (versions only)
        self.reader = forked.reader(repo.backend)  # reads asked for ahead, taken when needed
        self.tfd = tfd
        self.meta = meta
        self.owner, self.xattrs, self.special = meta["owner"], meta["xattrs"], meta["special"]
        self.verify = verify
        self.counters = counters
        self.off = slot * _COUNTERS.size
        self.chown = meta["owner"] and fsmeta.IS_ROOT
        self.zero_ids: set[bytes] = set()
        # blob id -> (the bytes read, its offset in them, location, pack cipher), or the error reading it
        self.window: dict[bytes, object] = {}
        self.ciphers: dict[bytes, object] = {}  # pack id -> its cipher (from the pack's prefix)
        # snapshot (device, inode, content) -> (path relative to the target, st_dev, st_ino) of the file this
        # worker created. The content is part of the key: entries of one tree may come from several snapshots
        # (per-file restore), where one inode held different versions, and a link never changes content.
        self.links: dict[tuple[int, int, bytes], tuple[bytes, int, int]] = {}
        self.done_files = self.done_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self.files = self.other = self.bytes = self.verified = 0
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def run(self, groups: list[Group], fds: list[int]) -> tuple:
        """Restore every entry of the batch; the counts and messages of this batch."""
        self._reset()
        items = [(fds[fdi], out, snap_path, n, fresh) for fdi, out, snap_path, fresh, nodes in groups for n in nodes]
        # Windows of up to WINDOW bytes of files: their blobs are read first, a few ranges per pack,
        # and the next window's reads are asked for before this one's files are written (a store
        # served by the parent answers them meanwhile).
        windows, i, total = [], 0, len(items)
        while i < total:
            j, size = i, 0
            while j < total and (j == i or size + items[j][3].size <= WINDOW):
                size += items[j][3].size
                j += 1
            windows.append(items[i:j])
            i = j
        ahead = self._plan(self._window_ids(windows[0])) if windows else None
        for k, win in enumerate(windows):
            self._collect(ahead)
            ahead = self._plan(self._window_ids(windows[k + 1])) if k + 1 < len(windows) else None
            for it in win:
                self._entry(*it)
            self.window.clear()
        return (self.files, self.other, self.bytes, self.verified, self.errors, self.warnings)

    def _window_ids(self, items: list) -> list[bytes]:
        ids: list[bytes] = []
        for it in items:
            n = it[3]
            if n.type == FILE and n.content and n.size <= WINDOW and len(n.content) <= MAX_PREFETCH_IDS * ID_LEN:
                if n.links > 1 and (n.device, n.inode, n.content) in self.links:
                    continue  # a hard link to a file already written: nothing to read
                c = n.content
                ids.extend(c[k : k + ID_LEN] for k in range(0, len(c), ID_LEN))
        return ids

    def _fetch(self, ids: list[bytes]) -> None:
        """Read the blobs `ids` into the window now."""
        self._collect(self._plan(ids))

    def _plan(self, ids: list[bytes]) -> tuple[dict, list]:
        """Ask for the blobs `ids`: per pack, one read per run of blobs that lie close together
        (restore order is backup order, so a window's blobs are mostly neighbours). Returns the
        blobs that cannot be read (id -> error) and the reads asked for; `_collect` takes them."""
        by_pack: dict[bytes, list] = {}
        seen: dict[bytes, Exception | None] = {}
        zero = self.zero_ids
        size = 0
        for bid, loc in zip(ids, self.repo.index.lookup_many(ids), strict=True):
            if bid in seen or bid in zero:
                continue
            if size >= WINDOW:  # sizes in a tree are hostile input: the rest is read when written
                break
            if loc is None:
                seen[bid] = CorruptObject(f"blob {bid.hex()[:16]} is not in the index (missing data)")
            elif not self.repo.type_fits(loc.type, pack.DATA):
                seen[bid] = CorruptObject(f"blob {bid.hex()[:16]} has type {loc.type}, expected {pack.DATA}")
            elif problem := self.repo.entry_problem(pack.DATA, loc.length, loc.raw_length):
                seen[bid] = CorruptObject(f"blob {bid.hex()[:16]}: {problem}")  # never sizes a read
            else:
                seen[bid] = None  # listed once
                size += loc.length
                by_pack.setdefault(loc.pack_id, []).append((loc.offset, bid, loc))
        reads = []
        gaps = WINDOW  # bytes between blobs read along with them: hostile offsets could space every blob out
        for pack_id, blobs in by_pack.items():
            blobs.sort(key=lambda b: b[0])
            start = 0
            for k in range(1, len(blobs) + 1):
                gap = blobs[k][0] - (blobs[k - 1][0] + blobs[k - 1][2].length) if k < len(blobs) else -1
                if gap < 0 or gap > min(READ_GAP, gaps):
                    reads.append(self._ask(pack_id, blobs[start:k]))
                    start = k
                else:
                    gaps -= gap
        return {b: e for b, e in seen.items() if e is not None}, reads

    def _ask(self, pack_id: bytes, blobs: list) -> tuple:
        name = pack_id.hex()
        first = blobs[0][0]
        end = max(off + loc.length for off, _bid, loc in blobs)
        if pack_id not in self.ciphers and first <= READ_GAP:
            first = 0  # the pack's prefix comes with the run: no read of its own (a request on S3)
        original = pack_id in self.planted
        return pack_id, name, first, blobs, self.reader.ask(Kind.DATA, name, first, end - first, original)

    def _collect(self, planned: tuple[dict, list]) -> None:
        errors, reads = planned
        self.window.update(errors)
        for pack_id, name, first, blobs, ticket in reads:
            try:
                data = self.reader.take(ticket)
                cipher = self._cipher(pack_id, name, data[: pack.PREFIX_LEN] if first == 0 else None)
            except CerminError as e:
                for _off, bid, _loc in blobs:
                    self.window[bid] = e
                continue
            for off, bid, loc in blobs:
                self.window[bid] = (data, off - first, loc, cipher)

    def _cipher(self, pack_id: bytes, name: str, prefix: bytes | None = None):
        c = self.ciphers.get(pack_id)
        if c is None:
            if len(self.ciphers) > 4096:
                self.ciphers.clear()
            if prefix is None:
                load = self.repo.backend.load_original if pack_id in self.planted else self.repo.backend.load
                prefix = load(Kind.DATA, name, 0, pack.PREFIX_LEN)
            c = self.ciphers[pack_id] = pack.pack_cipher(self.repo.keys, prefix, f"pack {name[:12]}")
        return c

    def _blob(self, bid: bytes) -> bytes:
        """A data blob: from the window (read on demand when it is not there); when that fails, from
        the version cermin wrote (a versioned store) or another location the index knows."""
        try:
            return self._window_blob(bid)
        except CorruptObject as e:
            if self.versions:
                loc = self.repo.index.lookup(bid)
                if loc is not None and loc.pack_id not in self.planted:  # a newer version planted over it:
                    self.planted.add(loc.pack_id)  # the next windows read the version cermin wrote
                    self.ciphers.pop(loc.pack_id, None)
                try:
                    return self.repo.original_blob(bid, pack.DATA)
                except CorruptObject:
                    pass
            return self.repo.alternate_blob(bid, pack.DATA, e)

    def _window_blob(self, bid: bytes) -> bytes:
        hit = self.window.get(bid)
        if hit is None:  # not in the window: read for this use only
            self.window.pop(bid, None)
            self._fetch([bid])
            hit = self.window.pop(bid, None)
        if isinstance(hit, Exception):
            raise hit
        data, rel, loc, cipher = hit
        ct = data[rel : rel + loc.length]
        if len(ct) != loc.length:
            raise CorruptObject(f"blob {bid.hex()[:16]}: pack {loc.pack_id.hex()[:12]} is truncated")
        return self.repo.open_blob(cipher, loc.offset, loc.type, bid, ct, loc.raw_length)

    def _warn(self, snap_path: bytes, name: bytes, msg: str) -> None:
        self.warnings.append(f"{display_path(snap_path + b'/' + name)}: {msg}")

    def _err(self, snap_path: bytes, name: bytes, msg: str) -> None:
        self.errors.append(f"{display_path(snap_path + b'/' + name)}: {msg}")

    def _entry(self, dfd: int, out: bytes, snap_path: bytes, node: Node, fresh: bool) -> None:
        t = node.type
        name = node.name
        if t != FILE and t in (CHARDEV, BLOCKDEV) and not self.special:
            self._warn(snap_path, name, "device node not restored (--no-special)")
            return
        try:
            if t == FILE:
                self._file(dfd, out, snap_path, node, fresh)
                return
            try:
                _restore_special(dfd, node, fresh)
            except OSError as e:
                if t != SOCKET:
                    raise
                self._warn(snap_path, name, f"socket not restored: {_why(e)}")  # e.g. no /proc: a warning
                return
            warn = lambda m: self._warn(snap_path, name, m)  # noqa: E731
            if t == SYMLINK and fresh and node.uid == fsmeta.EUID and node.gid == fsmeta.EGID:
                # a new symlink in a directory we created already has these ids: no lchown
                os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            else:
                fsmeta.apply_path_meta(dfd, name, node, warn, **self.meta)
            self.other += 1
        except (OSError, ValueError, OverflowError) as e:  # values from a hostile tree: out of range
            self._err(snap_path, name, f"cannot restore: {_why(e)}")

    def _file(self, dfd: int, out: bytes, snap_path: bytes, node: Node, fresh: bool) -> None:
        name = node.name
        key = (node.device, node.inode, node.content)
        first = self.links.get(key) if node.links > 1 else None
        if first is not None:
            try:
                link_first(self.tfd, first, dfd, name)
                self.files += 1
                return
            except OSError:
                pass  # e.g. the first copy was replaced meanwhile: write the content again
        # The final mode at creation (the worker's umask is 0: one fchmod less per file) when no later
        # step needs the file writable (xattrs) or changes it (chown clears setuid bits; those and the
        # sticky bit are set by fchmod after it).
        mode = fsmeta.restored_mode(node, self.owner, self.special)
        chown = self.chown and not (fresh and node.uid == fsmeta.EUID and node.gid == fsmeta.EGID)
        final = not chown and not (mode & 0o7000) and not (self.xattrs and node.xattrs)
        try:
            if not fresh:
                remove_existing(dfd, name)
            flags = (os.O_RDWR if self.verify else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, mode if final else 0o600, dir_fd=dfd)
        except OSError as e:
            self._err(snap_path, name, f"cannot create file: {e.strerror}")
            return
        self.files += 1
        try:
            size = self._write(fd, node) if node.content else 0
            if size != node.size:
                raise CerminError(f"content is {size} bytes, expected {node.size}")
            if self.verify:
                self._verify(fd, node)
            if node.links > 1 and first is None:  # only a copy written whole is linked to
                st = os.fstat(fd)
                self.links[key] = (out + b"/" + name, st.st_dev, st.st_ino)
            if final:
                os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
            else:
                warn = lambda m: self._warn(snap_path, name, m)  # noqa: E731
                fsmeta.apply_file_meta(fd, node, warn, owned=fresh, **self.meta)
            self.bytes += size
            self.done_files += 1
            self.done_bytes += size
            _COUNTERS.pack_into(self.counters, self.off, self.done_files, self.done_bytes)
        except CerminError as e:
            self._err(snap_path, name, str(e))
        except (OSError, ValueError, OverflowError) as e:
            self._err(snap_path, name, f"write error: {_why(e)}")
        finally:
            os.close(fd)

    def _write(self, fd: int, node: Node) -> int:
        c = node.content
        if node.size > WINDOW or len(c) > MAX_PREFETCH_IDS * ID_LEN:
            saved, self.window = self.window, {}  # a large file: its own windows, the batch's kept
            try:
                return self._write_blobs(fd, c, True)
            finally:
                self.window = saved
        return self._write_blobs(fd, c, False)

    def _write_blobs(self, fd: int, c: bytes, big: bool) -> int:
        off = end = 0
        zero = self.zero_ids
        for i in range(0, len(c), ID_LEN):
            bid = c[i : i + ID_LEN]
            if bid in zero:
                off += self.repo.index.raw_length(bid) or 0
                continue
            if big and bid not in self.window:  # the next WINDOW bytes of its blobs
                self.window.clear()
                self._fetch(self._next_ids(c, i))
            data = self._blob(bid)
            if data[:1] != b"\0" or data.count(0) != len(data):
                _pwrite_all(fd, data, off)
                end = off + len(data)
            else:
                zero.add(bid)  # written as a hole
            off += len(data)
        if end < off:
            os.ftruncate(fd, off)  # trailing zero chunks: the size without writing them
        return off

    def _next_ids(self, c: bytes, i: int) -> list[bytes]:
        ids, size = [], 0
        raw_length = self.repo.index.raw_length
        while i < len(c) and (not ids or size < WINDOW) and len(ids) < MAX_PREFETCH_IDS:
            bid = c[i : i + ID_LEN]
            ids.append(bid)
            size += raw_length(bid) or 0
            i += ID_LEN
        return ids

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
        self.verified += 1


def link_first(tfd: int, first: tuple[bytes, int, int], dfd: int, name: bytes) -> None:
    """Hard-link `name` in dfd to the file this restore created first for the same snapshot inode.

    The source is found again from the target's fd, each directory opened with O_NOFOLLOW, and
    must still be that very file (st_dev, st_ino): a link never reaches outside the target."""
    rel, dev, ino = first
    *dirs, src = rel.split(b"/")[1:]
    opened: list[int] = []
    cur = tfd
    try:
        for d in dirs:
            cur = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            opened.append(cur)
        st = os.stat(src, dir_fd=cur, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
            raise OSError(errno.ESTALE, "the first copy of this hard link was replaced")
        remove_existing(dfd, name)
        os.link(src, name, src_dir_fd=cur, dst_dir_fd=dfd, follow_symlinks=False)
    finally:
        for fd in opened:
            os.close(fd)


def _restore_special(dfd: int, node: Node, fresh: bool) -> None:
    name = node.name
    if not fresh:
        remove_existing(dfd, name)
    if node.type == SYMLINK:
        os.symlink(node.target, name, dir_fd=dfd)
    elif node.type == FIFO:
        os.mkfifo(name, 0o600, dir_fd=dfd)
    elif node.type in (CHARDEV, BLOCKDEV):
        kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
        os.mknod(name, 0o600 | kind, node.rdev, dir_fd=dfd)
    elif node.type == SOCKET:
        fsmeta.make_socket(dfd, name)


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n


def remove_existing(dfd: int, name: bytes) -> None:
    """Unlink a non-directory `name` in dfd (never followed); a directory in the way is an error."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, "a directory is in the way")
    os.unlink(name, dir_fd=dfd)


class WorkerPacks:
    """Whole packs for one worker process (PackCache without its locks): the parent sends a worker
    the batches whose files start in the packs it already holds, so each pack is read about once.

    On an unversioned backend the pack is not hashed against its name first (Repository.load_pack
    does that only to pick the original among versions, and returns damaged bytes anyway): every
    blob is authenticated on its own, and hashing whole packs cost a quarter of a worker's time."""

    def __init__(self, repo, max_bytes: int) -> None:
        self.repo = repo
        self.max_bytes = max_bytes
        self._packs: OrderedDict[bytes, tuple[bytes, object]] = OrderedDict()
        self._size = 0
        self.loads = 0
        self._versions = repo.backend.caps.versions

    def _get(self, pack_id: bytes) -> tuple[bytes, object]:
        hit = self._packs.get(pack_id)
        if hit is not None:
            self._packs.move_to_end(pack_id)
            return hit
        name = pack_id.hex()
        repo = self.repo
        data = repo.load_pack(name) if self._versions else repo.backend.load(Kind.DATA, name)
        entry = (data, pack.pack_cipher(repo.keys, data, f"pack {name[:12]}"))
        self.loads += 1
        self._packs[pack_id] = entry
        self._size += len(data)
        while self._size > self.max_bytes and len(self._packs) > 1:
            _, (old, _c) = self._packs.popitem(last=False)
            self._size -= len(old)
        return entry

    def load_blob(self, blob_id: bytes, want_type: int | None = None) -> bytes:
        return blob_from_packs(self.repo, self._get, blob_id, want_type)


# ---- pools: the same Writer on forked processes or on threads ----------------------------------
class WorkerFailed(CerminError):
    pass


class ProcessPool:
    """Writers on forked processes; batches and results over one socketpair per worker.

    `serve_reads`: the repository, when its store cannot be used after fork (`fork_safe`): the
    workers then read through this process (backend/forked.py), one thread here per worker."""

    def __init__(self, n: int, make_writer, serve_reads=None) -> None:
        self.n = n
        self.counters = mmap.mmap(-1, _COUNTERS.size * n)  # MAP_SHARED: the workers' progress
        self.socks: list[socket.socket] = []
        self.reads: list[socket.socket] = []  # this end of each worker's read channel (serve_reads)
        self.servers: list = []
        self.pids: list[int] = []
        self.poll = select.poll()
        self.by_fd: dict[int, int] = {}
        self.pending: deque[tuple[int, tuple]] = deque()  # results read while sending
        # The children's collections then never touch (and copy) the parent's objects. A freeze already
        # in place (a backup running in this process, engine/backup) is its owner's to undo.
        outer = gc.get_freeze_count()
        gc.freeze()
        try:
            for i in range(n):
                parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                rparent, rchild = forked.pair() if serve_reads is not None else (None, None)
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    for s in (parent, rparent, *self.socks, *self.reads):
                        if s is not None:
                            s.close()
                    if rchild is not None:
                        serve_reads.backend = forked.ChildBackend(rchild, serve_reads.backend)
                    _child(i, child, make_writer, self.counters)
                child.close()
                if rchild is not None:
                    rchild.close()
                    self.reads.append(rparent)
                self.socks.append(parent)
                self.pids.append(pid)
                self.poll.register(parent.fileno(), select.POLLIN)
                self.by_fd[parent.fileno()] = i
            # Only now, with every worker forked: no child inherits a thread of this pool.
            if self.reads:
                shared = forked.SharedReads(serve_reads.backend)
                self.servers = [forked.serve(shared, r) for r in self.reads]
        except BaseException:
            self.close(kill=True)
            raise
        finally:
            if not outer:
                gc.unfreeze()

    def send(self, w: int, batch_no: int, groups: list[Group], fds: list[int]) -> None:
        """Send a batch without ever blocking on a full socket: while worker w cannot take more, the
        results of any worker are read and kept. (A blocking send could wait on a worker that is
        itself blocked sending a large result, e.g. thousands of messages naming long paths.)"""
        payload = _encoder.encode((batch_no, groups))
        sock = self.socks[w]
        parts = [(memoryview(_HEADER.pack(len(payload), len(fds))), fds), (memoryview(payload), [])]
        for view, extra in parts:
            while view:
                try:
                    if extra:
                        n = socket.send_fds(sock, [view], extra, socket.MSG_DONTWAIT)
                        extra = []
                    else:
                        n = sock.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    self._wait_writable(w)
                    continue
                except OSError:  # EPIPE: it died; say how
                    self._failed(w)
                view = view[n:]

    def _wait_writable(self, w: int) -> None:
        p = select.poll()
        for i, s in enumerate(self.socks):
            p.register(s.fileno(), select.POLLIN | (select.POLLOUT if i == w else 0))
        for fd, ev in p.poll():
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self.pending.append(self._read(self.by_fd[fd]))

    def _read(self, w: int) -> tuple[int, tuple]:
        payload = _recv(self.socks[w])[0]
        if payload is None:
            self._failed(w)
        msg = msgspec.msgpack.decode(payload)
        if msg[0] == -1:
            raise WorkerFailed(f"restore worker failed: {msg[1]}")
        return msg[0], msg[1]

    def recv(self) -> tuple[int, tuple]:
        if self.pending:
            return self.pending.popleft()
        while True:
            for fd, _ in self.poll.poll():
                return self._read(self.by_fd[fd])

    def _failed(self, w: int):
        pid = self.pids[w]
        try:
            _, status = os.waitpid(pid, 0)
            self.pids[w] = 0
        except ChildProcessError:
            status = 0
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                how = f"was killed by signal {sig} ({signal.Signals(sig).name})"
            except ValueError:
                how = f"was killed by signal {sig}"
        else:
            how = f"exited unexpectedly (status {os.WEXITSTATUS(status)})"
        raise WorkerFailed(f"restore worker {pid} {how}; the restore is incomplete")

    def progress(self) -> tuple[int, int]:
        return _sum_counters(self.counters, self.n)

    def close(self, kill: bool = False) -> None:
        """Normal end: the workers see EOF and exit. kill (an error, Ctrl-C): SIGKILL, never wait on
        a worker that is still busy."""
        for pid in self.pids:
            if kill and pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for s in self.socks:
            s.close()
        for pid in self.pids:
            if pid:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        self.pids = [0] * len(self.pids)
        for r in self.reads:  # wakes a server blocked on its worker (gone now); it closes its socket
            try:
                r.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + (0 if kill else READ_SERVER_WAIT)  # one wait for all, none when killing
        for t in self.servers:  # daemons, each closing its own socket when its read ends
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.reads, self.servers = [], []


def _child(i: int, sock: socket.socket, make_writer, counters) -> None:  # pragma: no cover - child
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which kills us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent()
        os.umask(0)
        writer = make_writer(i, counters)
        while True:
            payload, fds = _recv(sock)
            if payload is None:
                break
            try:
                batch_no, groups = _batch_decoder.decode(payload)
                res = writer.run(groups, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            _send(sock, _encoder.encode((batch_no, res)), [])
    except BaseException as e:  # a bug or a broken pipe: say it in one line and go
        code = 1
        try:
            _send(sock, _encoder.encode((-1, f"{type(e).__name__}: {e}")), [])
        except BaseException:
            pass
    finally:
        os._exit(code)


def _die_with_parent() -> None:  # pragma: no cover - child
    """PR_SET_PDEATHSIG: a worker never outlives a parent killed with SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _send(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    head = _HEADER.pack(len(payload), len(fds))
    if fds:
        sent = socket.send_fds(sock, [head], fds)
        if sent != len(head):
            sock.sendall(head[sent:])
        sock.sendall(payload)
    else:
        sock.sendall(head + payload)


def _recv(sock: socket.socket) -> tuple[bytes | None, list[int]]:
    head, fds, _flags, _ = socket.recv_fds(sock, _HEADER.size, MAX_FDS + 3)
    if not head:
        return None, fds
    while len(head) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(head))
        if not more:
            return None, fds
        head += more
    n, _nfds = _HEADER.unpack(head)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None, fds
        got += k
    return bytes(buf), fds


def _sum_counters(counters, n: int) -> tuple[int, int]:
    files = total = 0
    for i in range(n):
        f, b = _COUNTERS.unpack_from(counters, i * _COUNTERS.size)
        files += f
        total += b
    return files, total
