"""engine/mirrorstatus.py: `mirror status` (lag in time, snapshots and bytes; last runs, from B alone too)
and `mirror verify` (B restores the same trees as A), on repositories built by hand: trees written
through a saver, blobs copied with engine/repack, mirrored snapshots and `mirror_run` records written
directly (the mirror core is not needed)."""

from __future__ import annotations

import os
import random

import msgspec
import pytest
from conftest import PASSWORD
from helpers import pack_entries, reopen, repo_sharing_ids, small_repo

from cermin.backend.base import Kind
from cermin.backend.memory import MemoryBackend
from cermin.engine.mirrorstatus import (
    DIFFERS,
    OK,
    ORIGIN_MISSING,
    mirror_status,
    mirror_verify,
    origin_of,
)
from cermin.engine.reach import reach
from cermin.engine.repack import repack, wanted_entries
from cermin.format import pack, records
from cermin.format.records import DIR, FILE, SYMLINK, AuxRecord, Node, Snapshot, SnapshotSummary, Tree
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.util import ns_to_rfc3339

MTIME = 1_600_000_000_000_000_000
T0 = 1_700_000_000  # seconds: the first snapshot


def at(seconds: float) -> str:
    return ns_to_rfc3339(int(seconds * 1_000_000_000))


class Builder:
    """Writes trees from a spec: name -> bytes (file), dict (directory), ("link", target), or
    (bytes, {node fields}) for a file with other metadata. Files are cut into `chunk`-byte blobs."""

    def __init__(self, repo, chunk: int = 4096) -> None:
        self.repo, self.chunk = repo, chunk
        self.saver = BlobSaver(repo, builders=1)

    def node(self, name: bytes, spec) -> Node:
        if isinstance(spec, Node):
            return spec
        if isinstance(spec, dict):
            return Node(name=name, type=DIR, subtree=self.tree(spec), mode=0o755, mtime_ns=MTIME)
        if isinstance(spec, tuple) and spec[0] == "link":
            return Node(name=name, type=SYMLINK, target=spec[1], mode=0o777, mtime_ns=MTIME)
        data, kw = spec if isinstance(spec, tuple) else (spec, {})
        ids = b""
        for i in range(0, len(data), self.chunk):
            piece = data[i : i + self.chunk]
            bid = self.repo.blob_id(piece)
            self.saver.save(pack.DATA, bid, piece)
            ids += bid
        fields = dict(mode=0o644, mtime_ns=MTIME, uid=1000, gid=1000, size=len(data)) | kw
        return Node(name=name, type=FILE, content=ids, **fields)

    def tree(self, spec) -> bytes:
        nodes = spec if isinstance(spec, list) else [self.node(n, s) for n, s in sorted(spec.items())]
        data = records.encode(Tree(nodes=nodes))
        tid = self.repo.tree_id(data)
        self.saver.save(pack.TREE, tid, data)
        return tid

    def root(self, spec) -> bytes:
        """A root tree whose blobs are all durable (flushed and indexed)."""
        tid = self.tree(spec)
        self.saver.flush()
        self.saver.close()
        self.saver = BlobSaver(self.repo, builders=1)
        return tid

    def snapshot(self, spec, time: str, host: str = "h1", paths=(b"/data",), **kw) -> str:
        tid = self.root(spec)
        return self.repo.save_snapshot(Snapshot(time=time, tree=tid, paths=list(paths), hostname=host, **kw))


def rnd_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


SPEC1 = {
    b"etc": {b"passwd": rnd_bytes(1, 3000), b"hosts": (b"127.0.0.1 localhost\n", {"mode": 0o600})},
    b"big.dat": rnd_bytes(2, 20_000),
    b"link": ("link", b"etc/hosts"),
    b"empty": b"",
}
NEW = rnd_bytes(3, 5000)
SPEC2 = SPEC1 | {b"new.dat": NEW}  # s2 adds one file at the root
SPEC_OTHER = {b"conf": rnd_bytes(4, 7000)}


