"""Index entries and pack contents a restore must not trust (found by a hostile-repository review):
partial entry records, lengths that would size a read or a decompression beyond any blob this
repository writes, raw lengths that differ from the decoded blob, reads padded with far-apart gaps, a
run of ids sharing their first bytes, and hard links to a first copy that could not be written."""

from __future__ import annotations

import os

import msgspec
import pytest
from helpers import damage, do_backup, do_restore, good_entries, object_path, pack_entries, reopen

from cermin.backend.base import Kind
from cermin.engine import restorework
from cermin.engine.check import run_check
from cermin.format import index as fmt_index
from cermin.format import pack
from cermin.format.records import FILE, Node
from cermin.repo.indexfiles import read_index_view, replace_index
from cermin.repo.masterindex import MasterIndex


def _set_entry(repo, bid: bytes, **kw) -> None:
    """Rewrite the index (as a key holder can) with one blob's entry changed."""
    view = read_index_view(repo)
    packs = {
        pid: fmt_index.encode_entries(e._replace(**kw) if e.blob_id == bid else e for e in fmt_index.iter_entries(b))
        for pid, b in view.packs.items()
    }
    replace_index(repo, packs, view.files)


def test_an_index_file_with_partial_entries_is_skipped_not_fatal(local_repo, tmp_path):
    """44 bytes of entries (not a whole 45-byte record) stopped restore, check and backup with an
    internal error; the file is now refused when decoded, like any undecodable index file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1000))
    sid = do_backup(local_repo, src).snapshot_id
    pid = next(iter(read_index_view(local_repo).packs))
    bad = local_repo.save_object(Kind.INDEX, msgspec.msgpack.encode([[[pid, b"\x01" * 44]], []]))
    repo = reopen(local_repo.backend)
    assert bad in repo.skipped_index_files
    assert not do_restore(repo, sid, tmp_path / "out").errors
    report = run_check(reopen(local_repo.backend))  # named (authenticates, does not decode), not fatal
    assert any(bad in (p.object or "") for p in report.notices + report.errors), report


def test_lengths_that_no_blob_of_the_repository_has_are_refused_before_reading(local_repo, hostile, tmp_path):
    """A stored length of 4 GiB sized a read of 4 GiB; a raw length of 1 GiB let a small blob
    decompress to 1 GiB. Each is now one file's error, and the other files restore."""
    x = hostile.file(b"x", os.urandom(1000))
    bomb = hostile.file(b"bomb", os.urandom(2000))
    sid = hostile.snapshot([*good_entries(hostile), x, bomb])
    _set_entry(local_repo, x.content, length=2**32 - 1)
    _set_entry(local_repo, bomb.content, raw_length=1 << 30)
    r = do_restore(reopen(local_repo.backend), sid, tmp_path / "out")
    assert sorted(e.split(":")[0] for e in r.errors) == ["/bomb", "/x"], r.errors
    assert any("stored bytes" in e for e in r.errors) and any("more than a chunk" in e for e in r.errors)
    assert len(os.listdir(tmp_path / "out")) >= 3


def test_a_raw_length_that_differs_from_the_blob_is_an_error(local_repo, hostile, tmp_path):
    """A zero chunk's raw length doubled in the index: restore wrote the file at the index's length
    (holes) without a word, and check --read-data found nothing."""
    z = hostile.file(b"z", b"\0" * 100_000)
    twice = msgspec.structs.replace(z, name=b"twice", content=z.content * 2, size=200_000)
    sid = hostile.snapshot([twice])
    _set_entry(local_repo, z.content, raw_length=200_000)
    r = do_restore(reopen(local_repo.backend), sid, tmp_path / "out")
    assert len(r.errors) == 1 and "its index says 200000" in r.errors[0], r.errors
    report = run_check(reopen(local_repo.backend), read_data=True)
    assert not report.ok and "/twice" in report.affected[sid]


def test_gaps_read_along_with_blobs_count_towards_the_window(local_repo, hostile, tmp_path, monkeypatch):
    """1,024 blobs of 100 bytes, each followed by a 250 KiB blob no file here uses: reads that merge
    across the gaps must stop at about one window of gap bytes (they read ~250 MiB before)."""
    ids = []
    for _ in range(1024):
        d = os.urandom(100)
        ids.append(local_repo.blob_id(d))
        hostile.saver.save(pack.DATA, ids[-1], d)
        f = os.urandom(250 * 1024)
        hostile.saver.save(pack.DATA, local_repo.blob_id(f), f)
    sid = hostile.snapshot([Node(name=b"small", type=FILE, size=100 * 1024, content=b"".join(ids), mode=0o644)])
    repo = reopen(local_repo.backend)
    asked: list[int] = []
    monkeypatch.setattr(
        restorework.Writer,
        "_ask",
        lambda self, pid, blobs: asked.append(blobs[-1][0] + blobs[-1][2].length - blobs[0][0]),
    )
    tfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        w = restorework.Writer(repo, tfd, {"owner": False, "xattrs": False, "special": False}, False, bytearray(64), 0)
        w._plan(ids)  # the reads one window of these blobs asks for
    finally:
        os.close(tfd)
    assert asked and sum(asked) <= 100 * 1024 + 2 * restorework.WINDOW, sum(asked)
    monkeypatch.undo()
    r = do_restore(repo, sid, tmp_path / "out")
    assert not r.errors and (tmp_path / "out" / "small").stat().st_size == 100 * 1024


