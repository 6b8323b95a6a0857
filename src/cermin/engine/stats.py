"""Repository and snapshot statistics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cermin.backend.base import Kind
from cermin.engine.reach import walk_trees
from cermin.engine.results import Line, answer
from cermin.format.records import DIR, FILE
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef
from cermin.util import fmt_bytes, plural


@dataclass
class Stats:
    mode: str
    snapshots: int
    total_files: int = 0
    total_size: int = 0  # restore-size: bytes a restore writes; raw: unique blob bytes (uncompressed)
    blobs: int = 0
    stored_size: int = 0  # bytes in the repository for those blobs
    packs: int = 0
    repo_size: int = 0
    compression_ratio: float = 0.0
    restore_size: int = 0  # dedup mode: what restoring every snapshot would write
    dedup_ratio: float = 0.0  # dedup mode: restore size / unique raw data
    exit_code = 0

    def to_json(self) -> list[dict]:
        return [{"message_type": "stats", **dataclasses.asdict(self)}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        rows = [f"stats in {self.mode} mode over {plural(self.snapshots, 'snapshot')}"]
        rows += [f"  total files:      {self.total_files}", f"  total size:       {fmt_bytes(self.total_size)}"]
        if self.mode in ("raw", "dedup"):
            rows.append(f"  unique blobs:     {self.blobs}")
            rows.append(f"  stored size:      {fmt_bytes(self.stored_size)}")
            rows.append(f"  compression:      {self.compression_ratio:.2f}x")
        if self.mode == "dedup":
            rows.append(f"  restore size:     {fmt_bytes(self.restore_size)}")
            rows.append(f"  dedup ratio:      {self.dedup_ratio:.2f}x (restore size / unique data)")
        rows.append(f"  repository packs: {self.packs} ({fmt_bytes(self.repo_size)})")
        return [answer(r) for r in rows]


def compute_stats(repo: Repository, snaps: list[SnapshotRef], mode: str = "restore-size") -> Stats:
    """restore-size: files and bytes a restore writes; raw: unique blobs and the bytes they take;
    dedup: both, and their ratio (how much deduplication and compression save)."""
    if mode == "raw-data":
        mode = "raw"
    if mode == "dedup":
        restore = compute_stats(repo, snaps, "restore-size")
        st = compute_stats(repo, snaps, "raw")
        st.mode, st.restore_size = "dedup", restore.total_size
        st.dedup_ratio = restore.total_size / st.total_size if st.total_size else 0.0
        return st
    st = Stats(mode=mode, snapshots=len(snaps))
    seen_trees: set[bytes] = set()
    seen_blobs: set[bytes] = set()
    seen_files: set[tuple] = set()
    if mode == "raw":  # every distinct tree and data blob of the snapshots, once
        for tid, nodes, _ in walk_trees(repo, [r.snapshot.tree for r in snaps], seen=seen_trees):
            seen_blobs.add(tid)
            for n in nodes:
                if n.type == FILE:
                    seen_blobs.update(n.blob_ids())
                    st.total_files += 1
    else:  # what a restore of each snapshot writes: shared subtrees count each time they appear
        for ref in snaps:
            for nodes, times in _trees_with_path_counts(repo, ref.snapshot.tree):
                for n in nodes:
                    if n.type != FILE:
                        continue
                    if n.links > 1:  # hard links: one file however often it appears
                        key = (ref.id, n.device, n.inode)
                        if key in seen_files:
                            continue
                        seen_files.add(key)
                        st.total_files += 1
                        st.total_size += n.size
                    else:
                        st.total_files += times
                        st.total_size += n.size * times
    if mode == "raw":
        for bid in seen_blobs:
            loc = repo.index.lookup(bid)
            if loc is not None:
                st.blobs += 1
                st.total_size += loc.raw_length
                st.stored_size += loc.length
        st.compression_ratio = st.total_size / st.stored_size if st.stored_size else 0.0
    for _, size in repo.backend.list(Kind.DATA):
        st.packs += 1
        st.repo_size += size
    return st


def _trees_with_path_counts(repo: Repository, root: bytes):
    """(entries, number of paths reaching the tree) for every distinct tree below `root`. Counted
    over the tree DAG, each tree loaded once: a hostile snapshot whose trees reuse each other
    (41 trees, 2^40 paths) costs 41 loads, not 2^40."""
    order: list[bytes] = []
    children: dict[bytes, list[bytes]] = {}
    nodes_of: dict[bytes, list] = {}
    for tid, nodes, _ in walk_trees(repo, [root]):  # each distinct tree once, parents before children
        order.append(tid)
        nodes_of[tid] = nodes
        children[tid] = [n.subtree for n in nodes if n.type == DIR]
    # Reverse post-order of a DFS is a topological order (trees are content-addressed: no cycles).
    post: list[bytes] = []
    done: set[bytes] = set()
    stack: list[tuple[bytes, bool]] = [(root, False)]
    while stack:
        tid, expanded = stack.pop()
        if expanded:
            post.append(tid)
            continue
        if tid in done or tid not in nodes_of:
            continue
        done.add(tid)
        stack.append((tid, True))
        stack.extend((c, False) for c in children[tid] if c not in done)
    count: dict[bytes, int] = {root: 1}
    for tid in reversed(post):
        times = count.get(tid, 0)
        for c in children[tid]:
            count[c] = count.get(c, 0) + times
    return [(nodes_of[tid], count.get(tid, 0)) for tid in order]
