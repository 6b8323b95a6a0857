"""repo/snapshots.py: listing, resolving and what a snapshot list shows."""

from __future__ import annotations

import os

from helpers import do_backup

from cermin.repo.snapshots import list_snapshots, resolve


def test_snapshots_listed_and_resolved(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    ids = [do_backup(local_repo, src, tags=[f"t{i}"]).snapshot_id for i in range(3)]
    refs = list_snapshots(local_repo)
    assert [r.id for r in refs] == ids
    assert resolve(local_repo, "latest").id == ids[-1]
    assert resolve(local_repo, ids[1][:8]).id == ids[1]
    assert [r.id for r in list_snapshots(local_repo, tags=("t1",))] == [ids[1]]
