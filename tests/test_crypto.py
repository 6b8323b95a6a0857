"""format/crypto.py: AEAD sealing and the Argon2id key derivation."""

from __future__ import annotations

import pytest

from cermin.errors import CorruptObject
from cermin.format import crypto
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


def test_argon2id_is_deterministic_and_salted():
    p = crypto.KdfParams(1024, 1, 1)
    a = crypto.argon2id(b"pw", b"s" * 32, p)
    assert a == crypto.argon2id(b"pw", b"s" * 32, p)
    assert a != crypto.argon2id(b"pw", b"t" * 32, p)
    assert len(a) == 32
