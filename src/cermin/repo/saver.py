"""BlobSaver: deduplicate, compress, encrypt and pack blobs, upload packs, then write index files.

Ordering that makes crashes harmless: a pack is uploaded before any index names it, and
`flush()` returns only after every pack and index is durable, so a snapshot written afterwards
never names missing data. Thread-safe: backup workers call `save` concurrently; each takes a
pack builder out of a pool, so encryption runs in parallel without a global lock.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from cermin.backend.base import Kind
from cermin.errors import CorruptObject, StoredDamaged
from cermin.format import crypto, pack
from cermin.format import index as fmt_index
from cermin.format.records import IndexPack
from cermin.repo import packspool
from cermin.repo.repository import SAVE_ATTEMPTS, Repository
from cermin.util import main_thread_signals

INDEX_EVERY_PACKS = 64
INDEX_EVERY_BLOBS = 100_000  # many small blobs: write index files sooner, keep memory flat


class SaveResult:
    __slots__ = ("new", "raw_len", "stored_len")

    def __init__(self, new: bool, raw_len: int, stored_len: int) -> None:
        self.new = new
        self.raw_len = raw_len
        self.stored_len = stored_len


def write_pack(builder: pack.PackBuilder, store) -> tuple[list, str, int]:
    """Write out a full pack: sealed and committed in place when spooled to its store, else finished
    whole and handed to `store(entries, data, name)` (None: nothing is written), which returns what it
    stored. Returns the pack's entries, name and size."""
    if builder.spool is not None and not builder.spool.whole:
        name = builder.seal()
        builder.spool.commit(name)
        return builder.entries, name, builder.size
    entries, data = builder.entries, builder.finish()
    name = crypto.file_id(data)
    if store is not None:
        entries, data, name = store(entries, data, name)
    return entries, name, len(data)


