"""format/names.py: which entry names a tree may hold."""

from __future__ import annotations

import pytest

from cermin.format.names import check_node_name, escape_name, is_valid_name, tree_problems, valid_nodes
from cermin.format.records import DIR, FIFO, FILE, SYMLINK, Node


def test_name_validator():
    for bad in (b"", b".", b"..", b"a/b", b"/abs", b"../x", b"a\x00b", b"/", b"x/"):
        assert not is_valid_name(bad)
        with pytest.raises(Exception, match="invalid entry name"):
            check_node_name(bad)
    for good in (b"a", b"...", b".hidden", b"caf\xe9", b"a b", b"-", b"..x"):
        assert is_valid_name(good)
        check_node_name(good)
    assert escape_name(b"a\x00b\xff\\'\n") == "'a\\x00b\\xff\\\\\\'\\x0a'"
    nodes = [
        Node(name=b"x", type=FILE),
        Node(name=b"x", type=DIR),
        Node(name=b"y", type="weird"),
        Node(name=b"y", type=FILE),
        Node(name=b"..", type=DIR),
        Node(name=b"l", type=SYMLINK, target=b""),
        Node(name=b"z", type=FIFO),
    ]
    assert [(n.name, n.type) for n in valid_nodes(nodes)] == [(b"x", FILE), (b"z", FIFO)]
    assert [name for name, _ in tree_problems(nodes)] == [b"x", b"y", b"y", b"..", b"l"]
