"""repo/keyops.py: adding, removing and changing key slots."""

from __future__ import annotations

import pytest
from conftest import FAST_KDF, PASSWORD

from cermin.errors import (
    WrongPassword,
)
from cermin.repo import keyops
from cermin.repo.repository import Repository


def test_key_slots_add_remove_passwd(local_repo):
    k2 = keyops.add_key(local_repo, b"second", FAST_KDF)
    r2 = Repository.open(local_repo.backend, b"second")
    assert r2.key_name == k2 and r2.keys.master == local_repo.keys.master
    assert {k.id for k in keyops.list_keys(local_repo)} == {local_repo.key_name, k2}
    with pytest.raises(Exception, match="in use"):
        keyops.remove_key(r2, k2[:10])
    keyops.remove_key(r2, local_repo.key_name[:10])
    with pytest.raises(WrongPassword):
        Repository.open(local_repo.backend, PASSWORD.encode())
    keyops.change_password(r2, b"third", FAST_KDF)
    with pytest.raises(WrongPassword):
        Repository.open(local_repo.backend, b"second")
    assert Repository.open(local_repo.backend, b"third").keys.master == local_repo.keys.master
