"""Pack files: many encrypted blobs plus an encrypted header, so an index can be rebuilt from packs.

Layout (FORMAT.md "Pack files"):
  magic "CRMNPACK" (8) | salt (32) | blob ciphertexts ... | header ciphertext | header length u32 LE
A blob is AES-GCM(pack key, nonce = its offset in the pack as 12-byte big-endian, payload,
aad = type byte || blob id); offsets are unique within a pack, so nonces never repeat.
The header lists, for each blob in order, type u8 | ciphertext length u32 | raw length u32 | id (32).

This module is the one place that knows the layout: `header_span` (where the header is, from the
pack's size and last 4 bytes), `decode_header` (authenticate and validate it), `parse_header` (both,
over a whole pack in memory), `check_layout` (any entry list against a pack's blob area) and
`pack_size` (the size a pack with given entries has). repo/indexfiles.py `read_pack_header`
fetches a header from storage with them. Everything read is hostile until proven otherwise: every
bound is checked before anything is allocated or sliced.
"""

from __future__ import annotations

import os
import struct
import threading

import zstandard

from cermin.errors import CorruptObject
from cermin.format import crypto
from cermin.format.crypto import MasterKeys
from cermin.format.index import IndexEntry

MAGIC = b"CRMNPACK"
PREFIX_LEN = len(MAGIC) + crypto.SALT_LEN  # first blob starts here
HEADER_ENTRY = struct.Struct("<BII32s")  # type, ciphertext length, raw length, id
HEADER_AAD = b"cermin/pack-header"
TRAILER = struct.Struct("<I")  # header ciphertext length, the pack's last 4 bytes
MIN_PACK_SIZE = PREFIX_LEN + crypto.TAG_LEN + TRAILER.size  # a pack with no blobs
# The smallest blob ciphertext: a codec byte (even an empty blob has one) plus the AEAD tag. Bounds
# how many entries a header of a pack of a given size can honestly list.
MIN_BLOB_LEN = 1 + crypto.TAG_LEN

DATA = 0
TREE = 1
BLOB_TYPES = {DATA: "data", TREE: "tree"}

# Payload codecs: first plaintext byte of every blob and object.
RAW = 0
ZSTD = 1

_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstandard compressors are not thread-safe: one per thread and level.
    c = getattr(_tls, "cctx", None)
    if c is None or _tls.level != level:
        c = _tls.cctx = zstandard.ZstdCompressor(level=level)
        _tls.level = level
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes | memoryview, level: int) -> bytes:
    """codec byte || payload; raw when zstd does not shrink the data (cheap for incompressible data)."""
    packed = _compressor(level).compress(data)
    if len(packed) < len(data):
        return b"\x01" + packed
    return b"\x00" + bytes(data)


# Largest plaintext of a standalone sealed object (index, snapshot, lock, aux record, config
# secrets). Index files are written in pieces far below it (repo/indexfiles.py); a zstd frame that
# declares or produces more is refused before anything that large is allocated.
MAX_OBJECT_SIZE = 256 * 1024 * 1024
MAX_BLOB_SIZE = (1 << 32) - 1  # raw lengths are u32 (pack header, index entries)


def decompress(payload: bytes | memoryview, what: str, limit: int = MAX_OBJECT_SIZE) -> bytes:
    """Decode a codec-prefixed payload into at most `limit` bytes (a blob's declared raw length, or
    MAX_OBJECT_SIZE): a decompression bomb is CorruptObject, never an unbounded allocation."""
    if not payload:
        raise CorruptObject(f"{what}: empty payload")
    codec = payload[0]
    if codec == RAW:
        if len(payload) - 1 > limit:
            raise CorruptObject(f"{what}: {len(payload) - 1} bytes, more than the {limit} declared")
        return bytes(payload[1:])
    if codec == ZSTD:
        frame = memoryview(payload)[1:]
        try:
            size = zstandard.frame_content_size(frame)
            if size > limit:  # zstandard would allocate the declared size up front
                raise CorruptObject(f"{what}: zstd frame declares {size} bytes, more than the {limit} allowed")
            # With no declared size (-1) the output is capped; a frame that needs more is an error.
            return _decompressor().decompress(frame, max_output_size=limit if size < 0 else 0)
        except zstandard.ZstdError as e:
            raise CorruptObject(f"{what}: bad zstd data ({e})") from None
    raise CorruptObject(f"{what}: unknown codec {codec}")


def blob_aad(blob_type: int, blob_id: bytes) -> bytes:
    return bytes((blob_type,)) + blob_id


