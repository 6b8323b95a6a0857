"""format/pack.py: packs, compression, hostile headers and decompression bombs."""

from __future__ import annotations

import os
import struct

import pytest
from helpers import plant, reopen, two_backups

from cermin.backend.base import Kind
from cermin.errors import CorruptObject
from cermin.format import crypto, pack, records
from cermin.format.crypto import MasterKeys
from cermin.repo.snapshots import list_snapshots


@pytest.fixture
def history(tmp_path):
    return two_backups(tmp_path, files=8)


def test_compress_keeps_raw_when_it_does_not_shrink():
    rnd = os.urandom(100_000)
    c = pack.compress(rnd, 3)
    assert c[0] == pack.RAW and c[1:] == rnd
    text = b"abc" * 100_000
    c = pack.compress(text, 3)
    assert c[0] == pack.ZSTD and len(c) < 1000
    assert pack.decompress(c, "t") == text
    with pytest.raises(CorruptObject):
        pack.decompress(b"\x07xyz", "t")


def test_pack_build_parse_and_open_blobs():
    keys = MasterKeys.generate()
    b = pack.PackBuilder(keys)
    blobs = [(pack.DATA, os.urandom(32), os.urandom(1000)), (pack.TREE, os.urandom(32), b"tree" * 50)]
    for t, bid, data in blobs:
        b.add(t, bid, pack.compress(data, 3), len(data))
    data = b.finish()
    assert data[:8] == pack.MAGIC
    entries = pack.parse_header(keys, data, "p")
    assert entries == b.entries
    assert [(e.type, e.blob_id, e.raw_length) for e in entries] == [(t, bid, len(d)) for t, bid, d in blobs]
    assert pack.pack_size(entries) == len(data)
    cipher = pack.pack_cipher(keys, data, "p")
    for e, (_, _, plain) in zip(entries, blobs, strict=True):
        ct = data[e.offset : e.end]
        assert pack.decompress(pack.open_blob(cipher, e.offset, e.type, e.blob_id, ct, "b"), "b") == plain
    # A blob presented under another id (or at another offset) fails authentication.
    bid, t, off, ln, _ = entries[0]
    with pytest.raises(CorruptObject):
        pack.open_blob(cipher, off, t, entries[1].blob_id, data[off : off + ln], "b")
    with pytest.raises(CorruptObject):
        pack.parse_header(keys, data[:-10] + b"\0" * 10, "p")
    with pytest.raises(CorruptObject):
        pack.parse_header(keys, b"NOTAPACK" + data[8:], "p")


# ---- hostile pack headers: written with the key, so authentication passes; the layout must not ----
def _hostile_pack(keys, header_entries, blob_bytes: int, hlen: int | None = None) -> bytes:
    """A pack with `blob_bytes` of blob area and an authentic header listing `header_entries`
    (type, ciphertext length, raw length, id); `hlen` overrides the trailer."""
    salt = os.urandom(crypto.SALT_LEN)
    cipher = keys.object_cipher(salt)
    header = b"".join(pack.HEADER_ENTRY.pack(*e) for e in header_entries)
    hct = cipher.encrypt(crypto.HEADER_NONCE, header, pack.HEADER_AAD)
    trailer = (len(hct) if hlen is None else hlen).to_bytes(4, "little")
    return pack.MAGIC + salt + os.urandom(blob_bytes) + hct + trailer