def mirror_copy(a, b, sid: str, tree: bytes | None = None, **extra) -> str:
    """What the mirror does for a snapshot (shared id key): copy every blob it reaches, then write it
    into B with its origin. `tree` plants another root tree under the same origin."""
    snap = a.load_snapshot(sid)
    wanted = reach(a, [snap.tree]).blobs()
    packs = dict(wanted_entries(read_index_view(a), a.index, wanted))
    saver = BlobSaver(b)
    try:
        repack(a, saver, packs.items())
    finally:
        saver.close()
    origin = {"repository": a.config.id, "snapshot": sid}
    copy = msgspec.structs.replace(snap, extra={**snap.extra, "origin": origin, **extra})
    if tree is not None:
        copy = msgspec.structs.replace(copy, tree=tree)
    return b.save_snapshot(copy)


def plant(b, a, sid: str, tree: bytes, **extra) -> str:
    """A snapshot in B claiming to be the copy of A's `sid`, with whatever tree."""
    snap = a.load_snapshot(sid)
    origin = {"repository": a.config.id, "snapshot": sid}
    return b.save_snapshot(msgspec.structs.replace(snap, tree=tree, extra={**snap.extra, "origin": origin, **extra}))


def run_record(b, time: str, target: str, **data) -> str:
    return b.save_object(Kind.AUX, records.encode(AuxRecord(type="mirror_run", time=time, target=target, data=data)))


@pytest.fixture
def ab():
    """A with s1 and s2 (h1:/data, s2 adds a 5000-byte file) and s3 (h2:/etc); B shares A's blob ids."""
    a = small_repo(MemoryBackend())
    bld = Builder(a)
    s1 = bld.snapshot(SPEC1, at(T0))
    s2 = bld.snapshot(SPEC2, at(T0 + 100))
    s3 = bld.snapshot(SPEC_OTHER, at(T0 + 50), host="h2", paths=(b"/etc",))
    a = reopen(a.backend)
    b = reopen(repo_sharing_ids(a, MemoryBackend()).backend)
    return a, b, (s1, s2, s3)


def group(st, host):
    (g,) = [g for g in st.groups if g.hostname == host]
    return g


# ---- status ------------------------------------------------------------------------------------
def test_status_lag_in_time_snapshots_and_bytes(ab):
    a, b, (s1, s2, s3) = ab
    mirror_copy(a, b, s1)
    b = reopen(b.backend)
    now = T0 + 1000
    st = mirror_status(a, b, now=now)
    assert st.from_source and st.shared_ids and not st.bytes_estimated
    g1, g2 = group(st, "h1"), group(st, "h2")
    assert (g1.src_snapshots, g1.dst_snapshots, g1.lag_snapshots, g1.missing) == (2, 1, 1, [s2])
    assert g1.newest_src == at(T0 + 100) and g1.newest_src_id == s2
    assert g1.newest_dst == at(T0)
    assert g1.lag_seconds == pytest.approx(1000)  # now - the newest A snapshot B has (s1)
    # what s2 adds over s1: the new file's bytes and its new root tree
    assert g1.bytes_to_copy == len(NEW) + len(a.load_blob(a.load_snapshot(s2).tree))
    # B has nothing of h2: lag counted from A's newest there; everything it reaches is to copy
    assert (g2.lag_snapshots, g2.dst_snapshots, g2.newest_dst) == (1, 0, None)
    assert g2.lag_seconds == pytest.approx(950)
    assert g2.bytes_to_copy == len(SPEC_OTHER[b"conf"]) + len(a.load_blob(a.load_snapshot(s3).tree))
    assert st.bytes_to_copy == g1.bytes_to_copy + g2.bytes_to_copy

    mirror_copy(a, b, s2)
    mirror_copy(a, b, s3)
    b = reopen(b.backend)
    st = mirror_status(a, b, now=now)
    for g in st.groups:
        assert (g.lag_snapshots, g.bytes_to_copy, g.missing) == (0, 0, [])
    assert group(st, "h1").lag_seconds == pytest.approx(900)
    assert st.bytes_to_copy == 0
    lines = st.to_json()
    assert [d["message_type"] for d in lines] == ["mirror_status", "mirror_status", "mirror_runs"]
    assert lines[0]["paths"] == ["/data"] and lines[0]["source"] == a.config.id
    text = "\n".join(ln.text for ln in st.to_text())
    assert "newest in A" in text and "last successful mirror: never" in text


