"""engine/repair.py: each kind of damage that check names (a gallery) is repaired back to a clean check,
and what survives the damage restores."""

from __future__ import annotations

import os

import pytest
from helpers import (
    blob_users,
    clean,
    damage,
    error_kinds,
    fresh_copy,
    full_repair,
    gallery_repo,
    object_path,
    pack_entries,
    reopen,
    restores_identically,
    thirty_snapshots,
)

from cermin.backend.base import Kind
from cermin.engine.check import run_check
from cermin.engine.prune import plan_prune
from cermin.engine.repair import repair_index, repair_packs, repair_snapshots
from cermin.format import pack
from cermin.format.records import Snapshot


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """30 snapshots of a changing tree (helpers.thirty_snapshots)."""
    return thirty_snapshots(tmp_path_factory.mktemp("history"), history_sources)


history_sources: dict[str, tuple] = {}


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


def test_gallery_missing_pack(tmp_path):
    repo, *_ = gallery_repo(tmp_path)
    name = next(n for n, es in pack_entries(repo).items() if es[0][1] == pack.DATA)
    damage(object_path(repo, Kind.DATA, name), "delete")
    r = run_check(repo)
    assert "pack_missing" in error_kinds(r) and r.errors[0].pack == name and r.affected
    full_repair(repo)
    assert clean(reopen(repo.backend))


def test_gallery_truncated_pack(tmp_path):
    repo, *_ = gallery_repo(tmp_path)
    packs = pack_entries(repo)

    def first_blob_in_first_half(n):
        size = os.path.getsize(object_path(repo, Kind.DATA, n))
        _bid, _t, off, ln, _raw = packs[n][0]
        return off + ln < size // 2

    name = next(n for n, es in packs.items() if es[0][1] == pack.DATA and first_blob_in_first_half(n))
    damage(object_path(repo, Kind.DATA, name), "truncate")
    r = run_check(repo)
    assert "pack_size" in error_kinds(r)
    res = repair_packs(repo)
    assert name in res.packs_salvaged and res.blobs_salvaged >= 1, "readable blobs before the cut are kept"
    repair_index(repo)
    repair_snapshots(repo, forget_originals=True)
    assert clean(reopen(repo.backend))


def test_gallery_flipped_index(tmp_path):
    repo, src, s1, s2 = gallery_repo(tmp_path)
    idx = sorted(n for n, _ in repo.backend.list(Kind.INDEX))[0]
    damage(object_path(repo, Kind.INDEX, idx), "flip")
    r = run_check(repo)
    assert "index_damaged" in error_kinds(r)
    repair_index(repo)
    repo = reopen(repo.backend)
    assert clean(repo)
    restores_identically(repo, s2, src, tmp_path / "out")  # nothing was lost, only re-indexed


def test_gallery_flipped_snapshot(tmp_path):
    repo, src, s1, s2 = gallery_repo(tmp_path)
    damage(object_path(repo, Kind.SNAPSHOT, s1), "flip")
    r = run_check(repo)
    assert error_kinds(r) == {"snapshot_damaged"} and r.damaged_snapshots == [s1]
    res = repair_snapshots(repo)
    assert res.unreadable_removed == [s1]
    repo = reopen(repo.backend)
    assert clean(repo)
    restores_identically(repo, s2, src, tmp_path / "out")


def test_gallery_flipped_tree(tmp_path):
    repo, src, s1, s2 = gallery_repo(tmp_path)
    snap = repo.load_snapshot(s2)
    sub = [n for n in repo.load_tree(snap.tree).nodes][0]  # first path component's tree
    loc = repo.index.lookup(sub.subtree)
    damage(object_path(repo, Kind.DATA, loc.pack_id.hex()), "flip", loc.offset + loc.length // 2)
    r = run_check(repo)
    assert "tree_damaged" in error_kinds(r)
    assert all(any("whole directory" in p for p in v) for v in r.affected.values())
    full_repair(repo)
    assert clean(reopen(repo.backend))


def test_gallery_orphan_snapshot(tmp_path):
    repo, src, s1, s2 = gallery_repo(tmp_path)
    orphan = repo.save_snapshot(Snapshot(time="2026-01-01T00:00:00.000000000Z", tree=os.urandom(32), paths=[b"/x"]))
    r = run_check(repo)
    assert "tree_damaged" in error_kinds(r) and orphan in r.affected
    res = repair_snapshots(repo)
    assert [x.original for x in res.repaired] == [orphan] and res.repaired[0].new is None
    repo = reopen(repo.backend)
    assert clean(repo)
    restores_identically(repo, s2, src, tmp_path / "out")


def test_prune_and_repair_snapshots_refuse_an_incomplete_index(tmp_path):
    from cermin.engine.prune import PruneAborted
    from cermin.errors import UsageError

    repo, *_ = gallery_repo(tmp_path)
    name = next(n for n, es in pack_entries(repo).items() if es[0][1] == pack.DATA)
    damage(object_path(repo, Kind.DATA, name), "delete")
    with pytest.raises(PruneAborted, match="missing"):
        plan_prune(repo)
    repo2, *_ = gallery_repo(tmp_path / "second")
    idx = sorted(n for n, _ in repo2.backend.list(Kind.INDEX))[0]
    damage(object_path(repo2, Kind.INDEX, idx), "delete")  # its packs are now in no index
    with pytest.raises(UsageError, match="repair index"):
        repair_snapshots(reopen(repo2.backend))
    repair_index(repo2)
    assert run_check(reopen(repo2.backend)).ok
