"""check names damage precisely; repair brings the repository back to a clean check."""

from __future__ import annotations

import os

import pytest
from helpers import (
    backup,
    blob_users,
    damage,
    make_source,
    mutate_source,
    object_path,
    pack_entries,
    reopen,
    restores_identically,
    small_repo,
)

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.engine.check import run_check
from cermin.engine.prune import execute_prune, plan_prune
from cermin.engine.repair import repair_index, repair_packs, repair_snapshots
from cermin.format import pack, records
from cermin.format.records import Lock, Snapshot
from cermin.repo.indexfiles import read_index_view
from cermin.repo.lock import remove_stale_locks
from cermin.repo.saver import BlobSaver


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """30 snapshots of a changing tree; returns (repo dir, [snapshot ids]). Copies of the source as
    the last two snapshots saw it are kept in `history_sources` (module global, by snapshot id)."""
    import shutil

    base = tmp_path_factory.mktemp("history")
    src = base / "src"
    make_source(src, files=16)
    repo = small_repo(LocalBackend(str(base / "repo")))
    snaps = [backup(repo, src)]
    for step in range(29):
        mutate_source(src, step)
        snaps.append(backup(repo, src))
        if step >= 27:
            shutil.copytree(src, base / f"src-{snaps[-1]}", symlinks=True)
            history_sources[snaps[-1]] = (src, base / f"src-{snaps[-1]}")
    return str(base / "repo"), snaps


history_sources: dict[str, tuple] = {}


def fresh_copy(history, tmp_path) -> tuple:
    import shutil

    repo_dir, snaps = history
    dst = tmp_path / "repo"
    shutil.copytree(repo_dir, dst)
    return reopen(LocalBackend(str(dst))), snaps


def clean(repo) -> bool:
    r = run_check(repo, read_data=True)
    return r.ok


def full_repair(repo):
    repair_packs(repo)
    repair_index(repo)
    repair_snapshots(repo, forget_originals=True)


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


def test_repair_after_pack_damage_restores_what_survives(history, tmp_path):
    """Damage a pack only the newest snapshot uses: after repair the snapshot before it restores
    completely, and the newest restores every file but the ones check named as damaged."""
    import shutil

    repo, snaps = fresh_copy(history, tmp_path)
    last, before_last = snaps[-1], snaps[-2]
    packs = pack_entries(repo)
    only_last = [
        p
        for p, es in sorted(packs.items())
        if es[0][1] == pack.DATA and set(blob_users(repo, {e[0] for e in es})) == {last}
    ]
    assert only_last, "the last backup must have written a pack of its own"
    name = only_last[0]
    bid, _t, off, ln, _raw = packs[name][0]
    damage(object_path(repo, Kind.DATA, name), "flip", off + ln // 2)
    before = run_check(repo, read_data=True)
    assert not before.ok and set(before.affected) == {last}
    lost = {p.lstrip("/") for p in before.affected[last]}
    assert lost
    full_repair(repo)
    repo = reopen(repo.backend)
    after = run_check(repo, read_data=True)
    assert after.ok, [p.message for p in after.errors]
    ids = [r for r, _ in repo.backend.list(Kind.SNAPSHOT)]
    assert len(ids) == 30 and before_last in ids and last not in ids, "the damaged original is replaced"

    src, copy = history_sources[before_last]
    restores_identically(repo, before_last, src, tmp_path / "out-untouched", expected=copy)

    (repaired,) = set(ids) - set(snaps)
    src, copy = history_sources[last]
    expected = tmp_path / "expected"
    shutil.copytree(copy, expected, symlinks=True)
    for rel in lost:  # what check named as lost is left out of the repaired snapshot, nothing else
        path = expected / os.path.relpath(rel, str(src).lstrip("/"))
        parent = os.stat(path.parent)
        os.unlink(path)
        os.utime(path.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns))
    restores_identically(repo, repaired, src, tmp_path / "out-repaired", expected=expected)


def _gallery_repo(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=10)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    s1 = backup(repo, src)
    mutate_source(src, 1)
    s2 = backup(repo, src)
    return repo, src, s1, s2


def _kinds(report):
    return {p.kind for p in report.errors}


def test_gallery_missing_pack(tmp_path):
    repo, *_ = _gallery_repo(tmp_path)
    name = next(n for n, es in pack_entries(repo).items() if es[0][1] == pack.DATA)
    damage(object_path(repo, Kind.DATA, name), "delete")
    r = run_check(repo)
    assert "pack_missing" in _kinds(r) and r.errors[0].pack == name and r.affected
    full_repair(repo)
    assert clean(reopen(repo.backend))


def test_gallery_truncated_pack(tmp_path):
    repo, *_ = _gallery_repo(tmp_path)
    packs = pack_entries(repo)

    def first_blob_in_first_half(n):
        size = os.path.getsize(object_path(repo, Kind.DATA, n))
        _bid, _t, off, ln, _raw = packs[n][0]
        return off + ln < size // 2

    name = next(n for n, es in packs.items() if es[0][1] == pack.DATA and first_blob_in_first_half(n))
    damage(object_path(repo, Kind.DATA, name), "truncate")
    r = run_check(repo)
    assert "pack_size" in _kinds(r)
    res = repair_packs(repo)
    assert name in res.packs_salvaged and res.blobs_salvaged >= 1, "readable blobs before the cut are kept"
    repair_index(repo)
    repair_snapshots(repo, forget_originals=True)
    assert clean(reopen(repo.backend))