def test_status_loads_indexes_itself(ab):
    a, b, (s1, _s2, _s3) = ab
    mirror_copy(a, b, s1)
    fresh_a, fresh_b = Repository.open(a.backend, PASSWORD.encode()), Repository.open(b.backend, PASSWORD.encode())
    assert len(fresh_a.index) == 0
    st = mirror_status(fresh_a, fresh_b, now=T0 + 1000)
    assert st.bytes_to_copy == mirror_status(reopen(a.backend), reopen(b.backend), now=T0 + 1000).bytes_to_copy > 0


def test_status_from_the_mirror_alone(ab):
    a, b, (s1, s2, s3) = ab
    mirror_copy(a, b, s1)
    mirror_copy(a, b, s2)
    run_record(b, at(T0 + 200), a.config.id, ok=True, snapshots_copied=2, bytes_copied=12345, source="/srv/a")
    b = reopen(b.backend)
    st = mirror_status(None, b, now=T0 + 3600)
    assert not st.from_source and st.source is None and st.shared_ids is None
    (g,) = st.groups
    assert (g.source, g.hostname, g.dst_snapshots) == (a.config.id, "h1", 2)
    assert g.newest_dst == at(T0 + 100)
    assert g.lag_seconds == pytest.approx(3500)  # the age of B's newest copy
    assert g.lag_snapshots is None and g.bytes_to_copy is None and g.src_snapshots is None
    ls = st.last_success
    assert ls is not None and (ls.snapshots_copied, ls.bytes_copied, ls.source) == (2, 12345, "/srv/a")
    # limited to one source id: another source's copies are not shown
    assert mirror_status(None, b, now=T0 + 3600, source_id="f" * 64).groups == []
    assert mirror_status(None, b, now=T0 + 3600, source_id=a.config.id).groups[0].dst_snapshots == 2
    text = "\n".join(ln.text for ln in st.to_text())
    assert "from the mirror alone" in text and "last successful mirror" in text
    runs = st.to_json()[-1]
    assert runs["message_type"] == "mirror_runs" and runs["last_success"]["bytes_copied"] == 12345


def test_last_success_and_last_error(ab):
    a, b, (s1, _s2, _s3) = ab
    mirror_copy(a, b, s1)
    run_record(b, at(T0 + 10), a.config.id, ok=True, snapshots_copied=1, bytes_copied=100)
    run_record(b, at(T0 + 20), a.config.id, ok=False, error="backend: connection reset", snapshots_copied=0)
    run_record(b, at(T0 + 30), "0" * 64, ok=False, error="another source")  # not A's
    st = mirror_status(a, b, now=T0 + 60)
    assert st.last_success.time == at(T0 + 10)
    assert st.last_error.time == at(T0 + 20) and st.last_error.error == "backend: connection reset"
    assert st.failing and len(st.runs) == 2
    text = [ln for ln in st.to_text() if "last error" in ln.text]
    assert text and text[0].kind == "warning"
    run_record(b, at(T0 + 40), a.config.id, ok=True, snapshots_copied=0, bytes_copied=0)
    st = mirror_status(a, b, now=T0 + 60)
    assert not st.failing and st.last_success.time == at(T0 + 40) and st.last_error.time == at(T0 + 20)
    assert st.runs_json()["last_error"]["error"] == "backend: connection reset"


