"""The parent's side of reading files: batches of files go to the worker processes (`workers`); their
chunks become blobs in packs, their results nodes, counters and observer events.

The walker calls `submit` for a changed file; files travel in batches, with their directories' fds,
so one message serves many, and a worker opens each file relative to its directory. A file of size 0
on a file system that reports sizes truthfully is finished on the spot (`fstype.EmptyFiles`). A
stream from stdin is cut here (`chunks.Cutter`). Everything here runs on the walker's thread: the
only other threads of the parent upload packs.
"""

from __future__ import annotations

import os
import time

from cermin.backend.base import Kind
from cermin.engine import fsmeta
from cermin.engine.backup.chunks import Cutter
from cermin.engine.backup.ownpacks import Flush, Flushed, Grant, Sealed, grant_bits
from cermin.engine.backup.state import BackupState
from cermin.engine.backup.trees import DirJob, Trees, node_fingerprint
from cermin.engine.backup.workers import MAX_FDS, Batch, Done, FileResult, Part, Workers
from cermin.engine.fsread import WalkPath
from cermin.engine.fstype import EmptyFiles
from cermin.engine.observer import FileRead, StdinRead
from cermin.errors import CerminError
from cermin.format import crypto, pack
from cermin.format.records import FILE, Node
from cermin.util import display_path

BATCH_FILES = 64  # changed files handed to a worker at once ...
BATCH_BYTES = 4 * 1024 * 1024  # ... or fewer when they add up to this much
INFLIGHT = 2  # batches queued per worker: one being read, one waiting (bounds open files and memory)


