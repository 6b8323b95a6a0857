"""engine/check.py: check names damage precisely (the pack, the snapshots and paths it costs), invalid
entry names, stale locks; subsets cover every pack."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import FAST_KDF, PASSWORD, cermin_exe
from helpers import (
    MTIME,
    Hostile,
    blob_users,
    clean,
    damage,
    fresh_copy,
    gallery_repo,
    good_entries,
    object_path,
    pack_entries,
    reopen,
    thirty_snapshots,
)

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.engine.check import run_check
from cermin.format import pack, records
from cermin.format.records import DIR, FILE, Lock, Node
from cermin.repo.lock import remove_stale_locks
from cermin.repo.repository import Repository


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """30 snapshots of a changing tree (helpers.thirty_snapshots)."""
    return thirty_snapshots(tmp_path_factory.mktemp("history"), history_sources)


history_sources: dict[str, tuple] = {}


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_any_single_pack_damage_is_found_with_snapshots_and_paths(history, tmp_path, how):
    repo, snaps = fresh_copy(history, tmp_path)
    assert len(snaps) == 30 and clean(repo)
    packs = pack_entries(repo)
    data_packs = sorted(p for p, es in packs.items() if es and es[0][1] == pack.DATA)
    tree_packs = sorted(p for p, es in packs.items() if es and es[0][1] == pack.TREE)
    assert len(data_packs) >= 5 and tree_packs
    import shutil

    for i, name in enumerate(data_packs + tree_packs[:2]):
        work = tmp_path / f"w{i}"
        shutil.copytree(repo.backend.root, work)
        r = reopen(LocalBackend(str(work)))
        entries = packs[name]
        if how == "flip":
            bid, _t, off, ln, _raw = entries[len(entries) // 2]
            damage(object_path(r, Kind.DATA, name), how, off + ln // 2)
            lost = {bid}
        else:
            damage(object_path(r, Kind.DATA, name), how)
            lost = {e[0] for e in entries}
        report = run_check(r, read_data=True)
        assert not report.ok
        assert {p.pack for p in report.errors if p.pack} == {name}, [p.message for p in report.errors]
        if name in data_packs:
            expected = blob_users(r, lost)
            assert {k: set(v) for k, v in report.affected.items()} == expected
            if how == "flip":
                err = [p for p in report.errors if p.pack == name][0]
                assert err.blobs == [b.hex() for b in lost]
        else:
            assert report.affected and all(any("whole directory" in p for p in v) for v in report.affected.values())
        shutil.rmtree(work)


def test_gallery_stale_lock(tmp_path):
    repo, *_ = gallery_repo(tmp_path)
    old = Lock(time="2020-01-01T00:00:00.000000000Z", exclusive=True, hostname="elsewhere", pid=1, operation="prune")
    repo.save_object(Kind.LOCK, records.encode(old))
    r = run_check(repo)
    assert r.ok and [p.kind for p in r.notices] == ["stale_lock"]
    assert len(remove_stale_locks(repo)) == 1
    assert not run_check(repo).notices


def test_check_subsets_cover_all_packs(tmp_path):
    repo, *_ = gallery_repo(tmp_path)
    total = len(pack_entries(repo))
    seen = sum(run_check(repo, subset=f"{n}/3").packs_read for n in (1, 2, 3))
    assert seen == total
    assert 0 < run_check(repo, subset="50%").packs_read <= total


def test_check_names_snapshot_tree_and_bad_name(local_repo, hostile):
    inner = [hostile.file(b"ok"), hostile.file(b"../../etc/passwd", b"root::0:0::/:/bin/sh\n")]
    sub_tree = hostile.tree(inner)
    sid = hostile.snapshot([Node(name=b"sub", type=DIR, subtree=sub_tree), hostile.file(b"a\x00b")])
    local_repo.load_index()
    report = run_check(local_repo)
    assert not report.ok
    msgs = [p.message for p in report.errors if p.kind == "tree_damaged"]
    assert len(msgs) == 2, [p.message for p in report.errors]
    m = next(m for m in msgs if sub_tree.hex()[:16] in m)
    assert sid[:12] in m and "'../../etc/passwd'" in m and "/sub" in m
    assert any("'a\\x00b'" in m and "NUL" in m for m in msgs)
    assert any(p.object == sub_tree.hex() for p in report.errors)
    assert sid in report.affected


@pytest.mark.parametrize("depth", [2, 40])
def test_check_names_a_few_paths_through_a_dag_of_repeated_trees(local_repo, hostile, depth):
    """Each tree names its two subdirectories `a` and `b` after the same tree below: 2^depth paths
    reach the bottom tree, which holds a bad name and a file whose data is lost. check names every
    path while there are few, then EXAMPLE_PATHS of them and how many more (no walk of 2^40)."""
    from cermin.engine.check import EXAMPLE_PATHS

    nodes = [
        hostile.file(b"..", b"bad\n"),
        Node(name=b"lost", type=FILE, size=5, content=os.urandom(32), mode=0o644, mtime_ns=MTIME),
    ]
    for _ in range(depth):
        nodes = [hostile.dir(b"a", nodes), hostile.dir(b"b", nodes)]
    sid = hostile.snapshot(nodes)
    local_repo.load_index()
    report = run_check(local_repo)
    kinds = sorted(p.kind for p in report.errors)
    assert kinds == ["blobs_missing", "tree_damaged"], [p.message for p in report.errors]
    named = next(p.message for p in report.errors if p.kind == "tree_damaged")
    paths = 2**depth
    lost = report.affected[sid]
    shown = min(paths, EXAMPLE_PATHS)
    assert len([p for p in lost if p.endswith("/lost")]) == shown
    assert len([p for p in lost if p.endswith("/'..' (invalid entry, not restored)")]) == shown
    if paths <= EXAMPLE_PATHS:
        assert {p for p in lost if p.endswith("/lost")} == {"/a/a/lost", "/a/b/lost", "/b/a/lost", "/b/b/lost"}
        assert len(lost) == 2 * paths and not any("more" in p for p in lost)
        assert named.count(f"snapshot {sid[:12]} at /") == 4 and "more" not in named
    else:
        assert sum(f"and {paths - EXAMPLE_PATHS} more paths" in p for p in lost) == 2, lost
        assert len(lost) == 2 * EXAMPLE_PATHS + 2
        assert named.count(f"snapshot {sid[:12]} at /") == 5 and f"and {paths - 5} more" in named


def test_check_clean_snapshot_has_no_name_problems(local_repo, hostile):
    hostile.snapshot(good_entries(hostile))
    local_repo.load_index()
    assert run_check(local_repo).ok


@pytest.mark.usefixtures("own_cache")
def test_check_of_tree_dag_with_one_bad_name_finishes(tmp_path):
    """Red-team reproduction (issue 14 review)."""
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


def test_check_reports_file_content_stored_as_a_tree(local_repo, hostile):
    """Format version 3 names trees and data with different keys: a file whose content id is a
    stored tree's was written by a hostile key holder (or damaged); check says so and which paths
    lose their data, where before it only asked whether the id was indexed."""
    sub_tree = hostile.tree([hostile.file(b"ok")])
    evil = Node(name=b"evil", type=FILE, size=1, content=sub_tree, mode=0o644, mtime_ns=MTIME)
    sid = hostile.snapshot([Node(name=b"sub", type=DIR, subtree=sub_tree), evil])
    local_repo.load_index()
    report = run_check(local_repo)
    assert [p.kind for p in report.errors] == ["blobs_wrong_type"], [p.message for p in report.errors]
    assert report.affected[sid] == ["/evil"]
    from cermin.engine.repair import repair_snapshots

    repair_snapshots(local_repo, forget_originals=True)  # what check's error points to: the file goes
    repo = reopen(local_repo.backend)
    assert run_check(repo).ok


def test_check_of_a_version_2_repository_takes_either_type(tmp_path, monkeypatch):
    """In version 2 one key named both, so equal ids mean equal bytes: not an error there."""
    from helpers import Hostile

    from cermin.repo import repository

    monkeypatch.setattr(repository, "FORMAT_VERSION", 2)
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    monkeypatch.undo()
    hostile = Hostile(repo)
    sub_tree = hostile.tree([hostile.file(b"ok")])
    evil = Node(name=b"evil", type=FILE, size=1, content=sub_tree, mode=0o644, mtime_ns=MTIME)
    hostile.snapshot([Node(name=b"sub", type=DIR, subtree=sub_tree), evil])
    repo.load_index()
    assert run_check(repo).ok