def test_hostile_headers_are_refused():
    keys = MasterKeys.generate()
    bid = os.urandom(32)
    ok = _hostile_pack(keys, [(pack.DATA, 100, 80, bid), (pack.TREE, 50, 40, bid)], 150)
    assert [(e.offset, e.length) for e in pack.parse_header(keys, ok, "p")] == [(40, 100), (140, 50)]
    cases = {
        "blobs run past the header": _hostile_pack(keys, [(pack.DATA, 100, 80, bid), (pack.DATA, 100, 1, bid)], 150),
        "blobs end before the header": _hostile_pack(keys, [(pack.DATA, 100, 80, bid)], 150),
        "length too short for a blob": _hostile_pack(keys, [(pack.DATA, 0, 0, bid), (pack.DATA, 150, 1, bid)], 150),
        "unknown type": _hostile_pack(keys, [(7, 150, 80, bid)], 150),
        "absurd count": _hostile_pack(keys, [(pack.DATA, 17, 0, bid)] * 10, 150),
        "trailer past the start": _hostile_pack(keys, [(pack.DATA, 150, 80, bid)], 150, hlen=2**32 - 1),
        "trailer below a tag": _hostile_pack(keys, [(pack.DATA, 150, 80, bid)], 150, hlen=3),
        "partial entry": _hostile_pack(keys, [(pack.DATA, 150, 80, bid)], 150, hlen=crypto.TAG_LEN + 42),
        "too short for any pack": pack.MAGIC + b"\0" * 20,
    }
    for why, data in cases.items():
        with pytest.raises(CorruptObject):
            pack.parse_header(keys, data, why)
            pytest.fail(why)
    # the count bound is checked from the trailer alone, before decryption
    hlen = crypto.TAG_LEN + pack.HEADER_ENTRY.size * 10
    with pytest.raises(CorruptObject, match="more than"):
        pack.header_span(pack.PREFIX_LEN + 100 + hlen + 4, hlen.to_bytes(4, "little"), "p")
    assert pack.header_span(pack.PREFIX_LEN + 170 + hlen + 4, hlen.to_bytes(4, "little"), "p") == (
        pack.PREFIX_LEN + 170,
        hlen,
    )


# ---- decompression bombs ----------------------------------------------------------------------
def _bomb(declared: int) -> bytes:
    """A zstd frame whose header declares `declared` bytes of content (8-byte size field)."""
    payload = b"x" * 100
    return (
        b"\x28\xb5\x2f\xfd"
        + bytes([0xE0])
        + struct.pack("<Q", declared)
        + struct.pack("<I", 1 | (len(payload) << 3))[:3]
        + payload
    )


@pytest.mark.usefixtures("own_cache")
def test_bomb_in_blob_is_refused_by_its_declared_length(mem_repo):
    repo = mem_repo
    data = b"hello"
    bid = repo.blob_id(data)
    b = pack.PackBuilder(repo.keys)
    b.add(pack.DATA, bid, b"\x01" + _bomb(1 << 40), len(data))
    entries = list(b.entries)
    pack_bytes = b.finish()
    pid = crypto.file_id(pack_bytes)
    repo.backend.save(Kind.DATA, pid, pack_bytes)
    from cermin.format import index as fmt_index

    repo.save_index([records.IndexPack(bytes.fromhex(pid), fmt_index.pack_entries(entries))])
    repo = reopen(repo.backend)
    with pytest.raises(CorruptObject, match="declares"):
        repo.load_blob(bid)


@pytest.mark.usefixtures("own_cache")
def test_bomb_in_index_and_snapshot_objects_is_skipped(history):
    repo, _src, first, second = history
    for kind in (Kind.INDEX, Kind.SNAPSHOT):
        data = crypto.seal(repo.keys, b"\x01" + _bomb(1 << 40), b"cermin/" + kind.value.encode())
        plant(repo.backend, kind, data)
    repo = reopen(repo.backend)
    assert any("declares" in w for w in repo.warnings)
    assert {r.id for r in list_snapshots(repo)} == {first, second}


@pytest.mark.usefixtures("own_cache")
def test_decompress_caps_frames_without_a_size():
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (4 << 20))
    with pytest.raises(CorruptObject):
        pack.decompress(b"\x01" + frame, "x", 1 << 20)
    assert len(pack.decompress(b"\x01" + frame, "x", 4 << 20)) == 4 << 20
    with pytest.raises(CorruptObject):
        pack.decompress(b"\x00" + b"a" * 10, "x", 9)
