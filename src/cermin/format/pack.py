"""Pack files: many encrypted blobs plus an encrypted header, so an index can be rebuilt from packs.

Layout (FORMAT.md "Pack files"):
  magic "CRMNPACK" (8) | salt (32) | blob ciphertexts ... | header ciphertext | header length u32 LE
A blob is AES-GCM(pack key, nonce = its offset in the pack as 12-byte big-endian, payload,
aad = type byte || blob id); offsets are unique within a pack, so nonces never repeat.
The header lists, for each blob in order, type u8 | ciphertext length u32 | raw length u32 | id (32).
"""

from __future__ import annotations

import os
import struct
import threading

import zstandard

from cermin.errors import CorruptObject
from cermin.format import crypto
from cermin.format.crypto import MasterKeys

MAGIC = b"CRMNPACK"
PREFIX_LEN = len(MAGIC) + crypto.SALT_LEN  # first blob starts here
HEADER_ENTRY = struct.Struct("<BII32s")  # type, ciphertext length, raw length, id
HEADER_AAD = b"cermin/pack-header"

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


class PackBuilder:
    """Accumulates encrypted blobs in memory; not thread-safe (the caller owns one at a time)."""

    def __init__(self, keys: MasterKeys) -> None:
        salt = os.urandom(crypto.SALT_LEN)
        self._cipher = keys.object_cipher(salt)
        self._parts: list[bytes] = [MAGIC, salt]
        self.entries: list[tuple[int, int, int, bytes, int]] = []  # type, offset, length, id, raw_len
        self.size = PREFIX_LEN

    def add(self, blob_type: int, blob_id: bytes, payload: bytes, raw_len: int) -> None:
        ct = self._cipher.encrypt(crypto.blob_nonce(self.size), payload, blob_aad(blob_type, blob_id))
        self.entries.append((blob_type, self.size, len(ct), blob_id, raw_len))
        self._parts.append(ct)
        self.size += len(ct)

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self) -> bytes:
        header = b"".join(HEADER_ENTRY.pack(t, ln, raw, bid) for t, _, ln, bid, raw in self.entries)
        hct = self._cipher.encrypt(crypto.HEADER_NONCE, header, HEADER_AAD)
        self._parts.append(hct)
        self._parts.append(struct.pack("<I", len(hct)))
        data = b"".join(self._parts)
        self._parts = []
        return data


def pack_cipher(keys: MasterKeys, pack_prefix: bytes, what: str):
    if len(pack_prefix) < PREFIX_LEN or pack_prefix[: len(MAGIC)] != MAGIC:
        raise CorruptObject(f"{what}: not a cermin pack (bad magic)")
    return keys.object_cipher(bytes(pack_prefix[len(MAGIC) : PREFIX_LEN]))


def open_blob(cipher, offset: int, blob_type: int, blob_id: bytes, ct: bytes, what: str) -> bytes:
    return crypto.decrypt(cipher, crypto.blob_nonce(offset), ct, blob_aad(blob_type, blob_id), what)


def parse_header(keys: MasterKeys, pack: bytes, what: str) -> list[tuple[int, int, int, bytes, int]]:
    """Return [(type, offset, length, id, raw_len)] from a whole pack file, authenticating the header."""
    if len(pack) < PREFIX_LEN + 4:
        raise CorruptObject(f"{what}: truncated ({len(pack)} bytes)")
    cipher = pack_cipher(keys, pack, what)
    (hlen,) = struct.unpack_from("<I", pack, len(pack) - 4)
    start = len(pack) - 4 - hlen
    if hlen < crypto.TAG_LEN or start < PREFIX_LEN:
        raise CorruptObject(f"{what}: bad header length {hlen}")
    header = crypto.decrypt(cipher, crypto.HEADER_NONCE, memoryview(pack)[start:-4], HEADER_AAD, f"{what} header")
    if len(header) % HEADER_ENTRY.size:
        raise CorruptObject(f"{what}: header size {len(header)} is not a multiple of {HEADER_ENTRY.size}")
    entries = []
    off = PREFIX_LEN
    for t, ln, raw, bid in HEADER_ENTRY.iter_unpack(header):
        entries.append((t, off, ln, bid, raw))
        off += ln
    if off != start:
        raise CorruptObject(f"{what}: header describes {off - PREFIX_LEN} blob bytes, pack holds {start - PREFIX_LEN}")
    return entries
