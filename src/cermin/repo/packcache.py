"""Whole packs held in memory for a while, so a restore reads each pack once instead of once per blob.

Files are restored in tree order, which is backup order, so the blobs a stretch of files needs sit
in the same few packs. Concurrent requests for one pack wait for a single load.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from cermin.errors import CorruptObject, ObjectNotFound
from cermin.format import pack
from cermin.repo.repository import Repository


class PackCache:
    def __init__(self, repo: Repository, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.repo = repo
        self.max_bytes = max_bytes
        self._packs: OrderedDict[bytes, tuple[bytes, object]] = OrderedDict()  # id -> (data, cipher)
        self._loading: dict[bytes, threading.Event] = {}
        self._size = 0
        self._lock = threading.Lock()
        self.loads = 0

    def _get(self, pack_id: bytes) -> tuple[bytes, object]:
        while True:
            with self._lock:
                hit = self._packs.get(pack_id)
                if hit is not None:
                    self._packs.move_to_end(pack_id)
                    return hit
                ev = self._loading.get(pack_id)
                if ev is None:
                    ev = self._loading[pack_id] = threading.Event()
                    break
            ev.wait()  # another thread is loading it; then look again
        try:
            name = pack_id.hex()
            data = self.repo.load_pack(name)
            entry = (data, pack.pack_cipher(self.repo.keys, data, f"pack {name[:12]}"))
            with self._lock:
                self.loads += 1
                self._packs[pack_id] = entry
                self._size += len(data)
                while self._size > self.max_bytes and len(self._packs) > 1:
                    _, (old, _c) = self._packs.popitem(last=False)
                    self._size -= len(old)
            return entry
        finally:
            with self._lock:
                self._loading.pop(pack_id, None)
            ev.set()

    def load_blob(self, blob_id: bytes, want_type: int | None = None) -> bytes:
        return blob_from_packs(self.repo, self._get, blob_id, want_type)


def blob_from_packs(repo: Repository, get_pack, blob_id: bytes, want_type: int | None = None) -> bytes:
    """A blob through `get_pack(pack_id) -> (pack bytes, cipher)`, every bound and type checked; when
    its first location fails, from another the index knows (see `Repository.alternate_blob`)."""
    loc = repo.index.lookup(blob_id)
    if loc is None:
        raise CorruptObject(f"blob {blob_id.hex()[:16]} is not in the index (missing data)")
    try:
        return _from_pack(repo, get_pack, blob_id, want_type, loc)
    except CorruptObject as first:
        for alt in repo.index.alternates(blob_id):
            try:
                return _from_pack(repo, get_pack, blob_id, want_type, alt)
            except (CorruptObject, ObjectNotFound):
                pass
        raise first from None


def _from_pack(repo: Repository, get_pack, blob_id: bytes, want_type: int | None, loc) -> bytes:
    if not repo.type_fits(loc.type, want_type):
        raise CorruptObject(f"blob {blob_id.hex()[:16]} has type {loc.type}, expected {want_type}")
    data, cipher = get_pack(loc.pack_id)
    ct = data[loc.offset : loc.offset + loc.length]
    if len(ct) != loc.length:
        raise CorruptObject(f"blob {blob_id.hex()[:16]}: pack {loc.pack_id.hex()[:12]} is truncated")
    return repo.open_blob(cipher, loc.offset, loc.type, blob_id, ct, loc.raw_length)
