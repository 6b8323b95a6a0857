"""repo/masterindex.py: the compact blob index: bulk-built and incremental parts agree, first location wins."""

from __future__ import annotations

import os
import random

from cermin.format import index as fmt_index
from cermin.repo.masterindex import MasterIndex


def entries(n, seed):
    rnd = random.Random(seed)
    return [
        (rnd.randint(0, 1), rnd.randint(40, 2**31), rnd.randint(1, 2**22), rnd.randbytes(32), rnd.randint(1, 2**22))
        for _ in range(n)
    ]


def test_bulk_incremental_and_duplicates():
    packs = {os.urandom(32): entries(500, i) for i in range(20)}
    idx = MasterIndex.from_packs({p: fmt_index.pack_entries(e) for p, e in packs.items()})
    assert len(idx) == 20 * 500
    for pid, es in packs.items():
        for t, off, ln, bid, raw in es[::37]:
            loc = idx.lookup(bid)
            assert (loc.pack_id, loc.type, loc.offset, loc.length, loc.raw_length) == (pid, t, off, ln, raw)
    assert idx.lookup(os.urandom(32)) is None and os.urandom(32) not in idx
    # a later pack holding known blobs does not move them; new blobs are found at once
    first_pid, first_es = next(iter(packs.items()))
    dup_pid = os.urandom(32)
    new = entries(10, 99)
    idx.add_pack(dup_pid, fmt_index.pack_entries(first_es[:5] + new))
    assert idx.lookup(first_es[0][3]).pack_id == first_pid
    assert idx.lookup(new[3][3]).pack_id == dup_pid and new[3][3] in idx
    assert len(idx) == 20 * 500 + 10
    # building again folds the incremental part in; nothing changes for lookups
    idx.build()
    assert idx.lookup(new[3][3]).pack_id == dup_pid and idx.lookup(first_es[0][3]).pack_id == first_pid
    assert len(idx) == 20 * 500 + 10


def test_ids_sharing_a_prefix_are_told_apart():
    a = b"\x01" * 16 + os.urandom(16)
    b = b"\x01" * 8 + b"\x02" * 8 + os.urandom(16)
    idx = MasterIndex.from_packs({b"P" * 32: fmt_index.pack_entries([(0, 40, 10, a, 10), (1, 50, 10, b, 10)])})
    assert idx.lookup(a).offset == 40 and idx.lookup(b).offset == 50 and idx.lookup(b).type == 1


def test_contains_all_agrees_with_one_lookup_per_id():
    """The vectorised check a backup runs per directory: true only when every id is indexed, in the
    frozen arrays or added since; ids sharing their first 8 bytes are told apart."""
    es = entries(3000, 7)
    shared_a = b"\x05" * 8 + b"\x01" * 8 + os.urandom(16)
    shared_b = b"\x05" * 8 + b"\x02" * 8 + os.urandom(16)
    es += [(0, 40, 10, shared_a, 10), (0, 60, 10, shared_b, 10)]
    idx = MasterIndex.from_packs({b"P" * 32: fmt_index.pack_entries(es)})
    later = entries(5, 8)
    idx.add_pack(b"Q" * 32, fmt_index.pack_entries(later))  # in the dict, not yet frozen
    ids = [e[3] for e in es[::7]] + [shared_b, shared_a] + [e[3] for e in later]
    assert idx.contains_all(b"".join(ids)) and idx.contains_all(b"")
    missing = b"\x05" * 8 + b"\x03" * 8 + os.urandom(16)  # same first 8 bytes as two indexed ids
    for at in (0, 3, len(ids)):
        probe = ids[:at] + [missing] + ids[at:]
        assert not idx.contains_all(b"".join(probe))
        assert all(i in idx for i in ids) and missing not in idx
    assert MasterIndex().contains_all(b"") and not MasterIndex().contains_all(os.urandom(32))
    assert not idx.contains_all(ids[0] + ids[1][:31])  # a ragged list (a damaged node) is never "all stored"


def test_lookup_many_agrees_with_one_lookup_per_id():
    """The vectorised lookup of a restore worker's window and a directory's files: the same
    locations as one lookup each, for frozen ids, ids added since, ids sharing their first 8 bytes,
    misses, repeats and ids of the wrong length."""
    es = entries(3000, 9)
    shared_a = b"\x06" * 8 + b"\x01" * 8 + os.urandom(16)
    shared_b = b"\x06" * 8 + b"\x02" * 8 + os.urandom(16)
    es += [(0, 40, 10, shared_a, 10), (1, 60, 12, shared_b, 11)]
    idx = MasterIndex.from_packs(
        {b"P" * 32: fmt_index.pack_entries(es[:1500]), b"R" * 32: fmt_index.pack_entries(es[1500:])}
    )
    later = entries(5, 10)
    idx.add_pack(b"Q" * 32, fmt_index.pack_entries(later))
    missing = b"\x06" * 8 + b"\x03" * 8 + os.urandom(16)
    ids = [e[3] for e in es[::5]] + [shared_b, missing, shared_a, es[7][3]] + [e[3] for e in later]
    ids += [os.urandom(32), ids[0], b"short"]

    def same(a, b) -> bool:
        return (a is None and b is None) or (
            a is not None
            and b is not None
            and (a.pack_id, a.type, a.offset, a.length, a.raw_length)
            == (b.pack_id, b.type, b.offset, b.length, b.raw_length)
        )

    got = idx.lookup_many(ids)
    assert len(got) == len(ids)
    assert all(same(g, idx.lookup(i)) for g, i in zip(got, ids, strict=True))
    assert got[ids.index(missing)] is None and got[ids.index(shared_a)].offset == 40
    assert {g.pack_id for g in got if g is not None} == {b"P" * 32, b"R" * 32, b"Q" * 32}
    assert MasterIndex().lookup_many(ids[:10]) == [None] * 10
