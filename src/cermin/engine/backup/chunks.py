"""Cutting one file or stream into chunks: read, cut (FastCDC), hash (keyed BLAKE3) and compress.

Used inside the worker processes (`workers`) for files and in the calling process for a stream from
stdin. The output is plain data (`Chunk` tuples) that crosses a process boundary as it is; encryption
happens where the blob is packed (a blob's nonce is its offset in its pack): in the worker that was
granted it on a local repository (ownpacks.py), else in the parent.

Files are read into buffers, never through mmap: a file truncated while it is read must not kill the
process (SIGBUS).
"""

from __future__ import annotations

import io
import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cermin.engine.fsread import SparseReader
from cermin.engine.observer import ENTROPY_BYTES, head_facts
from cermin.format import pack
from cermin.util import main_thread_signals

WHOLE_READ_LIMIT = 8 * 1024 * 1024  # files up to this size are read in one go and cut in memory
# A large file's chunks go to the parent in groups of at most this many bytes of payload (or one chunk,
# when a single one is larger): what a worker holds and copies into a frame stays small.
EMIT_BYTES = 1024 * 1024
EMIT_CHUNKS = 1024
KEEP_BUFFER = 1024 * 1024  # of the read buffer, what stays resident after a larger file
KNOWN_MEMO = 65_536  # ids this cutter compressed in this run: duplicates are not compressed twice

# (blob id, raw length, compressed payload; None when the repository already holds the blob)
Chunk = tuple[bytes, int, bytes | None]
# chunks, bytes read, (head, head entropy) or None when no observer wants the fingerprint
Cut = tuple[list[Chunk], int, tuple[bytes, float] | None]


