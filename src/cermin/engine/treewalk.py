"""Walking snapshot trees: path lookup, recursive listing, diff and find.

Every tree's entries pass through `format.names.valid_nodes` first: an entry with an invalid name
or type, or a repeated name, is never yielded (nor joined into a path); `on_bad(dir_path, node,
reason)` hears about each one, and `bad_entry_message` words it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterator

from cermin.errors import CerminError, CorruptObject
from cermin.format.names import escape_name, valid_nodes
from cermin.format.records import DIR, Node
from cermin.repo.repository import Repository
from cermin.util import display_path, ns_to_rfc3339

OnBad = Callable[[bytes, Node, str], None]


def bad_entry_message(dir_path: bytes, node: Node, why: str) -> str:
    return f"{display_path(dir_path or b'/')}: invalid entry {escape_name(node.name)}: {why}"


def tree_nodes(repo: Repository, tree_id: bytes, dir_path: bytes = b"", on_bad: OnBad | None = None) -> list[Node]:
    """The usable entries of one tree (loaded through the repository's cache)."""
    report = None if on_bad is None else (lambda n, why: on_bad(dir_path, n, why))
    return valid_nodes(repo.load_tree(tree_id).nodes, report)


def root_node(tree_id: bytes) -> Node:
    return Node(name=b"/", type=DIR, subtree=tree_id, mode=0o755)


def find_node(repo: Repository, tree_id: bytes, path: bytes) -> Node:
    """The node at an absolute path inside a snapshot ('/' is the root)."""
    node = root_node(tree_id)
    here = b""
    for comp in [c for c in path.split(b"/") if c]:
        if node.type != DIR:
            raise CerminError(
                f"path {display_path(path)} not found in snapshot ({display_path(node.name)} is a {node.type})"
            )
        bad: list[tuple[Node, str]] = []
        good = valid_nodes(repo.load_tree(node.subtree).nodes, lambda n, why, bad=bad: bad.append((n, why)))
        for n in good:
            if n.name == comp:
                node = n
                break
        else:
            for n, why in bad:
                if n.name == comp:
                    raise CorruptObject(f"path {display_path(path)}: {bad_entry_message(here, n, why)}")
            raise CerminError(f"path {display_path(path)} not found in snapshot")
        here += b"/" + comp
    return node


def walk(
    repo: Repository, tree_id: bytes, prefix: bytes = b"", recursive: bool = True, on_bad: OnBad | None = None
) -> Iterator[tuple[bytes, Node]]:
    """Yield (absolute path, node) depth-first in name order. Iterative: any depth works."""
    stack = [(prefix, iter(tree_nodes(repo, tree_id, prefix, on_bad)))]
    while stack:
        base, it = stack[-1]
        n = next(it, None)
        if n is None:
            stack.pop()
            continue
        p = base + b"/" + n.name
        yield p, n
        if recursive and n.type == DIR and n.subtree:
            stack.append((p, iter(tree_nodes(repo, n.subtree, p, on_bad))))


def node_json(path: bytes, n: Node) -> dict:
    d = {
        "path": display_path(path),
        "name": display_path(n.name),
        "type": n.type,
        "mode": n.mode,
        "permissions": _perm_string(n),
        "uid": n.uid,
        "gid": n.gid,
        "user": n.user,
        "group": n.group,
        "size": n.size,
        "mtime": ns_to_rfc3339(n.mtime_ns),
        "mtime_ns": n.mtime_ns,
        "inode": n.inode,
        "links": n.links,
    }
    if n.type == "symlink":
        d["target"] = display_path(n.target)
    if n.content:
        d["content"] = [b.hex() for b in n.blob_ids()]
    if n.subtree:
        d["subtree"] = n.subtree.hex()
    if n.rdev:
        d["rdev"] = n.rdev
    if n.xattrs:
        d["xattrs"] = {display_path(k): v.hex() for k, v in n.xattrs}
    if os.fsencode(display_path(path)) != path:
        d["path_bytes"] = path.hex()  # exact name when it is not UTF-8
    return d


_TYPE_CHAR = {"dir": "d", "symlink": "l", "fifo": "p", "chardev": "c", "blockdev": "b", "socket": "s"}


def _perm_string(n: Node) -> str:
    m = n.mode
    s = _TYPE_CHAR.get(n.type, "-")
    for shift in (6, 3, 0):
        bits = (m >> shift) & 7
        s += ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
    return s


# ---- diff ----------------------------------------------------------------------------------
def _meta_key(n: Node):
    return (n.mode, n.uid, n.gid, n.mtime_ns, n.xattrs, n.target, n.rdev)


def diff_trees(
    repo: Repository, a: bytes, b: bytes, prefix: bytes = b"", on_bad: OnBad | None = None
) -> Iterator[tuple[str, bytes, Node | None, Node | None]]:
    """Yield (change, path, old, new); change is '+', '-', 'M' (content), 'T' (type) or 'U' (metadata).
    Depth-first in name order, with an explicit stack: any depth works."""
    stack = [_diff_level(repo, a, b, prefix, on_bad)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif item[0] == "descend":
            stack.append(_diff_level(repo, item[1], item[2], item[3], on_bad))
        else:
            yield item


def _diff_level(repo: Repository, a: bytes, b: bytes, prefix: bytes, on_bad: OnBad | None = None):
    """One directory level of a diff; ("descend", a, b, path) asks the caller to go one level down."""
    if a == b:
        return
    old = {n.name: n for n in tree_nodes(repo, a, prefix, on_bad)} if a else {}
    new = {n.name: n for n in tree_nodes(repo, b, prefix, on_bad)} if b else {}
    for name in sorted(old.keys() | new.keys()):
        o, n = old.get(name), new.get(name)
        p = prefix + b"/" + name
        if o is None:
            yield "+", p, None, n
            if n.type == DIR:
                yield "descend", b"", n.subtree, p
        elif n is None:
            yield "-", p, o, None
            if o.type == DIR:
                yield "descend", o.subtree, b"", p
        elif o.type != n.type:
            yield "T", p, o, n
            yield "descend", o.subtree if o.type == DIR else b"", n.subtree if n.type == DIR else b"", p
        elif o.type == DIR:
            if _meta_key(o) != _meta_key(n):
                yield "U", p, o, n
            yield "descend", o.subtree, n.subtree, p
        elif o.content != n.content or o.size != n.size or o.target != n.target or o.rdev != n.rdev:
            yield "M", p, o, n
        elif _meta_key(o) != _meta_key(n):
            yield "U", p, o, n


def find_in_tree(
    repo: Repository, tree_id: bytes, patterns: list[str], on_bad: OnBad | None = None
) -> Iterator[tuple[bytes, Node]]:
    pats = [os.fsencode(p) for p in patterns]
    for path, n in walk(repo, tree_id, on_bad=on_bad):
        for p in pats:
            if fnmatch.fnmatchcase(path if b"/" in p else n.name, p):
                yield path, n
                break
