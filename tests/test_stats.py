"""engine/stats.py: restore size over trees that reuse each other (a legit dedup, or a hostile DAG)."""

from __future__ import annotations

import time

from conftest import FAST_KDF, PASSWORD
from helpers import Hostile

from cermin.backend.local import LocalBackend
from cermin.engine.stats import compute_stats
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots


def _repo(tmp_path) -> Repository:
    return Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)


def test_restore_size_counts_a_shared_subtree_once_per_path(tmp_path):
    repo = _repo(tmp_path)
    h = Hostile(repo)
    shared = [h.file(b"f", b"12345"), h.file(b"g", b"xy")]
    h.snapshot([h.dir(b"a", shared), h.dir(b"b", [h.dir(b"c", shared)]), h.file(b"top", b"123")])
    repo.load_index()
    st = compute_stats(repo, list_snapshots(repo), "restore-size")
    assert (st.total_files, st.total_size) == (5, 2 * 7 + 3)


def test_restore_size_of_a_tree_dag_is_counted_not_walked(tmp_path):
    """41 trees, each naming the one below twice: 2^40 paths. Counted over the DAG it takes no time."""
    repo = _repo(tmp_path)
    h = Hostile(repo)
    nodes = [h.file(b"f", b"x\n")]
    for _ in range(40):
        nodes = [h.dir(b"a", nodes), h.dir(b"b", nodes)]
    h.snapshot(nodes)
    repo.load_index()
    t = time.monotonic()
    st = compute_stats(repo, list_snapshots(repo), "restore-size")
    assert time.monotonic() - t < 10
    assert (st.total_files, st.total_size) == (2**40, 2 * 2**40)
