"""format/index.py: index entry records and their layout."""

from __future__ import annotations

import os

import pytest

from cermin.errors import CorruptObject
from cermin.format import index, pack


def test_index_entries_roundtrip():
    entries = [index.IndexEntry(os.urandom(32), 0, 40, 100, 200), index.IndexEntry(os.urandom(32), 1, 140, 50, 70)]
    packed = index.encode_entries(entries)
    assert len(packed) == 2 * index.ENTRY.size == 90 and index.entry_count(packed) == 2
    assert list(index.iter_entries(packed)) == entries
    back = next(index.iter_entries(packed))
    assert isinstance(back, index.IndexEntry) and back.offset == 40 and back.end == 140
    bid, t, off, ln, raw = back  # positional unpacking still works
    assert (bid, t, off, ln, raw) == tuple(entries[0])
    # the old PackBuilder tuple order is still accepted by pack_entries
    old = [(e.type, e.offset, e.length, e.blob_id, e.raw_length) for e in entries]
    assert index.pack_entries(old) == index.pack_entries(entries) == packed


def test_layout_of_index_entries():
    E = index.IndexEntry
    a, b = os.urandom(32), os.urandom(32)
    end = pack.PREFIX_LEN + 200
    pack.check_layout([E(a, 0, 40, 100, 1), E(b, 1, 140, 100, 1)], end, "p", exact=True)
    pack.check_layout([E(b, 1, 150, 20, 1), E(a, 0, 40, 100, 1)], end, "p")  # gaps allowed unless exact
    bad = {
        "overlapping": [E(a, 0, 40, 100, 1), E(b, 0, 139, 50, 1)],
        "same offset twice": [E(a, 0, 40, 50, 1), E(b, 0, 40, 50, 1)],
        "offset past the end": [E(a, 0, end, 20, 1)],
        "length past the end": [E(a, 0, 200, 2**32 - 1, 1)],
        "inside the prefix": [E(a, 0, 0, 50, 1)],
        "too short": [E(a, 0, 40, 3, 1)],
        "unknown type": [E(a, 9, 40, 50, 1)],
    }
    for why, entries in bad.items():
        with pytest.raises(CorruptObject):
            pack.check_layout(entries, end, why)
            pytest.fail(why)
    with pytest.raises(CorruptObject, match="gap"):
        pack.check_layout([E(b, 1, 150, 20, 1), E(a, 0, 40, 100, 1)], end, "p", exact=True)