class Cutter:
    """One per process (per thread for the stream pool): owns a chunker and a read buffer.

    `known(blob_id)` says the repository already stores a blob (the index as of the fork): its bytes
    are neither compressed nor sent. The parent deduplicates again against everything stored since."""

    def __init__(self, repo, want_facts: bool, known: Callable[[bytes], bool]) -> None:
        s = repo.secrets
        self.chunker = repo.make_chunker()
        self.chunk_min = s.chunker_min
        self.level = s.compression_level
        self.blob_id = repo.blob_id
        self.known = known
        self.want_facts = want_facts
        self._map: mmap.mmap | None = None
        self._buf: memoryview | None = None
        self._sent: set[bytes] = set()
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def chunk(self, data) -> Chunk:
        bid = self.blob_id(data)
        if bid in self._sent or self.known(bid):
            return bid, len(data), None
        return bid, len(data), pack.compress(data, self.level)

    def sent(self, chunks: list[Chunk]) -> None:
        """These chunks reached the parent, which stores every payload it gets (or every claim it
        grants, someone's): later duplicates need not be compressed or sent again. Only now: a file
        that fails midway drops what it had cut."""
        memo = self._sent
        for bid, _, payload in chunks:
            if payload is not None:
                if len(memo) >= KNOWN_MEMO:
                    memo.clear()
                memo.add(bid)

    def facts(self, head, chunks: list[Chunk]) -> tuple[bytes, float] | None:
        if not self.want_facts:
            return None
        first = None
        if chunks:
            bid, raw, payload = chunks[0]
            first = (raw, len(payload) if payload is not None else 0)
        return head_facts(head, first)

    # ---- files -------------------------------------------------------------------------------
    def file(self, fd: int, size: int, blocks: int, emit: Callable[[list[Chunk]], None]) -> Cut:
        """Chunk an open regular file whose stat said `size` and `blocks`. Large files send their
        chunks through `emit` as they are made (bounded memory); the rest are returned."""
        if blocks * 512 < size:
            return self.stream(SparseReader(fd), emit)
        if size <= WHOLE_READ_LIMIT:
            return self.whole(fd, emit)
        return self.stream(io.FileIO(fd, "rb", closefd=False), emit)

    def _buffer(self, n: int) -> memoryview:
        """This cutter's read buffer, at least `n` bytes (kept for the next file): anonymous memory,
        whose pages past KEEP_BUFFER `_release` hands back after a large file."""
        buf = self._buf
        if buf is None or len(buf) < n:
            self._buf = None
            self._map = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)  # private: MADV_DONTNEED frees it
            buf = self._buf = memoryview(self._map)
        return buf

    def _release(self, used: int) -> None:
        """A file used `used` bytes of the buffer: past KEEP_BUFFER they go back to the kernel (zeroed
        pages when the next large file needs them), so a worker holds ~1 MiB between large files, not 8."""
        if used > KEEP_BUFFER and self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED, KEEP_BUFFER, len(self._map) - KEEP_BUFFER)

    def whole(self, fd: int, emit: Callable[[list[Chunk]], None]) -> Cut:
        """One read into this cutter's buffer, then cut in memory."""
        buf = self._buffer(WHOLE_READ_LIMIT + 1)[: WHOLE_READ_LIMIT + 1]
        n = 0
        while n < len(buf):
            k = os.readv(fd, [buf[n:]])  # straight into the buffer: no FileIO, no extra fstat
            if not k:
                break
            n += k
        if n == len(buf):  # grew past the limit while we read: start over, streaming
            os.lseek(fd, 0, os.SEEK_SET)
            return self.stream(io.FileIO(fd, "rb", closefd=False), emit)
        data = buf[:n]
        if n < self.chunk_min:  # FastCDC never cuts below its minimum
            chunks = [self.chunk(data)] if n else []
        else:
            chunks = [self.chunk(ch.data) for ch in self.chunker.cut_buf(data)]
        facts = self.facts(data[:ENTROPY_BYTES], chunks)
        self._release(n)
        return chunks, n, facts

    def stream(self, f, emit: Callable[[list[Chunk]], None], window: int = 4) -> Cut:
        """Large files and streams: this thread reads and cuts; hashing and compression run on two
        threads a bounded window ahead (BLAKE3 and zstd release the GIL on large inputs), so one big
        file keeps more than one core busy. Chunks go to `emit` in groups of at most EMIT_BYTES.

        Cut in this cutter's buffer (FastCDC's `cut_stream` allocates two maximum chunks a call): a
        chunk is cut only while at least a maximum chunk follows its start (or the input ended), so
        the boundaries are those `cut_stream` and `cut_buf` find."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, "cermin-chunk", initializer=main_thread_signals)
        most = self.chunker.max_size
        buf = self._buffer(max(WHOLE_READ_LIMIT, 2 * most))
        readinto = getattr(f, "readinto", None)
        pending: deque = deque()
        out: list[Chunk] = []
        out_bytes = 0
        size = 0
        head = None
        first: list[Chunk] = []

        def collect() -> None:
            nonlocal out_bytes, out
            c = pending.popleft().result()
            if not first:
                first.append(c)
            n = len(c[2] or b"")  # known chunks add no bytes
            if out and (out_bytes + n > EMIT_BYTES or len(out) >= EMIT_CHUNKS):
                emit(out)
                out, out_bytes = [], 0
            out.append(c)
            out_bytes += n

        end = 0
        eof = False
        while True:
            while not eof and end < len(buf):
                if readinto is not None:
                    k = readinto(buf[end:])
                else:
                    piece = f.read(len(buf) - end)
                    k = len(piece)
                    buf[end : end + k] = piece
                if not k:
                    eof = True
                else:
                    end += k
            if not end:
                break
            pos = 0
            for ch in self.chunker.cut_buf(buf[:end]):
                if not eof and end - pos < most:
                    break
                data = bytes(ch.data)
                if head is None:
                    head = data[:ENTROPY_BYTES]
                pos += len(data)
                pending.append(self._pool.submit(self.chunk, data))
                if len(pending) >= window:
                    collect()
            buf[: end - pos] = buf[pos:end]
            end -= pos
            size += pos
            if eof and not end:
                break
        while pending:
            collect()
        self._release(size)
        return out, size, self.facts(head or b"", first)
