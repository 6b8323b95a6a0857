"""One walker over everything a set of snapshots reaches: their trees and the data blobs of their files.

Used by prune (what to keep), check (what to verify), protect (which packs to lock), stats (what
the snapshots take) and, next, the tenant mirror (exactly what to copy). Iterative (any depth),
each distinct tree once (unless asked otherwise), unreadable trees reported through a callback.

Reaching is about data, not about names: every entry of a tree is followed, also those that
`format.names.valid_nodes` would hide from a restore (invalid or repeated names), so that prune
never deletes, and a mirror never leaves out, data some entry names. Paths, when asked for, are
built only from names that pass `valid_nodes` (a tree reached only through a hidden entry has no
path); they are for display and never touch a filesystem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from cermin.errors import CorruptObject, ObjectNotFound
from cermin.format.names import valid_nodes
from cermin.format.records import DIR, FILE, ID_LEN, Node, Tree
from cermin.repo.repository import Repository

OnUnreadable = Callable[[bytes, Exception], None]


class TreeVisit(NamedTuple):
    id: bytes
    nodes: list[Node]  # every entry as stored, in stored order
    path: bytes | None  # the first path the tree was reached by (only when paths were asked for)


def file_blobs(node: Node) -> Iterator[bytes]:
    """The data blob ids of a file node, in order (none for other types)."""
    if node.type == FILE:
        c = node.content
        for i in range(0, len(c), ID_LEN):
            yield c[i : i + ID_LEN]


def walk_trees(
    repo: Repository,
    roots: Iterable[bytes],
    *,
    on_unreadable: OnUnreadable | None = None,
    seen: set[bytes] | None = None,
    dedup: bool = True,
    paths: bool = False,
    load: Callable[[bytes], Tree] | None = None,
) -> Iterator[TreeVisit]:
    """Yield every tree reachable from `roots` (snapshot root trees), depth first.

    on_unreadable(tree id, error): a tree that cannot be loaded (CorruptObject, ObjectNotFound);
      without it, the error propagates. Other errors (I/O) always propagate.
    seen: the set of tree ids already visited (filled in; pass one to share it between calls or to
      count afterwards, or to skip trees known already). Unreadable trees are in it too.
    dedup: False visits a tree each time it is reached (per-path counts, as restore sizes need).
    paths: build TreeVisit.path ('' is a root).
    load: how a tree is loaded (default repo.load_tree, through the repository's tree cache).
    """
    load = load or repo.load_tree
    seen = set() if seen is None else seen
    stack: list[tuple[bytes, bytes | None]] = [(r, b"" if paths else None) for r in roots]
    stack.reverse()  # roots in the order given
    while stack:
        tid, path = stack.pop()
        if dedup:
            if tid in seen:
                continue
            seen.add(tid)
        try:
            nodes = load(tid).nodes
        except (CorruptObject, ObjectNotFound) as e:
            if on_unreadable is None:
                raise
            on_unreadable(tid, e)
            continue
        yield TreeVisit(tid, nodes, path)
        subdirs = [n for n in nodes if n.type == DIR]
        if not subdirs:
            continue
        if paths:
            named = {id(n) for n in valid_nodes(nodes)} if path is not None else set()
            stack.extend((n.subtree, path + b"/" + n.name if id(n) in named else None) for n in reversed(subdirs))
        else:
            stack.extend((n.subtree, None) for n in reversed(subdirs))


@dataclass
class Reach:
    """Every tree and data blob a set of snapshots reaches."""

    trees: set[bytes] = field(default_factory=set)  # readable or not
    data: set[bytes] = field(default_factory=set)
    unreadable: dict[bytes, str] = field(default_factory=dict)  # tree id -> why

    def blobs(self) -> set[bytes]:
        return self.trees | self.data


def reach(repo: Repository, roots: Iterable[bytes], tolerate_unreadable: bool = False) -> Reach:
    """The trees and data blobs `roots` reach. An unreadable tree raises, unless tolerated (then it
    is listed in `unreadable` and what lies below it is not reached)."""
    r = Reach()
    cb = (lambda tid, e: r.unreadable.__setitem__(tid, str(e))) if tolerate_unreadable else None
    add = r.data.update
    for v in walk_trees(repo, roots, on_unreadable=cb, seen=r.trees):
        for n in v.nodes:
            if n.type == FILE:
                c = n.content
                add(c[i : i + ID_LEN] for i in range(0, len(c), ID_LEN))
    return r
