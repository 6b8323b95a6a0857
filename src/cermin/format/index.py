"""Index file entries: fixed 45-byte records, decoded in bulk (FORMAT.md "Index files").

`IndexEntry` is the one record for "where a blob lives inside a pack", used by the pack writer,
the pack-header parser, index views, repack and check. It is a NamedTuple, so positional
unpacking `bid, t, off, ln, raw = e` keeps working; its field order is the on-disk order.
Bulk paths (the numpy master index) read the packed bytes directly and create no record per blob.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

ENTRY = struct.Struct("<32sBIII")  # blob id, type, offset, ciphertext length, raw length
assert ENTRY.size == 45  # records.INDEX_ENTRY_SIZE


class IndexEntry(NamedTuple):
    blob_id: bytes
    type: int  # format.pack.DATA / TREE
    offset: int  # of the blob's ciphertext in its pack
    length: int  # ciphertext length
    raw_length: int  # plaintext length after decompression

    @property
    def end(self) -> int:
        return self.offset + self.length


def encode_entries(entries: Iterable[IndexEntry]) -> bytes:
    """The index-file bytes of some entries (fields in on-disk order)."""
    p = ENTRY.pack
    return b"".join(p(*e) for e in entries)


def pack_entries(entries) -> bytes:
    """Like encode_entries; also accepts plain (type, offset, length, id, raw_len) tuples, the
    order PackBuilder used before IndexEntry existed (kept for old callers)."""
    p = ENTRY.pack
    return b"".join(p(*e) if isinstance(e, IndexEntry) else p(e[3], e[0], e[1], e[2], e[4]) for e in entries)


def iter_entries(blobs: bytes) -> Iterator[IndexEntry]:
    """Decode index-file bytes into IndexEntry records."""
    return map(IndexEntry._make, ENTRY.iter_unpack(blobs))


def entry_count(blobs: bytes) -> int:
    return len(blobs) // ENTRY.size
