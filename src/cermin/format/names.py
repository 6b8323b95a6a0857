"""Which tree entries may be acted on: the one validator for names read from a repository.

A tree is written by whoever holds the password, so its names are hostile input. Restore, dump,
ls/find/diff, check, the recovery script and mirror all pass entries through here before any
filesystem call or path join: a name is one path component (not empty, not `.` or `..`, no `/`,
no NUL), a type is one of NODE_TYPES, and within one tree a name appears once (a later entry with
the same name never replaces the first one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cermin.errors import CorruptObject
from cermin.format.records import NODE_TYPES, SYMLINK, Node


def name_problem(name: bytes) -> str | None:
    """Why `name` cannot be a directory entry, or None when it is a valid one."""
    if not isinstance(name, bytes):
        return "name is not a byte string"
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return f"name is {name.decode()!r}"
    if b"/" in name:
        return "name contains '/'"
    if b"\x00" in name:
        return "name contains NUL"
    return None


def is_valid_name(name: bytes) -> bool:
    return name_problem(name) is None


def check_node_name(name: bytes) -> None:
    """Raise CorruptObject unless `name` is a single, ordinary path component."""
    why = name_problem(name)
    if why is not None:
        raise CorruptObject(f"invalid entry name {escape_name(name)}: {why}")


def node_problem(node: Node) -> str | None:
    """Why this entry must not be acted on (name or type), or None."""
    why = name_problem(node.name)
    if why is not None:
        return why
    if node.type not in NODE_TYPES:
        return f"unknown type {node.type!r}"
    if node.type == SYMLINK and (not node.target or b"\x00" in node.target):
        return "symlink target is empty or contains NUL"
    return None


def valid_nodes(nodes: Iterable[Node], on_bad: Callable[[Node, str], None] | None = None) -> list[Node]:
    """The entries of one tree that may be used, in order; each skipped one is reported to `on_bad`
    (node, reason). A repeated name is skipped even when its first entry was invalid: the tree is
    ambiguous there, and nothing may replace what an earlier entry created."""
    seen: set[bytes] = set()
    out: list[Node] = []
    for n in nodes:
        why = node_problem(n)
        if why is None and n.name in seen:
            why = "duplicate name in the same directory"
        if isinstance(n.name, bytes):
            seen.add(n.name)
        if why is None:
            out.append(n)
        elif on_bad is not None:
            on_bad(n, why)
    return out


def tree_problems(nodes: Iterable[Node]) -> list[tuple[bytes, str]]:
    """(name, reason) for every entry of one tree that valid_nodes would skip."""
    bad: list[tuple[bytes, str]] = []
    valid_nodes(nodes, lambda n, why: bad.append((n.name, why)))
    return bad


def escape_name(name: bytes) -> str:
    """A name made printable and unambiguous for messages: quoted, with NUL, control characters,
    backslashes and bytes that are not UTF-8 as escapes."""
    if not isinstance(name, bytes):
        return repr(name)
    out = []
    for ch in name.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\" or ch == "'":
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F or not ch.isprintable():
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"
