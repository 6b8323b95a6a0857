"""Red-team reproductions (issue 14 review): holes still open after the fixes. Each test states what
should hold; they are xfail(strict) until fixed. Scripts: /tmp/redteam/{engine,s3,restore}."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FAST_KDF, PASSWORD, cermin_exe
from helpers import Hostile, backup, make_source, mutate_source, small_repo

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.engine.forget import forget
from cermin.engine.objectlock import needed_objects
from cermin.engine.protect import protect
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.format import records
from cermin.format.records import AuxRecord, Snapshot
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.snapshots import resolve, retained_snapshot_names
from cermin.util import now_rfc3339


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def history(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=4)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    first = backup(repo, src)
    mutate_source(src, 1)
    second = backup(repo, src)
    return repo, first, second


def test_library_caller_cannot_forget_protected_snapshot_by_passing_now(history):
    repo, first, _ = history
    protect(repo, resolve(repo, first), datetime.now(UTC) + timedelta(days=365))
    try:
        forget(repo, [first], now=datetime(2999, 1, 1, tzinfo=UTC))
    except Exception:
        pass
    assert first in {n for n, _ in repo.backend.list(Kind.SNAPSHOT)}, "protected snapshot was forgotten"


def test_superseding_index_does_not_drop_packs_from_lock_maintenance(history):
    repo, _, _ = history
    before = {name for kind, name in needed_objects(repo) if kind is Kind.DATA}
    view = read_index_view(repo)
    # the attacker holds the password: an index file that names no pack and supersedes every real one
    repo.save_object(
        Kind.INDEX, records.encode(records.IndexFile(packs=[], supersedes=[bytes.fromhex(n) for n in view.files]))
    )
    after = {name for kind, name in needed_objects(repo) if kind is Kind.DATA}
    assert before <= after, f"{len(before - after)} packs the snapshots need would no longer be re-locked"


def test_tombstones_cannot_hide_the_real_newest_behind_a_fake_newer_snapshot(history):
    repo, first, second = history
    real = repo.load_snapshot(second)
    repo.save_snapshot(Snapshot(time=now_rfc3339(), tree=real.tree, paths=real.paths, hostname=real.hostname))
    for sid in (first, second):
        repo.save_object(Kind.AUX, records.encode(AuxRecord(type="forgotten", time=now_rfc3339(), target=sid)))
    assert second in retained_snapshot_names(repo), "the newest real snapshot is no longer kept locked"


def test_check_of_tree_dag_with_one_bad_name_finishes(tmp_path):
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    h = Hostile(repo)
    nodes = [h.file(b"..", b"bad\n"), h.file(b"f", b"x\n")]
    for _ in range(40):
        nodes = [h.dir(b"a", nodes), h.dir(b"b", nodes)]
    h.snapshot(nodes)
    env = dict(os.environ, CERMIN_PASSWORD=PASSWORD)
    try:
        r = subprocess.run(
            cermin_exe() + ["-r", str(tmp_path / "repo"), "check"], capture_output=True, env=env, timeout=20
        )
    except subprocess.TimeoutExpired:
        pytest.fail("check still running after 20 s (41 trees)")
    assert r.returncode == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="setting security.capability needs root")
def test_no_owner_no_special_drop_file_capabilities(tmp_path):
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    h = Hostile(repo)
    cap = bytes.fromhex("0100000280000000000000000000000000000000")  # cap_setuid=ep
    sid = h.snapshot([h.file(b"x", b"#!/bin/sh\nid\n", mode=0o755, xattrs=[(b"security.capability", cap)])])
    t = tmp_path / "t"
    run_restore(repo, repo.load_snapshot(sid), RestoreOptions(target=str(t), workers=1, no_owner=True, no_special=True))
    try:
        os.getxattr(t / "x", "security.capability")
    except OSError:
        return
    pytest.fail("a cap_setuid=ep file was restored although --no-owner --no-special were given")


def test_planted_present_dated_snapshot_does_not_pass_its_contents_to_the_next_backup(tmp_path):
    from cermin.engine.backup import BackupOptions, run_backup
    from cermin.format import pack
    from cermin.format.records import DIR, FILE, Node, Tree
    from cermin.repo.saver import BlobSaver

    src = tmp_path / "src"
    src.mkdir()
    (src / "authorized_keys").write_bytes(b"ssh-ed25519 AAAA owner\n")
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    real = repo.load_snapshot(backup(repo, src))
    saver = BlobSaver(repo, builders=1)
    evil = b"ssh-ed25519 EVIL attack"  # same size, same metadata: only the content differs

    def rewrite(tree_id: bytes) -> bytes:
        nodes = []
        for n in repo.load_tree(tree_id).nodes:
            fields = {f: getattr(n, f) for f in n.__struct_fields__}
            if n.type == DIR:
                n = Node(**fields | {"subtree": rewrite(n.subtree)})
            elif n.type == FILE and n.name == b"authorized_keys":
                bid = repo.blob_id(evil)
                saver.save(pack.DATA, bid, evil)
                n = Node(**fields | {"content": bid})
            nodes.append(n)
        data = records.encode(Tree(nodes=nodes))
        tid = repo.blob_id(data)
        saver.save(pack.TREE, tid, data)
        return tid

    tid = rewrite(real.tree)
    saver.flush()
    saver.close()
    repo.save_snapshot(Snapshot(time=now_rfc3339(), tree=tid, paths=real.paths, hostname=real.hostname))
    new = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=1)).snapshot_id
    run_restore(repo, repo.load_snapshot(new), RestoreOptions(target=str(tmp_path / "out"), workers=1))
    restored = (tmp_path / "out" / str(src).lstrip("/") / "authorized_keys").read_bytes()
    assert restored == b"ssh-ed25519 AAAA owner\n", f"the new backup holds the planted content {restored!r}"
