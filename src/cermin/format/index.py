"""Index file entries: fixed 45-byte records, decoded in bulk (FORMAT.md "Index files")."""

from __future__ import annotations

import struct

ENTRY = struct.Struct("<32sBIII")  # blob id, type, offset, ciphertext length, raw length


def pack_entries(entries) -> bytes:
    """entries: iterable of (type, offset, length, id, raw_len) as produced by PackBuilder."""
    return b"".join(ENTRY.pack(bid, t, off, ln, raw) for t, off, ln, bid, raw in entries)


def iter_entries(blobs: bytes):
    """Yield (id, type, offset, length, raw_len)."""
    return ENTRY.iter_unpack(blobs)
