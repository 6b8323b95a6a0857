"""engine/prune.py: what prune removes, keeps and refuses."""

from __future__ import annotations

import os
import time

import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import gallery_repo, reopen, restores_identically, two_backups

from cermin.backend.local import LocalBackend
from cermin.engine.check import run_check
from cermin.engine.prune import LEFTOVER_AGE, PruneAborted, execute_prune, plan_prune
from cermin.format import pack
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver


@pytest.fixture
def history(tmp_path):
    return two_backups(tmp_path, files=8)


def test_prune_keeps_a_temp_file_in_flight_and_removes_old_ones_everywhere(tmp_path):
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    root = tmp_path / "repo"
    now = time.time()
    paths = {
        "old_pack": root / "data" / "ab" / ".tmp-abcdef-000001",
        "old_lock": root / "locks" / ".tmp-0123-000002",
        "old_config": root / ".tmp-config-000003",
        "young_pack": root / "data" / "cd" / ".tmp-cdef01-000004",
    }
    for name, p in paths.items():
        p.write_bytes(b"x" * 100)
        if name.startswith("old"):
            os.utime(p, (now - LEFTOVER_AGE - 1, now - LEFTOVER_AGE - 1))
    (root / "data" / "ab" / ".tmp-dir").mkdir()  # not a file: never touched
    assert len(repo.backend.leftovers()) == 4
    repo.load_index()
    plan = plan_prune(repo, now=now)
    assert sorted(plan.temp_files) == sorted(str(p.relative_to(root)) for n, p in paths.items() if n.startswith("old"))
    res = execute_prune(repo, plan)
    assert res.temp_files_removed == 3 and res.temp_bytes_removed == 300
    assert paths["young_pack"].exists() and (root / "data" / "ab" / ".tmp-dir").is_dir()
    assert [t.path for t in repo.backend.leftovers()] == ["data/cd/.tmp-cdef01-000004"]
    try:
        repo.backend.remove_leftover("data/../config")
    except Exception as e:
        assert "not a temporary file" in str(e)
    else:
        raise AssertionError("removed a non-temporary path")
    assert (root / "config").exists()


def test_gallery_duplicate_blobs_and_prune(tmp_path):
    repo, src, s1, s2 = gallery_repo(tmp_path)
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


@pytest.mark.usefixtures("own_cache")
def test_damaged_snapshot_still_stops_prune(history):
    """Only objects that prove they are foreign are ignored: a damaged file of ours may hold data."""
    repo, _src, first, _second = history
    path = os.path.join(repo.backend.root, "snapshots", first)
    os.chmod(path, 0o600)
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(PruneAborted, match="cannot be read"):
        plan_prune(reopen(repo.backend))