def test_a_run_of_equal_first_bytes_is_searched_not_walked():
    """Ids sharing their first 8 bytes (written into an index to slow every lookup down, or by
    chance): found by a search inside the run, each at its own entry; an absent one is absent."""
    ids = [b"\xab" * 8 + i.to_bytes(8, "big") + os.urandom(16) for i in range(0, 20_000, 2)]
    entries = fmt_index.encode_entries(
        fmt_index.IndexEntry(bid, pack.DATA, 16 + n, 100, 100) for n, bid in enumerate(ids)
    )
    idx = MasterIndex()
    idx.add_pack_bulk(b"p" * 32, entries)
    idx.build()
    for n in (0, 1, 4_999, 9_999):
        loc = idx.lookup(ids[n])
        assert loc is not None and loc.offset == 16 + n
    assert idx.lookup(b"\xab" * 8 + (3).to_bytes(8, "big") + b"\0" * 16) is None
    assert idx.lookup(b"\xab" * 8 + (30_000).to_bytes(8, "big") + b"\0" * 16) is None
    assert [loc.offset for loc in idx.lookup_many(ids[:20])] == [16 + n for n in range(20)]


def test_a_hard_link_to_a_copy_that_failed_is_an_error_too(local_repo, tmp_path):
    """A damaged first copy of a hard-linked file: the second name was linked to the failed (empty)
    file and no error named it. Now it is written on its own and fails with its own error."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "f").write_bytes(os.urandom(300_000))
    os.link(src / "a" / "f", src / "b" / "g")
    sid = do_backup(local_repo, src).snapshot_id
    for name, ents in pack_entries(local_repo).items():
        if all(e.type == pack.DATA for e in ents):
            damage(object_path(local_repo, Kind.DATA, name), "flip", ents[0].offset + 100)
    r = do_restore(reopen(local_repo.backend), sid, tmp_path / "out", workers=2)
    named = sorted(e.split(":")[0].rsplit("/", 2)[-2] for e in r.errors)
    assert named == ["a", "b"], r.errors


@pytest.mark.parametrize("order", ["sorts first", "sorts last"])
def test_index_files_planted_to_shadow_the_real_entries_do_not_stop_a_restore(local_repo, tmp_path, monkeypatch, order):
    """A key holder (the threat model's attacker holds the password for days) writes index files that
    name every real blob at a wrong offset. Whichever file is loaded first used to win, and every
    restore failed ("failed authentication") until `repair index`; a blob whose first location fails
    is now read from the others the index knows."""
    from cermin.format.records import IndexFile, IndexPack, encode

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}").write_bytes(os.urandom(5000 + i))
    sid = do_backup(local_repo, src).snapshot_id
    view = read_index_view(local_repo)
    real = {e.blob_id: e for b in view.packs.values() for e in fmt_index.iter_entries(b)}
    wrong = [
        IndexPack(p, fmt_index.encode_entries(e._replace(offset=e.offset + 1) for e in fmt_index.iter_entries(b)))
        for p, b in view.packs.items()
    ]
    real_names = [n for n, _ in local_repo.backend.list(Kind.INDEX)]
    for _ in range(64):  # a new salt is a new name: until it sorts where this case wants it
        planted = local_repo.save_object(Kind.INDEX, encode(IndexFile(packs=wrong)))
        if (planted < min(real_names)) == (order == "sorts first"):
            break
        local_repo.backend.remove(Kind.INDEX, planted)
    # Listed first (an attacker retries names until one sorts or hashes first): whichever file a
    # directory listing or an object store gives first is loaded first.
    real_list = type(local_repo.backend).list
    monkeypatch.setattr(
        type(local_repo.backend),
        "list",
        lambda self, kind: sorted(real_list(self, kind), key=lambda e: e[0] != planted),
    )
    repo = reopen(local_repo.backend)
    assert any(repo.index.lookup(b).offset != e.offset for b, e in real.items())  # shadowed
    r = do_restore(repo, sid, tmp_path / "out", verify=True)
    assert not r.errors, r.errors
    out = tmp_path / "out" / str(src).lstrip("/") / "d"
    assert all((out / f"f{i}").read_bytes() == (src / "d" / f"f{i}").read_bytes() for i in range(5))
    # check names the planted file, whichever name sorts first, and blames no pack or tree for it
    monkeypatch.undo()
    report = run_check(reopen(local_repo.backend), read_data=True)
    assert [(p.kind, p.object) for p in report.errors] == [("index_disagrees", planted)], report.errors