def test_hostile_run_records_are_ignored(ab):
    a, b, (s1, _s2, _s3) = ab
    mirror_copy(a, b, s1)
    aid = a.config.id
    run_record(b, at(T0 + 10), aid, ok=True, snapshots_copied=1, bytes_copied=10)  # the real one
    run_record(b, "2999-01-01T00:00:00Z", aid, ok=True, snapshots_copied=99)  # future: not the latest
    run_record(b, at(T0 + 60 + 3600), aid, ok=False, error="an hour ahead")  # beyond the clock skew
    run_record(b, "yesterday", aid, ok=True)  # undatable
    run_record(b, at(T0 + 20), aid, ok="yes")  # ok is not a bool
    run_record(b, at(T0 + 21), aid, snapshots_copied=5)  # no ok at all
    # wrong types inside a usable record: those fields are dropped, the record stays
    run_record(b, at(T0 + 30), aid, ok=False, snapshots_copied=-5, bytes_copied=True, error=b"bytes", source=7)
    run_record(b, at(T0 + 40), aid, ok=False, snapshots_copied=2**64 - 1, error="\x1b[31mred\x1b[0m" + "x" * 5000)
    # records that do not decode as AuxRecord at all are foreign (aux_records skips them)
    b.save_object(Kind.AUX, msgspec.msgpack.encode({"type": "mirror_run", "time": at(T0 + 50), "target": 5}))
    b.save_object(Kind.AUX, msgspec.msgpack.encode({"type": "mirror_run", "time": 7, "data": []}))
    b.save_object(Kind.AUX, b"\x00" * 80)  # not sealed
    st = mirror_status(a, b, now=T0 + 60)
    assert st.runs_ignored == 5
    assert [r.time for r in st.runs] == [at(T0 + 10), at(T0 + 30), at(T0 + 40)]
    assert st.last_success.time == at(T0 + 10) and st.last_success.snapshots_copied == 1
    bad = st.runs[1]
    assert (bad.snapshots_copied, bad.bytes_copied, bad.error, bad.source) == (None, None, "", "")
    last = st.last_error
    assert last.snapshots_copied == 2**62
    assert "\x1b" not in last.error and last.error.startswith("\\x1b[31mred") and len(last.error) < 1100
    text = "\n".join(ln.text for ln in st.to_text())
    assert "\x1b" not in text and "5 mirror run records ignored" in text
    msgspec.json.encode(st.to_json())  # every line serialisable


def test_status_ignores_future_dated_and_hostile_snapshots(ab):
    a, b, (s1, s2, _s3) = ab
    mirror_copy(a, b, s1)
    # a snapshot of A dated in 2999 is missing from B but never A's "newest"
    bld = Builder(a)
    fut = bld.snapshot(SPEC1, "2999-01-01T00:00:00Z")
    # hostile origins in B: not a dict, a bad snapshot id, an int repository
    bb = Builder(b)
    for origin in ("x", {"repository": a.config.id, "snapshot": "../../etc"}, {"repository": 5, "snapshot": s2}):
        bb.snapshot(SPEC2, at(T0 + 100), extra={"origin": origin})
    a, b = reopen(a.backend), reopen(b.backend)
    st = mirror_status(a, b, now=T0 + 1000)
    g = group(st, "h1")
    assert g.newest_src_id == s2 and g.dst_snapshots == 1
    assert set(g.missing) == {s2, fut} and g.lag_snapshots == 2
    assert g.lag_seconds == pytest.approx(1000)
    assert origin_of(Snapshot(time="", tree=b"", paths=[], extra={"origin": ["a", "b"]})) is None


def test_bytes_estimated_when_the_mirror_has_its_own_id_key():
    a = small_repo(MemoryBackend())
    bld = Builder(a)
    s1 = bld.snapshot(SPEC1, at(T0), summary=SnapshotSummary(total_bytes=23_000, data_added_raw=23_000))
    bld.snapshot(SPEC2, at(T0 + 100), summary=SnapshotSummary(total_bytes=28_000, data_added_raw=5_000))
    bld.snapshot(
        SPEC_OTHER,
        at(T0 + 50),
        host="h2",
        paths=(b"/etc",),
        summary=SnapshotSummary(total_bytes=7000, data_added_raw=-3),
    )
    b = small_repo(MemoryBackend())  # own id key and chunker: files re-chunked, trees rewritten
    assert b.secrets.id_key != a.secrets.id_key
    plant(b, a, s1, Builder(b, chunk=1000).root(SPEC1))
    a, b = reopen(a.backend), reopen(b.backend)
    st = mirror_status(a, b, now=T0 + 1000)
    assert st.shared_ids is False and st.bytes_estimated
    g1, g2 = group(st, "h1"), group(st, "h2")
    assert g1.bytes_estimated and g1.bytes_to_copy == 5_000  # what s2 added
    assert g2.bytes_to_copy == 7000  # nothing of h2 in B: the whole snapshot (negative additions count 0)
    assert st.bytes_to_copy == 12_000
    text = "\n".join(ln.text for ln in st.to_text())
    assert "~" in text and "estimated" in text