SPOOL_WRITE = 1 << 20  # a spooled pack goes to its file in writes of about this much


class PackBuilder:
    """Accumulates encrypted blobs; not thread-safe (the caller owns one at a time).

    In memory, `finish` returns the pack's bytes. With `spool` (a callable returning a
    `Backend.spool`, a temporary file that is read back `whole`, or None) a pack past SPOOL_WRITE goes
    to that file as it grows, in writes of about that much. A store's own spool is hashed once written:
    `seal` writes the rest and the header and returns the pack's name, and the caller commits or
    discards `self.spool`; a `whole` one is read back by `finish`. Memory stays at one write, not one pack; a pack
    that never reached SPOOL_WRITE stays in memory (`spool` None). A write that fails breaks the
    builder: what the file holds is unknown, so it is only ever discarded."""

    def __init__(self, keys: MasterKeys, spool=None) -> None:
        salt = os.urandom(crypto.SALT_LEN)
        self._cipher = keys.object_cipher(salt)
        self._parts: list[bytes] = [MAGIC, salt]
        self._buffered = PREFIX_LEN
        self._open_spool = spool
        self.spool = None
        self._hash = None
        self.broken = False
        self.entries: list[IndexEntry] = []
        self.size = PREFIX_LEN

    def add(self, blob_type: int, blob_id: bytes, payload: bytes, raw_len: int) -> None:
        if self.broken:
            raise CorruptObject("internal error: a pack whose write failed was given another blob")
        ct = self._cipher.encrypt(crypto.blob_nonce(self.size), payload, blob_aad(blob_type, blob_id))
        self.entries.append(IndexEntry(blob_id, blob_type, self.size, len(ct), raw_len))
        self._parts.append(ct)
        self.size += len(ct)
        self._buffered += len(ct)
        if self._buffered >= SPOOL_WRITE and self._spooling():
            self._write()

    def __len__(self) -> int:
        return len(self.entries)

    def _spooling(self) -> bool:
        """Open the spool at the first write (a file exists only while it is being written)."""
        if self._open_spool is not None:
            self.spool, self._open_spool = self._open_spool(), None
            if self.spool is not None and not self.spool.whole:  # a spool read back is hashed then
                self._hash = crypto.file_hasher()
        return self.spool is not None

    def _write(self) -> None:
        try:
            self.spool.write(self._parts)
        except BaseException:
            self.broken = True  # part of it may be in the file: never sealed, only discarded
            raise
        if self._hash is not None:
            for p in self._parts:  # hashed only once written: the name is that of the file's bytes
                self._hash.update(p)
        self._parts, self._buffered = [], 0

    def _header(self) -> None:
        header = b"".join(HEADER_ENTRY.pack(t, ln, raw, bid) for bid, t, _, ln, raw in self.entries)
        hct = self._cipher.encrypt(crypto.HEADER_NONCE, header, HEADER_AAD)
        self._parts.append(hct)
        self._parts.append(struct.pack("<I", len(hct)))
        self.size += len(hct) + 4

    def finish(self) -> bytes:
        """The whole pack, in memory: from the parts, or read back from a spool that is `whole`."""
        self._header()
        if self.spool is None:
            data = b"".join(self._parts)
            self._parts = []
            return data
        if self.broken or not self.spool.whole:
            raise CorruptObject("internal error: a pack spooled to its store was finished in memory")
        self._write()
        data = self.spool.read()
        self.discard()
        return data

    def seal(self) -> str:
        """A spooled pack: write the rest and the header; returns its name (`crypto.file_id`)."""
        if self.broken:
            raise CorruptObject("internal error: a pack whose write failed was sealed")
        self._header()
        self._write()
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Drop the spool file, if any (the run failed, or a write did)."""
        if self.spool is not None:
            self.spool.discard()
            self.spool = None


def pack_cipher(keys: MasterKeys, pack_prefix: bytes, what: str):
    if len(pack_prefix) < PREFIX_LEN or pack_prefix[: len(MAGIC)] != MAGIC:
        raise CorruptObject(f"{what}: not a cermin pack (bad magic)")
    return keys.object_cipher(bytes(pack_prefix[len(MAGIC) : PREFIX_LEN]))


def open_blob(cipher, offset: int, blob_type: int, blob_id: bytes, ct: bytes, what: str) -> bytes:
    return crypto.decrypt(cipher, crypto.blob_nonce(offset), ct, blob_aad(blob_type, blob_id), what)


def pack_size(entries) -> int:
    """The size of a pack whose blobs are `entries` (IndexEntry; every blob of a pack is listed in its
    header, so a pack's index entries determine its size)."""
    n = 0
    end = PREFIX_LEN
    for e in entries:
        n += 1
        end = max(end, e[2] + e[3])
    return end + n * HEADER_ENTRY.size + crypto.TAG_LEN + TRAILER.size


def header_span(size: int, trailer: bytes, what: str) -> tuple[int, int]:
    """(start, length) of the header ciphertext of a pack of `size` bytes ending in `trailer` (its last
    4 bytes). Refuses lengths that do not fit the pack, partial entries, and more entries than the
    blob area could hold, before anything is read or allocated."""
    if size < MIN_PACK_SIZE:
        raise CorruptObject(f"{what} is truncated ({size} bytes)")
    if len(trailer) != TRAILER.size:
        raise CorruptObject(f"{what} is shorter than its listed size")
    (hlen,) = TRAILER.unpack(trailer)
    start = size - TRAILER.size - hlen
    if hlen < crypto.TAG_LEN or start < PREFIX_LEN:
        raise CorruptObject(f"{what}: bad header length {hlen} (truncated or damaged)")
    body = hlen - crypto.TAG_LEN
    if body % HEADER_ENTRY.size:
        raise CorruptObject(f"{what}: header size {body} is not a multiple of {HEADER_ENTRY.size}")
    n = body // HEADER_ENTRY.size
    if n * MIN_BLOB_LEN > start - PREFIX_LEN:
        raise CorruptObject(f"{what}: header lists {n} blobs, more than {start - PREFIX_LEN} blob bytes can hold")
    return start, hlen


def decode_header(cipher, header_ct: bytes | memoryview, start: int, what: str) -> list[IndexEntry]:
    """Authenticate a header ciphertext (found by header_span) and return its entries, checked against
    the blob area [PREFIX_LEN, start): known types, lengths that can hold a blob, blobs that tile the
    area exactly."""
    header = crypto.decrypt(cipher, crypto.HEADER_NONCE, header_ct, HEADER_AAD, f"{what} header")
    if len(header) % HEADER_ENTRY.size:
        raise CorruptObject(f"{what}: header size {len(header)} is not a multiple of {HEADER_ENTRY.size}")
    entries = []
    off = PREFIX_LEN
    for t, ln, raw, bid in HEADER_ENTRY.iter_unpack(header):
        entries.append(IndexEntry(bid, t, off, ln, raw))
        off += ln
    check_layout(entries, start, what, exact=True)
    return entries


def check_layout(entries, blob_end: int, what: str, exact: bool = False) -> None:
    """Refuse entries (IndexEntry, e.g. from an index file) that cannot describe blobs of one pack whose
    blob area ends at `blob_end` (where the header starts): unknown types, lengths too short for a
    blob, offsets before the first blob or past the area, overlapping blobs. `exact`: the blobs must
    also fill the area without gaps (true of every pack cermin writes)."""
    spans = []
    for e in entries:
        bid, t, off, ln = e[0], e[1], e[2], e[3]
        if t not in BLOB_TYPES:
            raise CorruptObject(f"{what}: blob {bid.hex()[:16]} has unknown type {t}")
        if ln < MIN_BLOB_LEN:
            raise CorruptObject(f"{what}: blob {bid.hex()[:16]} is {ln} bytes, too short to hold a blob")
        if off < PREFIX_LEN or off + ln > blob_end:
            raise CorruptObject(f"{what}: blob {bid.hex()[:16]} at {off}+{ln} lies outside the pack's blob area")
        spans.append((off, ln))
    spans.sort()
    pos = PREFIX_LEN
    for off, ln in spans:
        if off < pos:
            raise CorruptObject(f"{what}: blobs overlap at offset {off}")
        if exact and off != pos:
            raise CorruptObject(f"{what}: gap before the blob at offset {off}")
        pos = off + ln
    if exact and pos != blob_end:
        raise CorruptObject(
            f"{what}: header describes {pos - PREFIX_LEN} blob bytes, pack holds {blob_end - PREFIX_LEN}"
        )


def parse_header(keys: MasterKeys, pack: bytes | memoryview, what: str) -> list[IndexEntry]:
    """The entries of a whole pack held in memory, its header authenticated and validated."""
    size = len(pack)
    if size < MIN_PACK_SIZE:
        raise CorruptObject(f"{what} is truncated ({size} bytes)")
    cipher = pack_cipher(keys, pack, what)
    start, hlen = header_span(size, bytes(pack[size - TRAILER.size :]), what)
    return decode_header(cipher, memoryview(pack)[start : size - TRAILER.size], start, what)