class BlobSaver:
    def __init__(
        self,
        repo: Repository,
        builders: int = 2,
        uploads: int = 2,
        dry_run: bool = False,
        ignore_index: bool = False,
        write_index: bool = True,
    ) -> None:
        self.repo = repo
        self.dry_run = dry_run  # pack and count everything, write nothing
        # Repack/salvage: store blobs even though the index knows them (in packs about to go).
        self.ignore_index = ignore_index
        # Prune/repair write one full index themselves from `new_packs`.
        self.write_index = write_index
        self.new_packs: dict[bytes, bytes] = {}  # pack id -> index entries (when write_index is False)
        self.level = repo.secrets.compression_level
        self.target = repo.secrets.pack_size
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._pools = {pack.DATA: queue.SimpleQueue(), pack.TREE: queue.SimpleQueue()}
        for _ in range(builders):
            self._pools[pack.DATA].put(self._builder())
        self._pools[pack.TREE].put(self._builder())
        self._builders = {pack.DATA: builders, pack.TREE: 1}
        self._uploader = ThreadPoolExecutor(uploads, "cermin-upload", initializer=main_thread_signals)
        self._inflight = threading.Semaphore(uploads)  # finished packs waiting: bounds memory
        self._futures: list[Future] = []
        self._index_packs: list[IndexPack] = []
        self._index_blobs = 0
        self._error: BaseException | None = None
        self.index_files: list[str] = []
        self.packs_written = 0
        self.bytes_uploaded = 0
        self.added = {pack.DATA: 0, pack.TREE: 0}
        self.raw_added = 0  # data blobs only
        self.stored_added = 0
        self.damaged_packs: list[str] = []  # stored damaged and replaced by a new pack (verifying backend)

    def __contains__(self, blob_id: bytes) -> bool:
        return (not self.ignore_index and blob_id in self.repo.index) or blob_id in self._pending

    def save(self, blob_type: int, blob_id: bytes, data, payload: bytes | None = None) -> SaveResult:
        """Store `data` under `blob_id` unless already stored. `payload` may carry pre-compressed bytes."""
        if not self._claim(blob_id):
            return SaveResult(False, len(data), 0)
        if payload is None:
            payload = pack.compress(data, self.level)
        return self._add(blob_type, blob_id, len(data), payload)

    def save_payload(self, blob_type: int, blob_id: bytes, raw_len: int, payload: bytes) -> SaveResult:
        """Store a blob compressed elsewhere (a backup worker process) unless already stored."""
        if not self._claim(blob_id):
            return SaveResult(False, raw_len, 0)
        return self._add(blob_type, blob_id, raw_len, payload)

    def grant(self, blob_id: bytes, raw_len: int, stored_len: int) -> bool:
        """A backup worker that packs its own blobs (engine/backup/ownpacks.py) asks to store one:
        True when it is to (counted as added now; indexed by `adopt` once its pack is written)."""
        if not self._claim(blob_id):
            return False
        self._count(pack.DATA, raw_len, stored_len)
        return True

    def adopt(self, pack_id: bytes, blobs: bytes, size: int) -> None:
        """A pack written by another process, holding blobs granted by `grant`: indexed as this
        saver's own packs are."""
        self._indexed(pack_id, blobs, [bid for bid, *_ in fmt_index.ENTRY.iter_unpack(blobs)], size)

    def take_back(self, chunks: list[tuple[bytes, int, bytes]]) -> None:
        """Blobs `grant` gave to another process, which hands them back unstored: into this saver's
        own packs (counted already)."""
        for blob_id, raw_len, payload in chunks:
            if blob_id not in self._pending:
                raise CorruptObject(f"internal error: blob {blob_id.hex()[:16]} handed back was never granted")
            self._pack(pack.DATA, blob_id, raw_len, payload)

    def _claim(self, blob_id: bytes) -> bool:
        """True when this caller is to store the blob: neither stored nor being stored by another."""
        if self._error is not None:
            raise self._error
        with self._lock:
            if blob_id in self:
                return False
            self._pending.add(blob_id)
        return True

    def _add(self, blob_type: int, blob_id: bytes, raw_len: int, payload: bytes) -> SaveResult:
        self._count(blob_type, raw_len, len(payload))
        self._pack(blob_type, blob_id, raw_len, payload)
        return SaveResult(True, raw_len, len(payload))

    def _count(self, blob_type: int, raw_len: int, stored_len: int) -> None:
        with self._lock:
            self.added[blob_type] += 1
            if blob_type == pack.DATA:
                self.raw_added += raw_len
                self.stored_added += stored_len

    def _pack(self, blob_type: int, blob_id: bytes, raw_len: int, payload: bytes) -> None:
        pool = self._pools[blob_type]
        b = pool.get()
        try:
            b.add(blob_type, blob_id, payload, raw_len)
        except BaseException as e:
            # Its spool write failed or was interrupted: the pack and every blob in it are lost, so
            # this saver stores nothing more (those blobs count as pending: a later save would skip them).
            if self._error is None:
                self._error = e
            b.discard()
            pool.put(self._builder())
            raise
        if b.size >= self.target:
            pool.put(self._builder())
            self._submit(b)
        else:
            pool.put(b)

    def _builder(self) -> pack.PackBuilder:
        """A pack builder whose blobs go to a temporary file as they come instead of staying in memory
        until the pack is full: the store's own on a store that takes objects in pieces (a local
        directory), else an unnamed local file read back at upload (repo/packspool.py)."""
        if self.dry_run:
            return pack.PackBuilder(self.repo.keys)
        backend = self.repo.backend
        return pack.PackBuilder(self.repo.keys, spool=lambda: backend.spool(Kind.DATA) or packspool.open_temp())

    def _submit(self, builder: pack.PackBuilder) -> None:
        try:
            self._inflight.acquire()
        except BaseException:  # interrupted while waiting for an upload slot
            builder.discard()
            raise
        try:
            fut = self._uploader.submit(self._upload, builder)
        except BaseException:
            self._inflight.release()
            builder.discard()
            raise
        with self._lock:
            self._futures.append(fut)

    def _upload(self, builder: pack.PackBuilder) -> None:
        try:
            entries, name, size = write_pack(builder, None if self.dry_run else self._store)
            self._indexed(bytes.fromhex(name), fmt_index.encode_entries(entries), [e.blob_id for e in entries], size)
        except BaseException as e:
            builder.discard()
            if self._error is None:
                self._error = e
            raise
        finally:
            self._inflight.release()

    def _indexed(self, pack_id: bytes, blobs: bytes, ids: list[bytes], size: int) -> None:
        """A pack is written: index it, and write an index file when enough are waiting."""
        if not self.ignore_index:
            self.repo.index.add_pack(pack_id, blobs)
        with self._lock:
            if not self.write_index:  # only prune/repair need them, to write their own index
                self.new_packs[pack_id] = blobs
            self.packs_written += 1
            self.bytes_uploaded += size
            if not self.ignore_index:  # otherwise pending is this saver's whole dedup set
                for bid in ids:
                    self._pending.discard(bid)
            self._index_packs.append(IndexPack(pack_id, blobs))
            self._index_blobs += len(ids)
            ready = None
            if len(self._index_packs) >= INDEX_EVERY_PACKS or self._index_blobs >= INDEX_EVERY_BLOBS:
                self._index_blobs = 0
                ready, self._index_packs = self._index_packs, []
        if ready and self.write_index and not self.dry_run:
            self.index_files.append(self.repo.save_index(ready))

    def _store(self, entries, data: bytes, name: str):
        """Upload a pack. When a verifying backend finds it stored damaged (backend/verifying.py),
        the damaged object stays, unindexed, and the same blobs go into a new pack (a new salt: a new
        name), rebuilt from the intact bytes still in memory, up to SAVE_ATTEMPTS times."""
        for attempt in range(SAVE_ATTEMPTS):
            try:
                self.repo.backend.save(Kind.DATA, name, data)
                return entries, data, name
            except StoredDamaged:
                if attempt + 1 == SAVE_ATTEMPTS:
                    raise
                with self._lock:
                    self.damaged_packs.append(name)
            cipher = pack.pack_cipher(self.repo.keys, data[: pack.PREFIX_LEN], f"pack {name[:12]}")
            b = pack.PackBuilder(self.repo.keys)
            for e in entries:
                ct = data[e.offset : e.offset + e.length]
                payload = pack.open_blob(cipher, e.offset, e.type, e.blob_id, ct, f"pack {name[:12]}")
                b.add(e.type, e.blob_id, payload, e.raw_length)
            entries = b.entries
            data = b.finish()
            name = crypto.file_id(data)
        raise AssertionError("unreachable")

    def flush(self) -> None:
        """Write out partly filled packs, wait for every upload, write the remaining index."""
        for blob_type, pool in self._pools.items():
            for _ in range(self._builders[blob_type]):
                b = pool.get()
                if len(b):
                    self._submit(b)
                pool.put(self._builder())
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            f.result()
        if self._error is not None:
            raise self._error
        with self._lock:
            ready, self._index_packs = self._index_packs, []
        if ready and self.write_index and not self.dry_run:
            self.index_files.append(self.repo.save_index(ready))

    def close(self) -> None:
        """Wait for the uploads; a pack still being built (the run failed) is dropped."""
        self._uploader.shutdown(wait=True)
        for pool in self._pools.values():
            while not pool.empty():
                pool.get().discard()
