"""repo/repository.py: open/init, config validation and write-once objects."""

from __future__ import annotations

import json
import os

import pytest
from conftest import FAST_KDF, PASSWORD

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.backend.memory import MemoryBackend
from cermin.errors import (
    CorruptObject,
    ObjectExists,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedVersion,
    WrongPassword,
)
from cermin.repo.repository import Repository


def test_open_with_right_and_wrong_password(local_repo):
    r = Repository.open(local_repo.backend, PASSWORD.encode())
    assert r.config.id == local_repo.config.id
    assert r.secrets.id_key == local_repo.secrets.id_key
    with pytest.raises(WrongPassword):
        Repository.open(local_repo.backend, b"wrong")


def test_init_twice_refused(local_repo):
    with pytest.raises(RepositoryExists):
        Repository.init(local_repo.backend, b"x", kdf=FAST_KDF)


def test_missing_repository(tmp_path):
    with pytest.raises(RepositoryNotFound):
        Repository.open(LocalBackend(str(tmp_path / "nothing")), b"x")


def test_unknown_version_refused_before_password(local_repo):
    path = os.path.join(local_repo.backend.root, "config")
    cfg = json.load(open(path))
    cfg["version"] = 99
    os.chmod(path, 0o600)
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(UnsupportedVersion, match="version 99"):
        Repository.open(local_repo.backend, b"irrelevant")


def test_corrupted_config_and_secrets(local_repo):
    path = os.path.join(local_repo.backend.root, "config")
    os.chmod(path, 0o600)
    original = open(path, "rb").read()
    open(path, "wb").write(original[:20])
    with pytest.raises(CorruptObject, match="config"):
        Repository.open(local_repo.backend, PASSWORD.encode())
    cfg = json.loads(original)
    cfg["id"] = "00" * 32  # secrets are bound to the id
    open(path, "w").write(json.dumps(cfg))
    with pytest.raises(CorruptObject, match="config"):
        Repository.open(local_repo.backend, PASSWORD.encode())


def test_corrupted_key_file(local_repo):
    ((name, _),) = local_repo.backend.list(Kind.KEY)
    path = os.path.join(local_repo.backend.root, "keys", name)
    os.chmod(path, 0o600)
    open(path, "wb").write(b"{not json")
    with pytest.raises(CorruptObject, match="key file"):
        Repository.open(local_repo.backend, PASSWORD.encode())


def test_objects_are_write_once(local_repo):
    name = local_repo.save_object(Kind.SNAPSHOT, b"abc")
    with pytest.raises(ObjectExists):
        local_repo.backend.save(Kind.SNAPSHOT, name, b"other bytes")
    assert local_repo.load_object(Kind.SNAPSHOT, name) == b"abc"
    mode = os.stat(os.path.join(local_repo.backend.root, "snapshots", name)).st_mode
    assert mode & 0o222 == 0, "stored objects are read-only"
    mem = MemoryBackend()
    mem.save(Kind.DATA, "x", b"1")
    with pytest.raises(ObjectExists):
        mem.save(Kind.DATA, "x", b"2")


def test_damaged_object_detected_by_name(local_repo):
    name = local_repo.save_object(Kind.SNAPSHOT, b"abc")
    path = os.path.join(local_repo.backend.root, "snapshots", name)
    os.chmod(path, 0o600)
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptObject, match="damaged"):
        local_repo.load_object(Kind.SNAPSHOT, name)


def test_tree_cache_is_bounded_by_size(local_repo):
    """Decoded trees are cached by their encoded size too: 256 trees of 1,000 files held ~180 MiB."""
    from cermin.format import pack, records
    from cermin.format.records import FILE, Node, Tree
    from cermin.repo import repository
    from cermin.repo.saver import BlobSaver

    saver = BlobSaver(local_repo)
    ids = []
    for t in range(12):
        nodes = [Node(name=b"file-%d-%05d" % (t, i), type=FILE, size=i, mode=0o644) for i in range(20_000)]
        data = records.encode(Tree(nodes=nodes))
        ids.append(local_repo.tree_id(data))
        saver.save(pack.TREE, ids[-1], data)
    saver.flush()
    for tid in ids:
        assert len(local_repo.load_tree(tid).nodes) == 20_000
    assert 0 < local_repo._tree_cache_bytes <= repository.TREE_CACHE_BYTES
    assert len(local_repo._tree_cache) < len(ids)
    before = dict(local_repo._tree_cache)
    local_repo.load_tree(ids[0], cache=False)
    assert dict(local_repo._tree_cache) == before
