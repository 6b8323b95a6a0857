"""In-memory blob index: blob id -> (pack, type, offset, length, raw length).

Two parts, so it scales to tens of millions of blobs:
- a frozen part built in bulk from the index files with numpy: sorted 128-bit id prefixes and
  parallel location arrays, ~30 bytes per blob, looked up by binary search;
- a small dict for packs added one by one (those written by the running backup), one int per blob.
A 128-bit prefix of a keyed BLAKE3 id cannot collide in practice, and every blob read is verified
against its full id anyway.
"""

from __future__ import annotations

import functools
import threading

from cermin.format import index as fmt_index

_M32 = (1 << 32) - 1
FOLD_AT = 50_000


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
        self._bulk: list[tuple[int, bytes]] = []  # (pack_no, entries) waiting for build()
        self._frozen = None  # numpy arrays: hi, lo, pack, off, len, raw, type
        self._frozen_n = 0
        # Later locations of a blob already indexed (concurrent backups, or index files a key holder
        # planted to shadow the real entries), by 16-byte id prefix: a reader whose first location
        # fails tries these (`alternates`) instead of losing the blob.
        self._alt: dict[bytes, list[int]] = {}
        self._u64 = int
        self._lock = threading.Lock()

    @classmethod
    def from_packs(cls, packs: dict[bytes, bytes]) -> MasterIndex:
        idx = cls()
        for pid, entries in packs.items():
            idx.add_pack_bulk(pid, entries)
        idx.build()
        return idx

    def __len__(self) -> int:
        return self._frozen_n + len(self._blobs)

    def _pack_number(self, pack_id: bytes) -> int:
        no = self._pack_no.get(pack_id)
        if no is None:
            no = self._pack_no[pack_id] = len(self.packs)
            self.packs.append(pack_id)
        return no

    # ---- adding ----------------------------------------------------------------------------
    def add_pack(self, pack_id: bytes, blobs: bytes) -> None:
        """One pack's entries (format.index.ENTRY records). First location of a blob wins."""
        with self._lock:
            base = self._pack_number(pack_id) << 97
            setdefault = self._blobs.setdefault
            for bid, t, off, ln, raw in fmt_index.ENTRY.iter_unpack(blobs):  # raw records: no object per blob
                v = base | off << 65 | ln << 33 | raw << 1 | t
                if (self._frozen is not None and self._frozen_find(bid) >= 0) or setdefault(bid, v) != v:
                    self._alt.setdefault(bid[:16], []).append(v)
            # The dict costs ~140 B per blob, the frozen arrays 33 B: fold it in now and then
            # (amortised: only when it has grown to a quarter of the frozen part).
            fold = len(self._blobs) > max(FOLD_AT, self._frozen_n // 4)
        if fold:
            self.build()

    def add_pack_bulk(self, pack_id: bytes, blobs: bytes) -> None:
        """Queue a pack for build(): the fast path for loading every index file at once."""
        with self._lock:
            self._bulk.append((self._pack_number(pack_id), blobs))

    def build(self) -> None:
        """Freeze everything queued by add_pack_bulk (and the dict) into sorted numpy arrays."""
        import numpy as np

        with self._lock:
            parts, counts = [], []
            for no, blobs in self._bulk:
                parts.append(blobs)
                counts.append((no, len(blobs) // fmt_index.ENTRY.size))
            self._bulk = []
            extra = self._blobs  # folded in below, then replaced by a fresh dict
            n_bulk = sum(c for _, c in counts)
            dt = _entry_dtype()
            raw = np.frombuffer(b"".join(parts), dtype=dt) if n_bulk else np.zeros(0, dt)
            pack = (
                np.repeat(
                    np.array([no for no, _ in counts], dtype=np.uint32),
                    np.array([c for _, c in counts], dtype=np.int64),
                )
                if counts
                else np.zeros(0, np.uint32)
            )
            hi, lo = raw["hi"].astype(np.uint64), raw["lo"].astype(np.uint64)
            off, ln, rl, ty = raw["off"], raw["len"], raw["raw"], raw["type"]
            cols = [hi, lo, pack, off.astype(np.uint32), ln.astype(np.uint32), rl.astype(np.uint32), ty]
            if extra:  # entries added one by one so far join the frozen part (no per-entry lists)
                n = len(extra)
                ids = np.frombuffer(b"".join(extra.keys()), dtype=[("hi", ">u8"), ("lo", ">u8"), ("r", "V16")])

                def field(shift: int, mask: int, dtype):
                    return np.fromiter(((v >> shift) & mask for v in extra.values()), dtype, count=n)

                add = [
                    ids["hi"].astype(np.uint64),
                    ids["lo"].astype(np.uint64),
                    field(97, _M32, np.uint32),
                    field(65, _M32, np.uint32),
                    field(33, _M32, np.uint32),
                    field(1, _M32, np.uint32),
                    field(0, 1, np.uint8),
                ]
                cols = [np.concatenate([a, b]) for a, b in zip(cols, add, strict=True)]
            if self._frozen is not None:  # keep what was frozen before: it came first
                cols = [np.concatenate([a, b]) for a, b in zip(self._frozen, cols, strict=True)]
            order = np.lexsort((cols[1], cols[0]))  # stable: first location of a duplicate first
            cols = [c[order] for c in cols]
            if len(order) > 1:  # later duplicates: kept aside as alternates
                keep = np.ones(len(order), bool)
                keep[1:] = (cols[0][1:] != cols[0][:-1]) | (cols[1][1:] != cols[1][:-1])
                for i in np.flatnonzero(~keep).tolist():
                    hi, lo, no, off, ln, rl, ty = (int(c[i]) for c in cols)
                    key = hi.to_bytes(8, "big") + lo.to_bytes(8, "big")
                    self._alt.setdefault(key, []).append(no << 97 | off << 65 | ln << 33 | rl << 1 | (ty & 1))
                cols = [c[keep] for c in cols]
            self._u64 = np.uint64
            self._frozen = cols  # one assignment: a lookup in another thread sees old or new, whole
            self._frozen_n = len(cols[0])
            if extra:  # only now: until the swap, these entries were found in the dict
                self._blobs = {}

    # ---- lookups ---------------------------------------------------------------------------
    def _frozen_find(self, blob_id: bytes, f=None) -> int:
        """Position of a blob in frozen arrays `f` (default: the current ones), or -1."""
        f = self._frozen if f is None else f
        if f is None or not len(f[0]):
            return -1
        hi = int.from_bytes(blob_id[:8], "big")
        lo = int.from_bytes(blob_id[8:16], "big")
        keys_hi, keys_lo = f[0], f[1]
        h = self._u64(hi)  # a plain int above 2**63 would make numpy cast the array
        i = int(keys_hi.searchsorted(h))
        n = len(keys_hi)
        if i == n or int(keys_hi[i]) != hi:
            return -1
        if i + 1 < n and int(keys_hi[i + 1]) == hi:
            # Equal first 8 bytes: 1 in 2^64 by chance, or an index written to slow every lookup
            # down. The arrays are sorted by (hi, lo): search the run too, never walk it.
            j = int(keys_hi.searchsorted(h, "right"))
            i += int(keys_lo[i:j].searchsorted(self._u64(lo)))
            return i if i < j and int(keys_lo[i]) == lo else -1
        return i if int(keys_lo[i]) == lo else -1

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs or (self._frozen is not None and self._frozen_find(blob_id) >= 0)

    def contains_all(self, ids: bytes) -> bool:
        """Whether every blob of `ids` (32-byte ids, concatenated) is indexed: one vectorised search
        of the frozen arrays for all of them (a directory's unchanged files at once), each id the
        search misses looked up alone (ids added since the freeze, equal first 8 bytes)."""
        n, rest = divmod(len(ids), 32)
        f = self._frozen
        if rest:
            return False  # not a list of ids
        if n == 0:
            return True
        if f is None or not len(f[0]):
            return all(ids[i * 32 : i * 32 + 32] in self for i in range(n))
        import numpy as np  # loaded already: the frozen part is numpy's

        keys = np.frombuffer(ids, dtype=">u8", count=n * 4).reshape(n, 4)
        hi, lo = keys[:, 0].astype(np.uint64), keys[:, 1].astype(np.uint64)
        at = np.minimum(f[0].searchsorted(hi), len(f[0]) - 1)
        found = (f[0][at] == hi) & (f[1][at] == lo)
        return all(ids[i * 32 : i * 32 + 32] in self for i in np.flatnonzero(~found).tolist())

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        v = self._blobs.get(blob_id)
        if v is not None:
            return self._location(v)
        f = self._frozen  # one snapshot of the arrays for both the search and the read
        i = self._frozen_find(blob_id, f)
        if i < 0:
            return None
        return BlobLocation(self.packs[int(f[2][i])], int(f[6][i]), int(f[3][i]), int(f[4][i]), int(f[5][i]))

    def alternates(self, blob_id: bytes) -> list[BlobLocation]:
        """Locations of the blob besides the one `lookup` gives, first indexed first."""
        return [self._location(v) for v in self._alt.get(blob_id[:16], ())]

    def _location(self, v: int) -> BlobLocation:
        """A location packed as one int (see `_blobs`)."""
        return BlobLocation(self.packs[v >> 97], v & 1, (v >> 65) & _M32, (v >> 33) & _M32, (v >> 1) & _M32)

    def lookup_many(self, ids: list[bytes]) -> list[BlobLocation | None]:
        """`lookup` of each of `ids` (32-byte ids), the frozen part searched for all at once (a restore
        worker's window, a directory's files): one searchsorted instead of one per id."""
        f = self._frozen
        if len(ids) < 8 or f is None or not len(f[0]) or any(len(b) != 32 for b in ids):
            return [self.lookup(b) for b in ids]
        import numpy as np  # loaded already: the frozen part is numpy's

        n = len(ids)
        keys = np.frombuffer(b"".join(ids), dtype=">u8", count=n * 4).reshape(n, 4)
        hi, lo = keys[:, 0].astype(np.uint64), keys[:, 1].astype(np.uint64)
        at = np.minimum(f[0].searchsorted(hi), len(f[0]) - 1)
        found = ((f[0][at] == hi) & (f[1][at] == lo)).tolist()
        cols = [c[at].tolist() for c in (f[2], f[6], f[3], f[4], f[5])]
        packs, blobs, out = self.packs, self._blobs, []
        for i, bid in enumerate(ids):
            if blobs and bid in blobs or not found[i]:  # added since the freeze, or a shared first 8 bytes
                out.append(self.lookup(bid))
            else:
                out.append(BlobLocation(packs[cols[0][i]], cols[1][i], cols[2][i], cols[3][i], cols[4][i]))
        return out

    def raw_length(self, blob_id: bytes) -> int | None:
        loc = self.lookup(blob_id)
        return None if loc is None else loc.raw_length

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._pack_no


@functools.cache
def _entry_dtype():
    """Index file entries (format.index.ENTRY) seen by numpy, the id split into two big-endian halves."""
    import numpy as np

    return np.dtype(
        [("hi", ">u8"), ("lo", ">u8"), ("rest", "V16"), ("type", "u1"), ("off", "<u4"), ("len", "<u4"), ("raw", "<u4")]
    )
