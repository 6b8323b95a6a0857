"""Tree ids are keyed apart from data ids (format version 3): a file whose bytes equal a tree's
encoding (an empty directory's is the single byte 0x80) and that tree never deduplicate into each
other, in either order; a version 2 repository keeps its own ids and stays readable."""

from __future__ import annotations

import os

import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import assert_same_tree, do_backup, do_restore, reopen

from cermin.backend.local import LocalBackend
from cermin.format import pack, records
from cermin.format.records import Tree
from cermin.repo import repository
from cermin.repo.repository import Repository


def _check_clean(repo) -> None:
    from cermin.engine.check import run_check

    r = run_check(reopen(repo.backend), read_data=True)
    assert not r.errors, r.errors


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("order", ["one-backup", "file-first", "dir-first"])
def test_a_file_holding_an_empty_trees_bytes_restores_and_so_do_empty_dirs(tmp_path, monkeypatch, order, version):
    """Version 3 keeps the two apart; version 2 (one key for both) stored one blob for both, which
    readers now accept as either type (equal ids under one key mean equal bytes)."""
    monkeypatch.setattr(repository, "FORMAT_VERSION", version)
    local_repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    monkeypatch.undo()
    empty = records.encode(Tree(nodes=[]))
    assert empty == b"\x80"  # what makes the collision one byte away
    src = tmp_path / "src"
    src.mkdir()
    if order != "dir-first":
        (src / "x80").write_bytes(empty)
    if order == "one-backup":
        (src / "empty").mkdir()
    do_backup(local_repo, src)
    if order == "file-first":
        (src / "empty").mkdir()
    elif order == "dir-first":
        (src / "empty").mkdir()
        do_backup(reopen(local_repo.backend), src)
        (src / "x80").write_bytes(empty)
    repo = reopen(local_repo.backend)
    s = do_backup(repo, src)
    r = do_restore(reopen(local_repo.backend), s.snapshot_id, tmp_path / "out")
    assert not r.errors, r.errors
    assert_same_tree(src, tmp_path / "out" / str(src).lstrip("/"))
    assert (local_repo.tree_id(empty) != local_repo.blob_id(empty)) == (version == 3)
    _check_clean(local_repo)
    from cermin.engine.prune import plan_prune

    plan_prune(reopen(local_repo.backend))  # reads every tree of every snapshot


def test_a_version_2_repository_keeps_its_ids_and_a_copy_of_its_ids_too(tmp_path, monkeypatch):
    monkeypatch.setattr(repository, "FORMAT_VERSION", 2)
    old = Repository.init(LocalBackend(str(tmp_path / "old")), PASSWORD.encode(), kdf=FAST_KDF)
    monkeypatch.undo()
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(5000))
    s = do_backup(reopen(old.backend), src)
    repo = reopen(old.backend)
    assert repo.config.version == 2 and repo.tree_id(b"\x80") == repo.blob_id(b"\x80")
    r = do_restore(repo, s.snapshot_id, tmp_path / "out")
    assert not r.errors and (tmp_path / "out" / str(src).lstrip("/") / "d" / "f").exists()
    _check_clean(repo)
    copy = Repository.init(LocalBackend(str(tmp_path / "copy")), b"other", kdf=FAST_KDF, secrets_from=repo)
    assert copy.config.version == 2  # a mirror with the same ids names trees as its source does
    new = Repository.init(LocalBackend(str(tmp_path / "new")), b"other", kdf=FAST_KDF)
    assert new.config.version == records.FORMAT_VERSION == 3
    assert new.tree_id(b"\x80") != new.blob_id(b"\x80")
    assert new.id_of(pack.TREE, b"x") == new.tree_id(b"x") and new.id_of(pack.DATA, b"x") == new.blob_id(b"x")
