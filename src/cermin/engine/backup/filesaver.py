"""Reading and chunking file contents in worker threads, handing each chunk to the BlobSaver.

The walker opens a changed file (relative to its directory fd) and calls `submit`; small files travel
in batches so one hand-off to a worker serves many files. A worker reads a file whole into a per-thread
buffer (up to WHOLE_READ_LIMIT) and cuts it in memory, or streams a large or sparse one, sending its
chunks to a second pool a bounded window ahead so one big file uses every core. Files are read into
buffers, never through mmap: a file truncated while it is read must not kill the process (SIGBUS).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from cermin.engine import fsmeta
from cermin.engine.backup.state import BackupState
from cermin.engine.backup.trees import DirJob, Trees, node_fingerprint
from cermin.engine.fsread import SparseReader, WalkPath, open_for_read
from cermin.engine.observer import ENTROPY_BYTES, FileRead, StdinRead, head_facts
from cermin.format import crypto, pack
from cermin.format.records import FILE, Node
from cermin.util import display_path

WHOLE_READ_LIMIT = 8 * 1024 * 1024  # files up to this size are read in one go and cut in memory
BATCH_FILES = 64  # changed files handed to a worker at once ...
BATCH_BYTES = 4 * 1024 * 1024  # ... or fewer when they add up to this much

# (blob ids, (raw, stored) per chunk, bytes read, (head, entropy) or None)
Stored = tuple[list[bytes], list[tuple[int, int]], int, tuple[bytes, float] | None]


class FileSaver:
    def __init__(self, state: BackupState, trees: Trees, workers: int) -> None:
        self.st = state
        self.trees = trees
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cermin-file")
        # Chunks of large files; a separate pool so a file job never waits on its own pool.
        self.chunk_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cermin-chunk")
        # Batches in flight: bounds open files to (workers + 2) * BATCH_FILES.
        self._slots = threading.BoundedSemaphore(workers + 1)
        self._batch: list[tuple] = []
        self._batch_bytes = 0
        self._tls = threading.local()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.chunk_pool.shutdown(wait=True)

    # ---- walker side -------------------------------------------------------------------------
    def submit(self, dfd: int, name: bytes, st: os.stat_result, path: WalkPath, prev, node: Node, job: DirJob) -> None:
        """Open the file here (relative to the dir fd) and queue it; `node` is completed by a worker."""
        try:
            fd = open_for_read(name, dfd)
        except FileNotFoundError:
            self.st.error(path.join(name), "vanished before it could be read")
            return
        except OSError as e:
            self.st.error(path.join(name), f"cannot open: {e.strerror}")
            return
        slot = len(job.nodes)
        job.nodes.append(node)
        self.trees.add_pending(job)
        self._batch.append((fd, st, node, path, prev, job, slot))
        self._batch_bytes += st.st_size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self.submit_batch()

    def submit_batch(self) -> None:
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

    # ---- workers -----------------------------------------------------------------------------
    def _file_batch(self, batch) -> None:
        st = self.st
        try:
            for i, (fd, stat, node, path, prev, job, slot) in enumerate(batch):
                if st.fatal is not None:
                    for rest in batch[i:]:
                        os.close(rest[0])
                    return
                if self._read_file(fd, stat, node, path, prev) is None:
                    job.nodes[slot] = None
                self.trees.entry_done(job)
        except BaseException as e:  # storage failure: the whole backup stops, nothing is committed
            if st.fatal is None:
                st.fatal = e
        finally:
            self._slots.release()

    def _chunker(self):
        c = getattr(self._tls, "chunker", None)
        if c is None:
            c = self._tls.chunker = self.st.repo.make_chunker()
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
                    ids, chunks, size, facts = self._store_stream(SparseReader(fd))
                elif st.st_size <= WHOLE_READ_LIMIT:
                    ids, chunks, size, facts = self._store_whole(fd)
                else:
                    ids, chunks, size, facts = self._store_stream(io.FileIO(fd, "rb", closefd=False))
                after = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.st.error(path.join(node.name), f"read error: {e.strerror or e}")
            return None
        node.content = b"".join(ids)
        node.size = size
        s = self.st.sum
        changed = size != st.st_size or after.st_mtime_ns != st.st_mtime_ns or after.st_size != st.st_size
        with self.st.mutex:
            s.bytes_read += size
            if prev is None:
                s.files_new += 1
            else:
                s.files_changed += 1
            if changed:
                s.changed_during_read += 1
                self.st.warnings.append(
                    f"{display_path(path.join(node.name))}: changed while it was read "
                    f"(saved {size} bytes as read; next backup reads it again)"
                )
        self.st.progress.files += 1
        obs = self.st.obs
        if obs is not None:
            ev = self._event(path.join(node.name), node, prev, chunks, facts, changed)
            if obs.node_key:  # set before the tree is stored: entry_done follows this return
                fp = obs.node_fingerprint(ev)
                if fp is not None:
                    node.extra = {**node.extra, obs.node_key: fp}
            obs.file_read(ev)
        return node

    def _event(self, path: bytes, node: Node, prev: Node | None, chunks, facts, changed: bool) -> FileRead:
        head, entropy = head_facts(facts, chunks[0] if chunks else None) if facts is not None else (b"", -1.0)
        if prev is None:
            return FileRead(path, node.size, node.mtime_ns, tuple(chunks), head, entropy, changed_during_read=changed)
        return FileRead(
            path,
            node.size,
            node.mtime_ns,
            tuple(chunks),
            head,
            entropy,
            prev.size,
            prev.mtime_ns,
            self._stored_size(prev) if self.st.fingerprint else -1,
            changed,
            node_fingerprint(prev, self.st.obs.node_key),
        )

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

    def _store_stream(self, f) -> Stored:
        """Large files: this thread reads and cuts; hashing, compression and encryption of the
        chunks run on the chunk pool, a bounded window ahead, so one big file uses every core."""
        blob_id, save, prog = self.st.repo.blob_id, self.st.saver.save, self.st.progress
        facts = None
        want_facts = self.st.fingerprint

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
            data = bytes(ch.data)
            if want_facts and facts is None:
                facts = data[:ENTROPY_BYTES]  # judged once the chunk's compressed size is known
            window.append(self.chunk_pool.submit(store, data))
            if len(window) >= 2 * self.workers:
                collect_one()
        while window:
            collect_one()
        if want_facts and facts is None:
            facts = b""  # empty
        return ids, chunks, size, facts

    def _store_whole(self, fd: int) -> Stored:
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
        facts = bytes(data[:ENTROPY_BYTES]) if self.st.fingerprint else None
        if n < self.st.repo.secrets.chunker_min:  # FastCDC never cuts below its minimum
            return self._store_chunks([data] if n else [], facts)
        return self._store_chunks((ch.data for ch in self._chunker().cut_buf(data)), facts)

    def _store_chunks(self, datas, facts) -> Stored:
        blob_id, save, prog = self.st.repo.blob_id, self.st.saver.save, self.st.progress
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
        return ids, chunks, size, facts

    # ---- stdin -------------------------------------------------------------------------------
    def save_stdin(self, stream, name: bytes, prev: Node | None = None) -> Node:
        """Calling thread: store the stream as one file named `name`; `prev` is its version in the parent
        snapshot. Observers see it as a file read (with the previous version, as a changed file), then
        as `stdin`."""
        ids, chunks, size, facts = self._store_stream(stream)
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
        s = self.st.sum
        s.total_files = 1
        if prev is None:
            s.files_new = 1
        else:
            s.files_changed = 1
        s.bytes_read = s.total_bytes = size
        obs = self.st.obs
        if obs is not None:
            ev = self._event(name, node, prev, chunks, facts, False)
            if obs.node_key:  # the fingerprint the next stdin backup of this name is compared with
                fp = obs.node_fingerprint(ev)
                if fp is not None:
                    node.extra = {**node.extra, obs.node_key: fp}
            obs.file_read(ev)
            obs.stdin(StdinRead(name, size, ev.chunks, ev.head, ev.head_entropy))
        return node