def test_gallery_flipped_index(tmp_path):
    repo, src, s1, s2 = _gallery_repo(tmp_path)
    idx = sorted(n for n, _ in repo.backend.list(Kind.INDEX))[0]
    damage(object_path(repo, Kind.INDEX, idx), "flip")
    r = run_check(repo)
    assert "index_damaged" in _kinds(r)
    repair_index(repo)
    repo = reopen(repo.backend)
    assert clean(repo)
    restores_identically(repo, s2, src, tmp_path / "out")  # nothing was lost, only re-indexed


def test_gallery_flipped_snapshot(tmp_path):
    repo, src, s1, s2 = _gallery_repo(tmp_path)
    damage(object_path(repo, Kind.SNAPSHOT, s1), "flip")
    r = run_check(repo)
    assert _kinds(r) == {"snapshot_damaged"} and r.damaged_snapshots == [s1]
    res = repair_snapshots(repo)
    assert res.unreadable_removed == [s1]
    repo = reopen(repo.backend)
    assert clean(repo)
    restores_identically(repo, s2, src, tmp_path / "out")


def test_gallery_flipped_tree(tmp_path):
    repo, src, s1, s2 = _gallery_repo(tmp_path)
    snap = repo.load_snapshot(s2)
    sub = [n for n in repo.load_tree(snap.tree).nodes][0]  # first path component's tree
    loc = repo.index.lookup(sub.subtree)
    damage(object_path(repo, Kind.DATA, loc.pack_id.hex()), "flip", loc.offset + loc.length // 2)
    r = run_check(repo)
    assert "tree_damaged" in _kinds(r)
    assert all(any("whole directory" in p for p in v) for v in r.affected.values())
    full_repair(repo)
    assert clean(reopen(repo.backend))


def test_gallery_orphan_snapshot(tmp_path):
    repo, src, s1, s2 = _gallery_repo(tmp_path)
    orphan = repo.save_snapshot(Snapshot(time="2026-01-01T00:00:00.000000000Z", tree=os.urandom(32), paths=[b"/x"]))
    r = run_check(repo)
    assert "tree_damaged" in _kinds(r) and orphan in r.affected
    res = repair_snapshots(repo)
    assert [x.original for x in res.repaired] == [orphan] and res.repaired[0].new is None
    repo = reopen(repo.backend)
    assert clean(repo)
    restores_identically(repo, s2, src, tmp_path / "out")


def test_gallery_duplicate_blobs_and_prune(tmp_path):
    repo, src, s1, s2 = _gallery_repo(tmp_path)
    saver = BlobSaver(repo, builders=1, ignore_index=True)  # a second copy of every data blob of s1
    view = read_index_view(repo)
    some = [e[0] for pid in view.packs for e in view.entries(pid) if e[1] == pack.DATA][:5]
    for bid in some:
        saver.save(pack.DATA, bid, repo.load_blob(bid))
    saver.flush()
    saver.close()
    repo = reopen(repo.backend)
    r = run_check(repo, read_data=True)
    assert r.ok and any(p.kind == "duplicate_blobs" for p in r.notices)
    execute_prune(repo, plan_prune(repo, max_unused=0.0))
    repo = reopen(repo.backend)
    r = run_check(repo, read_data=True)
    assert r.ok and not any(p.kind == "duplicate_blobs" for p in r.notices)
    restores_identically(repo, s2, src, tmp_path / "out")


def test_gallery_stale_lock(tmp_path):
    repo, *_ = _gallery_repo(tmp_path)
    old = Lock(time="2020-01-01T00:00:00.000000000Z", exclusive=True, hostname="elsewhere", pid=1, operation="prune")
    repo.save_object(Kind.LOCK, records.encode(old))
    r = run_check(repo)
    assert r.ok and [p.kind for p in r.notices] == ["stale_lock"]
    assert len(remove_stale_locks(repo)) == 1
    assert not run_check(repo).notices


def test_check_subsets_cover_all_packs(tmp_path):
    repo, *_ = _gallery_repo(tmp_path)
    total = len(pack_entries(repo))
    seen = sum(run_check(repo, subset=f"{n}/3").packs_read for n in (1, 2, 3))
    assert seen == total
    assert 0 < run_check(repo, subset="50%").packs_read <= total


def test_prune_and_repair_snapshots_refuse_an_incomplete_index(tmp_path):
    from cermin.engine.prune import PruneAborted
    from cermin.errors import UsageError

    repo, *_ = _gallery_repo(tmp_path)
    name = next(n for n, es in pack_entries(repo).items() if es[0][1] == pack.DATA)
    damage(object_path(repo, Kind.DATA, name), "delete")
    with pytest.raises(PruneAborted, match="missing"):
        plan_prune(repo)
    repo2, *_ = _gallery_repo(tmp_path / "second")
    idx = sorted(n for n, _ in repo2.backend.list(Kind.INDEX))[0]
    damage(object_path(repo2, Kind.INDEX, idx), "delete")  # its packs are now in no index
    with pytest.raises(UsageError, match="repair index"):
        repair_snapshots(reopen(repo2.backend))
    repair_index(repo2)
    assert run_check(reopen(repo2.backend)).ok