# ---- verify ------------------------------------------------------------------------------------
def test_verify_ok_with_a_shared_id_key(ab):
    a, b, (s1, s2, s3) = ab
    copies = [mirror_copy(a, b, s) for s in (s1, s2, s3)]
    b = reopen(b.backend)
    rep = mirror_verify(a, b)
    assert rep.ok and rep.exit_code == 0 and rep.shared_ids
    assert sorted(v.snapshot for v in rep.snapshots) == sorted(copies)
    assert all(v.status == OK and v.method == "tree_id" and v.blobs_checked > 0 for v in rep.snapshots)
    rep = mirror_verify(a, b, read_data=True)
    assert rep.ok and all(v.blobs_damaged == 0 for v in rep.snapshots)
    out = rep.to_json()
    assert out[-1]["message_type"] == "summary" and out[-1]["ok"] == 3 and out[-1]["differ"] == 0
    assert {d["message_type"] for d in out[:-1]} == {"mirror_verify"}
    assert "3 ok, 0 differ" in rep.to_text()[-1].text


def test_verify_finds_missing_and_damaged_blobs_in_the_mirror(ab):
    a, b, (s1, _s2, _s3) = ab
    mirror_copy(a, b, s1)
    b = reopen(b.backend)
    objs = b.backend.objects
    # damage one byte in the middle of a data (not tree) pack's first blob: only reading it finds it
    name, entries = sorted((n, es) for n, es in pack_entries(b).items() if es[0].type == pack.DATA)[0]
    victim = (Kind.DATA, name)
    raw = bytearray(objs[victim])
    raw[entries[0].offset + entries[0].length // 2] ^= 0x01
    objs[victim] = bytes(raw)
    rep = mirror_verify(a, b)
    assert rep.ok  # the index has every blob; nothing was read
    rep = mirror_verify(a, b, read_data=True)
    (v,) = rep.snapshots
    assert v.status == DIFFERS and v.blobs_damaged >= 1 and rep.exit_code != 0
    assert "fail verification" in v.differences[0].what
    # a pack gone from B: its blobs are missing from B's index
    del objs[victim]
    b = reopen(b.backend)
    (v,) = mirror_verify(a, b).snapshots
    assert v.status == DIFFERS and v.blobs_missing >= 1
    assert any("missing in the mirror" in d.what for d in v.differences)


def test_verify_catches_a_different_tree_under_the_same_origin(ab):
    a, b, (s1, _s2, _s3) = ab
    changed = dict(SPEC1)
    changed[b"etc"] = {
        b"passwd": bytes([SPEC1[b"etc"][b"passwd"][0] ^ 1]) + SPEC1[b"etc"][b"passwd"][1:],  # same size
        b"hosts": (b"127.0.0.1 localhost\n", {"mode": 0o644}),  # mode changed
    }
    del changed[b"empty"]  # missing in B
    changed[b"planted"] = b"extra\n"  # not in A
    bid = plant(b, a, s1, Builder(b, chunk=1000).root(changed))
    b = reopen(b.backend)
    rep = mirror_verify(a, b)
    (v,) = rep.snapshots
    assert v.snapshot == bid and v.origin == s1 and v.status == DIFFERS and v.method == "walk"
    found = {d.path: d.what for d in v.differences}
    assert found == {
        b"/empty": "missing in the mirror",
        b"/etc/hosts": "mode 600 != 644 differ",
        b"/etc/passwd": "content differs",
        b"/planted": "not in the source",
    }
    assert v.files_compared >= 2  # big.dat chunked differently: compared by content, equal
    assert rep.exit_code != 0
    text = "\n".join(ln.text for ln in rep.to_text())
    assert "/etc/passwd" in text and "differ from the source" in text


def test_verify_snapshot_fields_and_other_origins(ab):
    a, b, (s1, s2, _s3) = ab
    c1 = mirror_copy(a, b, s1)
    snap = a.load_snapshot(s2)
    # B's copy claims s2 but its hostname was changed
    bad = b.save_snapshot(
        msgspec.structs.replace(snap, hostname="evil", extra={"origin": {"repository": a.config.id, "snapshot": s2}})
    )
    gone = "ab" * 32  # A forgot it (or never had it)
    b.save_snapshot(msgspec.structs.replace(snap, extra={"origin": {"repository": a.config.id, "snapshot": gone}}))
    b.save_snapshot(msgspec.structs.replace(snap, extra={"origin": {"repository": "f" * 64, "snapshot": s2}}))
    b.save_snapshot(snap)  # no origin: B's own
    b.save_snapshot(msgspec.structs.replace(snap, extra={"origin": "garbage"}))
    b = reopen(b.backend)
    rep = mirror_verify(a, b)
    by = {v.snapshot: v for v in rep.snapshots}
    assert by[c1].status == OK
    assert by[bad].status == DIFFERS and by[bad].differences[0].what == "snapshot hostname differs"
    (miss,) = [v for v in rep.snapshots if v.status == ORIGIN_MISSING]
    assert miss.origin == gone
    assert (rep.other_origin, rep.no_origin) == (1, 2)
    summary = rep.to_json()[-1]
    assert (summary["origin_missing"], summary["differ"], summary["ok"]) == (1, 1, 1)


def test_verify_with_different_keys():
    a = small_repo(MemoryBackend())
    s1 = Builder(a).snapshot(SPEC2, at(T0))
    b = small_repo(MemoryBackend())
    good = plant(b, a, s1, Builder(b, chunk=1500).root(SPEC2))
    changed = SPEC2 | {b"new.dat": NEW[:-1] + bytes([NEW[-1] ^ 0xFF])}  # last byte of the file
    bad = plant(b, a, s1, Builder(b, chunk=1500).root(changed))
    relinked = SPEC2 | {b"link": ("link", b"/etc/shadow")}
    bad_link = plant(b, a, s1, Builder(b, chunk=1500).root(relinked))
    a, b = reopen(a.backend), reopen(b.backend)
    rep = mirror_verify(a, b)
    assert not rep.shared_ids
    by = {v.snapshot: v for v in rep.snapshots}
    assert by[good].status == OK and by[good].method == "walk"
    assert by[good].files_compared == 5 and by[good].bytes_compared == sum(
        len(x) for x in (NEW, SPEC1[b"big.dat"], SPEC1[b"etc"][b"passwd"], b"127.0.0.1 localhost\n")
    )
    assert [(d.path, d.what) for d in by[bad].differences] == [(b"/new.dat", "content differs")]
    assert [(d.path, d.what) for d in by[bad_link].differences] == [(b"/link", "symlink target differ")]


def test_verify_walks_hostile_names_like_restore():
    """Entries valid_nodes hides (bad names, the second of a repeated name) are not compared; the one
    a restore would use is."""
    a = small_repo(MemoryBackend())
    ba = Builder(a)

    def entries(bld, first: bytes, second: bytes):
        return [
            bld.node(b"ok", b"fine\n"),
            bld.node(b"dup", first),
            bld.node(b"dup", second),  # hidden: the first one counts
            bld.node(b"..", b"escape\n"),  # hidden: invalid name
            Node(name=b"odd", type="whiteout"),  # hidden: unknown type
        ]

    s1 = ba.snapshot(entries(ba, b"first\n", b"second\n"), at(T0))
    b = small_repo(MemoryBackend())
    bb = Builder(b)
    same = plant(b, a, s1, bb.root(entries(bb, b"first\n", b"other\n")))  # only the hidden entry differs
    worse = plant(b, a, s1, bb.root(entries(bb, b"FIRST\n", b"second\n")))
    a, b = reopen(a.backend), reopen(b.backend)
    by = {v.snapshot: v for v in mirror_verify(a, b).snapshots}
    assert by[same].status == OK and by[same].skipped_entries == 3
    assert [(d.path, d.what) for d in by[worse].differences] == [(b"/dup", "content differs")]


def test_verify_unreadable_trees_are_differences(ab):
    a, b, (s1, _s2, _s3) = ab
    # B's copy points at a tree B does not have
    ghost = plant(b, a, s1, os.urandom(32))
    b = reopen(b.backend)
    (v,) = [v for v in mirror_verify(a, b).snapshots if v.snapshot == ghost]
    assert v.status == DIFFERS and "cannot be read in the mirror" in v.differences[0].what