def fds_in_flight_limit() -> int:
    """Files this process may hand out at once (a worker holds each open while its batch is queued, and
    the directories' descriptors in flight over a Unix socket count
    against RLIMIT_NOFILE (the kernel refuses more with ETOOMANYREFS), so raise the soft limit to the
    hard one, as Go programs do, and use half of it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return max(BATCH_FILES, soft // 2)


class _Pending:
    """A file handed to a worker: where its node goes, and the chunks stored for it so far."""

    __slots__ = ("node", "path", "prev", "job", "slot", "stat", "dir", "ids", "sizes", "before")

    def __init__(self, node: Node, path: WalkPath, prev: Node | None, job: DirJob, slot: int, st, d=0) -> None:
        self.dir = d  # index of its directory's fd in the batch
        self.before = None  # with an observer: the previous version's (size, stored size, fingerprint)
        self.node = node
        self.path = path
        self.prev = prev
        self.job = job
        self.slot = slot
        self.stat = st
        self.ids: list[bytes] = []
        self.sizes: list[tuple[int, int]] = []  # (raw, stored) per chunk: stored is 0 for a known blob


class FileSaver:
    def __init__(self, state: BackupState, trees: Trees, workers: int) -> None:
        self.st = state
        self.trees = trees
        self.workers = workers
        self._pool: Workers | None = None
        self._batch: list[_Pending] = []
        self._fds: list[int] = []  # the current batch's directories (duplicated: the walker closes its own)
        # directory (its job: fd numbers are reused once the walker closes one) -> index in _fds
        self._dirs: dict[DirJob, int] = {}
        self._batch_bytes = 0
        self._inflight: dict[int, tuple[int, list[_Pending]]] = {}  # batch id -> (worker, files)
        self._load = [0] * workers
        self._next = 0
        self._out = 0  # files handed to workers and not done yet
        self._max_out = fds_in_flight_limit()
        self.empty = EmptyFiles()  # which size-0 files need no reading
        self.own_packs = False  # the workers write the new chunks they are granted (ownpacks.py)
        self._flushing = 0  # workers asked to write out their packs and not done yet

    def start(self) -> None:
        """Fork the workers: before the walk, so they inherit as few of this process's threads' locks
        in use as possible (a worker uses only OpenSSL's, to encrypt its packs, as restore workers
        do) and the index as loaded."""
        if self._pool is None:
            obs = self.st.obs
            self.own_packs = self._store_takes_packs_in_place()
            self._pool = Workers(
                self.st.repo, self.workers, self.st.fingerprint, obs.assess if obs else None, self.own_packs
            )

    def _store_takes_packs_in_place(self) -> bool:
        """Workers pack their own chunks only into a store that spools in place (a local directory; never
        through a wrapper, whose `save` must see every write) and when something is to be written."""
        saver = self.st.saver
        if saver.dry_run or saver.ignore_index or not saver.write_index:
            return False
        probe = self.st.repo.backend.spool(Kind.DATA)
        if probe is None:
            return False
        probe.discard()
        return not probe.whole

    def close(self, abort: bool = False) -> None:
        """Stop the workers; `abort` (the backup failed or was interrupted) stops them at once (SIGTERM),
        and removes the spool files of any pack they were writing."""
        for fd in self._fds:
            os.close(fd)
        self._fds, self._batch, self._dirs = [], [], {}
        if self._pool is not None:
            abort = abort or bool(self._inflight) or bool(self._flushing)
            self._pool.close(abort=abort)
            if abort and self.own_packs:  # a worker stopped anywhere may have left its spool file
                for owner in self._pool.owners:
                    self.st.repo.backend.drop_spools(owner)
            self._pool = None

    # ---- walker side -------------------------------------------------------------------------
    def submit(
        self, dfd: int, name: bytes, st: os.stat_result, path: WalkPath, prev, node: Node, job: DirJob, slot=None
    ) -> None:
        """Queue a file of the directory open as `dfd`; a worker opens it there (never following a
        symlink) and `node`, appended to `job` (or already at `slot`), is completed from its result."""
        d = self._dirs.get(job)
        if d is None:
            d = self._dirs[job] = len(self._fds)
            self._fds.append(os.dup(dfd))
        if slot is None:
            slot = len(job.nodes)
            job.nodes.append(node)
        self.trees.add_pending(job)
        p = _Pending(node, path, prev, job, slot, st, d)
        if prev is not None and self.st.obs is not None:
            p.before = self._before(prev)
        self._batch.append(p)
        self._batch_bytes += st.st_size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES or len(self._fds) >= MAX_FDS:
            self.submit_batch()

    def save_empty(self, dfd: int, name: bytes, st: os.stat_result, path: WalkPath, prev, node: Node) -> Node:
        """A file `self.empty` knows is empty: nothing to read, only its extended attributes (through
        /proc, not followed)."""
        try:
            node.xattrs = fsmeta.read_xattrs(fsmeta.proc_path(dfd, name))
        except OSError:
            pass
        node.content = b""
        self._complete(node, path, prev, [], 0, (b"", -1.0) if self.st.fingerprint else None, False)
        return node

    def submit_batch(self) -> None:
        if not self._batch:
            return
        self.start()
        while min(self._load) >= INFLIGHT or (self._out and self._out + len(self._batch) > self._max_out):
            self._pump(block=True)
        w = self._load.index(min(self._load))
        bid, self._next = self._next, self._next + 1
        batch, fds = self._batch, self._fds
        self._batch, self._fds, self._dirs, self._batch_bytes = [], [], {}, 0
        try:
            files = [(p.dir, p.node.name, p.stat.st_size, p.stat.st_blocks, p.before) for p in batch]
            self._pool.send(w, Batch(bid, files), fds)
        finally:
            for fd in fds:  # the worker holds its own copies now
                os.close(fd)
        self._inflight[bid] = (w, batch)
        self._load[w] += 1
        self._out += len(batch)

    def poll(self) -> None:
        """Take the results that are ready, without waiting (the walker calls it now and then)."""
        if self._inflight:
            self._pump(block=False)

    def drain(self) -> None:
        """Send the partial batch and wait until every file handed out is done."""
        self.submit_batch()
        while self._inflight:
            self._pump(block=True)

    def flush_packs(self) -> None:
        """Every file is done (`drain`): the workers write out the packs they are filling, which are
        indexed as they report them."""
        if self.own_packs and self._pool is not None:
            for w in range(len(self._pool)):
                self._pool.send(w, Flush())
                self._flushing += 1
            while self._flushing:
                self._pump(block=True)

    def _pump(self, block: bool) -> None:
        for w, msg in self._pool.replies(block):
            if isinstance(msg, Part):
                granted: list[bool] = []
                self._store(self._inflight[msg.batch][1][msg.index], msg.chunks, granted)
                self._answer(w, granted)
            elif isinstance(msg, Done):
                _, batch = self._inflight.pop(msg.batch)
                self._load[w] -= 1
                self._out -= len(batch)
                granted = []
                for p, r in zip(batch, msg.files, strict=True):
                    self._file_done(p, r, granted)
                self._answer(w, granted)
            elif isinstance(msg, Sealed):
                self.st.saver.adopt(msg.pack_id, msg.blobs, msg.size)
            elif isinstance(msg, Flushed):
                self.st.saver.take_back(msg.chunks)
                self._flushing -= 1

    def _answer(self, w: int, granted: list[bool]) -> None:
        """Which of a message's claims worker `w` is to store (the others are stored or being stored)."""
        if granted:
            self._pool.send(w, Grant(grant_bits(granted)))

    # ---- results -----------------------------------------------------------------------------
    def _store(self, p: _Pending, chunks: list, granted: list[bool] | None = None) -> None:
        """A file's next chunks; a claim (a payload's length: the worker holds it) is decided here."""
        saver, prog = self.st.saver, self.st.progress
        for bid, raw, payload in chunks:
            if payload is None:
                if bid not in saver:  # a snapshot must never name a blob nothing stored
                    raise CerminError(f"backup worker sent no data for blob {bid.hex()[:16]}, which is not stored")
                stored = 0  # the worker found it in the index, or sent it for an earlier file
            elif payload.__class__ is int:
                ok = saver.grant(bid, raw, payload)
                granted.append(ok)
                stored = payload if ok else 0
            else:
                stored = saver.save_payload(pack.DATA, bid, raw, payload).stored_len
            p.ids.append(bid)
            p.sizes.append((raw, stored))
            prog.bytes += raw

    def _file_done(self, p: _Pending, r: FileResult, granted: list[bool]) -> None:
        node, st = p.node, p.stat
        if r.error:
            self.st.error(p.path.join(node.name), r.error)
            p.job.nodes[p.slot] = None
            granted.extend(False for *_, c in r.chunks if c.__class__ is int)  # none: nothing is stored
        else:
            self._store(p, r.chunks, granted)
            node.xattrs = r.xattrs
            node.content = b"".join(p.ids)
            # Grown, shrunk or touched while read, or another file renamed over the name since the
            # walker's stat (same size and time, other inode): saved as read, read again next time.
            changed = (
                r.size != st.st_size
                or r.after_mtime_ns != st.st_mtime_ns
                or r.after_size != st.st_size
                or r.after_ino != st.st_ino
            )
            facts = (r.head, r.entropy) if r.facts else None
            self._complete(node, p.path, p.prev, p.sizes, r.size, facts, changed, p.before, r.assessment)
        self.trees.entry_done(p.job)

    def _complete(
        self, node: Node, path: WalkPath, prev, sizes, size: int, facts, changed: bool, before=None, assessment=None
    ) -> None:
        node.size = size
        s = self.st.sum
        s.bytes_read += size
        if prev is None:
            s.files_new += 1
        else:
            s.files_changed += 1
        if changed:
            s.changed_during_read += 1
            self.st.warn(
                f"{display_path(path.join(node.name))}: changed while it was read "
                f"(saved {size} bytes as read; next backup reads it again)"
            )
        self.st.progress.files += 1
        if self.st.obs is not None:
            if prev is not None and before is None:
                before = self._before(prev)
            self._observe(path.join(node.name), node, sizes, facts, changed, before, assessment)

    def _observe(self, path: bytes, node: Node, sizes, facts, changed: bool, before, assessment=None) -> FileRead:
        obs = self.st.obs
        head, entropy = facts if facts is not None else (b"", -1.0)
        psize, pmtime, pstored, pfp = before if before is not None else (-1, -1, -1, ())
        ev = FileRead(
            path,
            node.size,
            node.mtime_ns,
            tuple(sizes),
            head,
            entropy,
            psize,
            pmtime,
            pstored,
            changed,
            pfp,
            assessment,
        )
        if obs.node_key:  # set before the tree is stored: entry_done follows
            fp = obs.node_fingerprint(ev)
            if fp is not None:
                node.extra = {**node.extra, obs.node_key: fp}
        obs.file_read(ev)
        return ev

    def _before(self, prev: Node) -> tuple:
        """The previous version as FileRead and the worker's `assess` see it."""
        stored = self._stored_size(prev) if self.st.fingerprint else -1
        return prev.size, prev.mtime_ns, stored, node_fingerprint(prev, self.st.obs.node_key)

    def _stored_size(self, prev: Node) -> int:
        """Compressed size of a previous version, from the index; -1 when a chunk is not indexed."""
        if prev.type != FILE:
            return -1
        lookup, total = self.st.repo.index.lookup, 0
        for bid in prev.blob_ids():
            loc = lookup(bid)
            if loc is None:
                return -1
            total += loc.length - crypto.TAG_LEN
        return total

    # ---- stdin -------------------------------------------------------------------------------
    def save_stdin(self, stream, name: bytes, prev: Node | None = None) -> Node:
        """Calling thread: store the stream as one file named `name`; `prev` is its version in the parent
        snapshot. Observers see it as a file read (with the previous version, as a changed file), then
        as `stdin`."""
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
        )
        p = _Pending(node, WalkPath(None, b""), prev, None, 0, None)
        cutter = Cutter(self.st.repo, self.st.fingerprint, self.st.saver.__contains__)
        try:
            chunks, size, facts = cutter.stream(stream, lambda ch: self._store(p, ch))
        finally:
            cutter.close()
        self._store(p, chunks)
        node.content = b"".join(p.ids)
        node.size = size
        s = self.st.sum
        s.total_files = 1
        if prev is None:
            s.files_new = 1
        else:
            s.files_changed = 1
        s.bytes_read = s.total_bytes = size
        if self.st.obs is not None:
            before = self._before(prev) if prev is not None else None
            ev = self._observe(name, node, p.sizes, facts, False, before)
            self.st.obs.stdin(StdinRead(name, size, ev.chunks, ev.head, ev.head_entropy))
        return node
