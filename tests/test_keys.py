"""repo/keys.py: key slots, which of them are tried and in what order, and the KDF bounds."""

from __future__ import annotations

import os
import time

import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import plant

from cermin.backend.base import Kind
from cermin.errors import UsageError
from cermin.format import crypto
from cermin.repo import keys as keyslots
from cermin.repo.repository import Repository

PW = PASSWORD.encode()


def _slot(master: bytes, password: bytes, **fields) -> bytes:
    kf = keyslots.make_keyfile(master, password, FAST_KDF)
    for k, v in fields.items():
        setattr(kf, k, v)
    return keyslots.encode_keyfile(kf)


@pytest.mark.usefixtures("own_cache")
def test_key_slot_with_hostile_kdf_parameters_is_skipped(mem_repo):
    be = mem_repo.backend
    for fields in (
        {"memory_kib": 1 << 40},
        {"iterations": 1 << 32},
        {"lanes": 1 << 20},
        {"memory_kib": 0},
    ):
        plant(be, Kind.KEY, _slot(os.urandom(32), PW, **fields))
    t = time.monotonic()
    repo = Repository.open(be, PW)
    assert time.monotonic() - t < 10
    assert repo.key_name == mem_repo.key_name
    assert sum("outside" in w for w in repo.warnings) == 4


@pytest.mark.usefixtures("own_cache")
def test_key_slot_not_named_by_its_content_is_skipped(mem_repo):
    be = mem_repo.backend
    good = be.load(Kind.KEY, mem_repo.key_name)
    be.save(Kind.KEY, "0" * 64, good)  # a copy under a name that is not its hash
    repo = Repository.open(be, PW)
    assert repo.key_name == mem_repo.key_name
    assert any("does not match its name" in w for w in repo.warnings)


@pytest.mark.usefixtures("own_cache")
def test_slot_wrapping_another_key_under_the_same_password_is_skipped(mem_repo):
    """Someone with the password plants a cheap slot around a different master key: opening must
    go on to the real slot instead of failing on the config."""
    be = mem_repo.backend
    cheap = crypto.KdfParams(1024, 1, 1)
    while True:
        data = keyslots.encode_keyfile(keyslots.make_keyfile(os.urandom(32), PW, cheap))
        if crypto.file_id(data) < mem_repo.key_name:  # tried first by name order too
            break
    plant(be, Kind.KEY, data)
    repo = Repository.open(be, PW)
    assert repo.key_name == mem_repo.key_name
    assert any("does not fit" in w for w in repo.warnings)


@pytest.mark.usefixtures("own_cache")
def test_last_used_slot_is_tried_first(mem_repo, monkeypatch):
    from cermin.repo.keyops import add_key

    second = add_key(mem_repo, b"other password", FAST_KDF)
    assert Repository.open(mem_repo.backend, b"other password").key_name == second
    calls = []
    real = keyslots.unwrap
    monkeypatch.setattr(keyslots, "unwrap", lambda kf, pw: calls.append(kf) or real(kf, pw))
    assert Repository.open(mem_repo.backend, b"other password").key_name == second
    assert len(calls) == 1, "the remembered slot opens with one derivation"
    cached = os.listdir(keyslots.cache_dir())
    assert cached == [mem_repo.config.id]
    assert open(os.path.join(keyslots.cache_dir(), cached[0])).read().strip() == second  # a name, no secret


@pytest.mark.usefixtures("own_cache")
def test_make_keyfile_refuses_out_of_bounds_parameters():
    with pytest.raises(UsageError):
        keyslots.make_keyfile(os.urandom(32), PW, crypto.KdfParams(1024, 65, 1))
    assert crypto.KdfParams(1024, 1, 1).problem() is None  # the tests' FAST_KDF stays valid
