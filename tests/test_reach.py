"""engine/reach.py: the one walker over everything snapshots reach."""

from __future__ import annotations

import os

import pytest
from helpers import backup, make_source, mutate_source, small_repo

from cermin.backend.memory import MemoryBackend
from cermin.engine.reach import file_blobs, reach, walk_trees
from cermin.engine.stats import compute_stats
from cermin.errors import CorruptObject
from cermin.format import pack, records
from cermin.format.records import DIR, FILE, Node, Tree
from cermin.repo.saver import BlobSaver
from cermin.repo.snapshots import list_snapshots


@pytest.fixture
def history(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=8)
    repo = small_repo(MemoryBackend())
    backup(repo, src)
    mutate_source(src, 1)
    backup(repo, src)
    return repo


def naive(repo, roots):
    """Reference: recursive walk, no shared state with the walker."""
    trees, data = set(), set()

    def go(tid):
        trees.add(tid)
        for n in repo.load_tree(tid).nodes:
            if n.type == DIR:
                go(n.subtree)
            elif n.type == FILE:
                data.update(n.blob_ids())

    for r in roots:
        go(r)
    return trees, data


def test_reach_matches_a_naive_walk_and_visits_each_tree_once(history):
    repo = history
    roots = [r.snapshot.tree for r in list_snapshots(repo)]
    r = reach(repo, roots)
    assert (r.trees, r.data) == naive(repo, roots)
    assert r.blobs() == r.trees | r.data and not r.unreadable
    visits = [v.id for v in walk_trees(repo, roots)]
    assert len(visits) == len(set(visits)) == len(r.trees)
    # two snapshots share subtrees: without dedup they are visited once per path
    assert len(list(walk_trees(repo, roots, dedup=False))) > len(visits)
    # a shared `seen` skips what is known already
    seen = set(r.trees)
    assert list(walk_trees(repo, roots, seen=seen)) == []


def _store_trees(repo, trees: list[Tree]) -> list[bytes]:
    saver = BlobSaver(repo)
    ids = []
    try:
        for t in trees:
            data = records.encode(t)
            tid = repo.tree_id(data)
            saver.save(pack.TREE, tid, data)
            ids.append(tid)
        saver.flush()
    finally:
        saver.close()
    return ids


def _dir(name: bytes, subtree: bytes) -> Node:
    return Node(name=name, type=DIR, subtree=subtree, mode=0o755)


def test_paths_unreadable_trees_and_hidden_entries():
    repo = small_repo(MemoryBackend())
    blob = os.urandom(32)
    (leaf,) = _store_trees(repo, [Tree(nodes=[Node(name=b"f", type=FILE, content=blob + blob)])])
    gone = os.urandom(32)  # a subtree in no index
    (hidden,) = _store_trees(repo, [Tree(nodes=[Node(name=b"g", type=FILE, content=os.urandom(32))])])
    (root,) = _store_trees(
        repo,
        [Tree(nodes=[_dir(b"..", hidden), _dir(b"a", leaf), _dir(b"b", leaf), _dir(b"lost", gone)])],
    )
    bad = {}
    visits = list(walk_trees(repo, [root], paths=True, on_unreadable=lambda t, e: bad.setdefault(t, e)))
    paths = {v.id: v.path for v in visits}
    assert paths[root] == b"" and paths[leaf] == b"/a"  # first path, reached once
    assert paths[hidden] is None  # reached (its data is kept) but never named: '..' is no path
    assert list(bad) == [gone] and isinstance(bad[gone], CorruptObject)
    with pytest.raises(CorruptObject):
        list(walk_trees(repo, [root]))
    r = reach(repo, [root], tolerate_unreadable=True)
    assert gone in r.unreadable and gone in r.trees and blob in r.data and len(r.data) == 2
    assert list(file_blobs(Node(name=b"f", type=FILE, content=blob + blob))) == [blob, blob]
    assert list(file_blobs(_dir(b"d", leaf))) == []


def test_deep_trees_need_no_recursion():
    repo = small_repo(MemoryBackend())
    (tid,) = _store_trees(repo, [Tree()])
    chain = [tid]
    saver = BlobSaver(repo)
    try:
        for _ in range(3000):  # deeper than Python's recursion limit
            data = records.encode(Tree(nodes=[_dir(b"d", chain[-1])]))
            chain.append(repo.tree_id(data))
            saver.save(pack.TREE, chain[-1], data)
        saver.flush()
    finally:
        saver.close()
    visits = list(walk_trees(repo, [chain[-1]], paths=True))
    assert len(visits) == 3001 and visits[-1].path == b"/d" * 3000


def test_stats_through_the_walker(history):
    repo = history
    snaps = list_snapshots(repo)
    r = reach(repo, [s.snapshot.tree for s in snaps])
    raw = compute_stats(repo, snaps, "raw")
    assert raw.blobs == len(r.trees | r.data)
    assert raw.total_size == sum(repo.index.lookup(b).raw_length for b in r.trees | r.data)
    restore = compute_stats(repo, snaps, "restore-size")
    files = sum(
        1 for s in snaps for v in walk_trees(repo, [s.snapshot.tree], dedup=False) for n in v.nodes if n.type == FILE
    )
    assert restore.total_files == files
