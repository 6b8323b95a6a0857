"""repo/snapshots.py: listing, resolving and what a snapshot list shows."""

from __future__ import annotations

import os

import pytest
from helpers import do_backup, future_copy, reopen, two_backups

from cermin.engine.check import run_check
from cermin.repo.snapshots import list_snapshots, resolve


@pytest.fixture
def history(tmp_path):
    return two_backups(tmp_path, files=8)


def test_snapshots_listed_and_resolved(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    ids = [do_backup(local_repo, src, tags=[f"t{i}"]).snapshot_id for i in range(3)]
    refs = list_snapshots(local_repo)
    assert [r.id for r in refs] == ids
    assert resolve(local_repo, "latest").id == ids[-1]
    assert resolve(local_repo, ids[1][:8]).id == ids[1]
    assert [r.id for r in list_snapshots(local_repo, tags=("t1",))] == [ids[1]]


@pytest.mark.usefixtures("own_cache")
def test_future_snapshot_is_never_a_parent_nor_latest(history):
    repo, src, _first, second = history
    planted = future_copy(repo, second)
    repo = reopen(repo.backend)
    refs = {r.id: r for r in list_snapshots(repo)}
    assert refs[planted].future and not refs[second].future
    assert resolve(repo, "latest").id == second
    from cermin.engine.backup import BackupOptions, run_backup

    s = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2))
    assert s.parent == second
    report = run_check(reopen(repo.backend))
    assert [p.object for p in report.notices if p.kind == "snapshot_future"] == [planted]
