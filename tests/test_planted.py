"""Cross-cutting (open, backup, forget, prune, check, repair, CLI): planted index, snapshot and aux objects
(put in by someone holding a storage credential or a backup token, not the key) block nothing. The
per-module cases of issue 14 (key slots, bombs, future-dated records, protection, tombstones) are in
test_keys, test_pack, test_snapshots, test_forget, test_lock, test_prune and test_backup."""

from __future__ import annotations

import os

import msgspec
import pytest
from conftest import PASSWORD
from helpers import backup, make_source, mutate_source, plant, restores_identically, two_backups

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.engine.check import run_check
from cermin.engine.forget import KeepPolicy, forget
from cermin.engine.prune import execute_prune, plan_prune
from cermin.engine.repair import repair_index, repair_snapshots
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots

PW = PASSWORD.encode()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))


def open_repo(backend) -> Repository:
    repo = Repository.open(backend, PW)
    repo.load_index()
    return repo


@pytest.fixture
def history(tmp_path):
    return two_backups(tmp_path, files=8)


def test_planted_index_snapshot_and_aux_block_nothing(history, tmp_path):
    repo, src, first, second = history
    be = repo.backend
    planted = {
        (Kind.INDEX, plant(be, Kind.INDEX, os.urandom(300))),
        (Kind.SNAPSHOT, plant(be, Kind.SNAPSHOT, os.urandom(300))),
        (Kind.AUX, plant(be, Kind.AUX, os.urandom(300))),
    }
    # Records that authenticate but are garbage once decoded (written by someone with the key).
    planted.add((Kind.INDEX, repo.save_object(Kind.INDEX, b"\x93not an index")))
    planted.add((Kind.SNAPSHOT, repo.save_object(Kind.SNAPSHOT, msgspec.msgpack.encode({"time": 5}))))

    repo = open_repo(be)  # used to raise: every command stopped here
    skipped = [w for w in repo.warnings if w.startswith("index file")]
    assert len(skipped) == 2 and len(repo.skipped_index_files) == 2
    assert {r.id for r in list_snapshots(repo)} == {first, second}

    restores_identically(repo, second, src, tmp_path / "restore")
    mutate_source(src, 2)
    third = backup(repo, src)
    restores_identically(open_repo(be), third, src, tmp_path / "restore3")

    res = forget(repo, policy=KeepPolicy(last=2))
    assert res.removed == [first]
    plan = plan_prune(repo)  # used to refuse: "snapshot files cannot be read" / "index files are damaged"
    assert sorted(plan.foreign) == sorted(f"{k.value}/{n}" for k, n in planted if k is not Kind.AUX)
    execute_prune(repo, plan)
    for kind, name in planted:  # reported, not deleted blindly
        assert be.exists(kind, name)

    report = run_check(open_repo(be), read_data=True)
    assert report.ok, [p.message for p in report.errors]
    named = {p.object for p in report.notices if p.kind == "foreign_object"}
    assert named == {f"{k.value}/{n}" for k, n in planted}

    r = repair_index(open_repo(be))
    assert len(r.foreign) == 2
    rs = repair_snapshots(open_repo(be))
    assert len(rs.foreign) == 2 and not rs.unreadable_removed
    for kind, name in planted:
        assert be.exists(kind, name)
    restores_identically(open_repo(be), third, src, tmp_path / "restore4")


def test_cli_reports_planted_objects_and_keeps_working(initialized_cli, tmp_path):
    import json

    cli = initialized_cli
    src = tmp_path / "src"
    make_source(src, files=4)
    cli("backup", str(src))
    be = LocalBackend(cli.repo)
    idx = plant(be, Kind.INDEX, os.urandom(200))
    snap = plant(be, Kind.SNAPSHOT, os.urandom(200))
    r = cli("backup", str(src))
    assert f"index file {idx[:12]} skipped" in r.stderr.decode()
    r = cli("snapshots")
    assert snap[:8] in r.stderr.decode() and b"2 snapshots" in r.stdout
    cli("restore", "latest", "--target", str(tmp_path / "out"))
    cli("forget", "--keep-last", "1", "--prune")
    out = [json.loads(x) for x in cli("--json", "check").stdout.splitlines()]
    assert out[-1]["ok"] is True
    assert {o["object"] for o in out if o.get("kind") == "foreign_object"} == {f"index/{idx}", f"snapshots/{snap}"}
    assert be.exists(Kind.INDEX, idx) and be.exists(Kind.SNAPSHOT, snap)
