"""Format layer: AEAD sealing, packs, compression, index records."""

from __future__ import annotations

import os

import pytest

from cermin.errors import CorruptObject
from cermin.format import crypto, index, pack
from cermin.format.crypto import MasterKeys


def test_seal_roundtrip_and_tamper_detection():
    keys = MasterKeys.generate()
    sealed = crypto.seal(keys, b"payload", b"cermin/snapshots")
    assert crypto.unseal(keys, sealed, b"cermin/snapshots", "x") == b"payload"
    with pytest.raises(CorruptObject):
        crypto.unseal(keys, sealed, b"cermin/index", "x")  # wrong kind
    flipped = bytearray(sealed)
    flipped[40] ^= 1
    with pytest.raises(CorruptObject):
        crypto.unseal(keys, bytes(flipped), b"cermin/snapshots", "x")
    with pytest.raises(CorruptObject):
        crypto.unseal(MasterKeys.generate(), sealed, b"cermin/snapshots", "x")


def test_same_plaintext_seals_differently():
    keys = MasterKeys.generate()
    assert crypto.seal(keys, b"a", b"k") != crypto.seal(keys, b"a", b"k")


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
    assert [(e[0], e[3], e[4]) for e in entries] == [(t, bid, len(d)) for t, bid, d in blobs]
    cipher = pack.pack_cipher(keys, data, "p")
    for (t, off, ln, bid, _), (_, _, plain) in zip(entries, blobs, strict=True):
        assert pack.decompress(pack.open_blob(cipher, off, t, bid, data[off : off + ln], "b"), "b") == plain
    # A blob presented under another id (or at another offset) fails authentication.
    t, off, ln, bid, _ = entries[0]
    with pytest.raises(CorruptObject):
        pack.open_blob(cipher, off, t, entries[1][3], data[off : off + ln], "b")
    with pytest.raises(CorruptObject):
        pack.parse_header(keys, data[:-10] + b"\0" * 10, "p")
    with pytest.raises(CorruptObject):
        pack.parse_header(keys, b"NOTAPACK" + data[8:], "p")


def test_index_entries_roundtrip():
    entries = [(0, 40, 100, os.urandom(32), 200), (1, 140, 50, os.urandom(32), 70)]
    packed = index.pack_entries(entries)
    assert len(packed) == 2 * index.ENTRY.size == 90
    assert [(t, o, ln, bid, raw) for bid, t, o, ln, raw in index.iter_entries(packed)] == entries


def test_argon2id_is_deterministic_and_salted():
    p = crypto.KdfParams(1024, 1, 1)
    a = crypto.argon2id(b"pw", b"s" * 32, p)
    assert a == crypto.argon2id(b"pw", b"s" * 32, p)
    assert a != crypto.argon2id(b"pw", b"t" * 32, p)
    assert len(a) == 32
