"""In-memory blob index: blob id -> location, one Python int per blob instead of a tuple of objects."""

from __future__ import annotations

import threading

from cermin.format import index as fmt_index

_M32 = (1 << 32) - 1


class BlobLocation:
    __slots__ = ("pack_id", "type", "offset", "length", "raw_length")

    def __init__(self, pack_id: bytes, type: int, offset: int, length: int, raw_length: int) -> None:
        self.pack_id = pack_id
        self.type = type
        self.offset = offset
        self.length = length
        self.raw_length = raw_length


class MasterIndex:
    def __init__(self) -> None:
        self.packs: list[bytes] = []  # pack_no -> pack id (32 bytes)
        self._pack_no: dict[bytes, int] = {}
        # value: pack_no << 97 | offset << 65 | length << 33 | raw_length << 1 | type
        self._blobs: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def add_pack(self, pack_id: bytes, blobs: bytes) -> None:
        """blobs: concatenated index entries (format.index.ENTRY). First location of a blob wins."""
        with self._lock:
            no = self._pack_no.get(pack_id)
            if no is None:
                no = self._pack_no[pack_id] = len(self.packs)
                self.packs.append(pack_id)
            base = no << 97
            setdefault = self._blobs.setdefault
            for bid, t, off, ln, raw in fmt_index.iter_entries(blobs):
                setdefault(bid, base | off << 65 | ln << 33 | raw << 1 | t)

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        v = self._blobs.get(blob_id)
        if v is None:
            return None
        return BlobLocation(self.packs[v >> 97], v & 1, (v >> 65) & _M32, (v >> 33) & _M32, (v >> 1) & _M32)

    def raw_length(self, blob_id: bytes) -> int | None:
        v = self._blobs.get(blob_id)
        return None if v is None else (v >> 1) & _M32

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._pack_no

    def items(self):
        """Yield (blob_id, BlobLocation) for every blob."""
        for bid in list(self._blobs):
            loc = self.lookup(bid)
            if loc is not None:
                yield bid, loc
