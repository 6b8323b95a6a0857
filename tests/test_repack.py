"""engine/repack.py: the one repack (prune, repair packs, and next the mirror into another repository)."""

from __future__ import annotations

import pytest
from helpers import (
    backup,
    make_source,
    mutate_source,
    pack_entries,
    reopen,
    repo_sharing_ids,
    restores_identically,
    small_repo,
)

from cermin.backend.base import Kind
from cermin.backend.memory import MemoryBackend
from cermin.engine.check import run_check
from cermin.engine.reach import reach
from cermin.engine.repack import Repacker, RepackIncomplete, read_verified, repack, rewrite_saver, wanted_entries
from cermin.errors import UsageError
from cermin.format import pack
from cermin.repo.indexfiles import read_index_view, read_pack_header
from cermin.repo.saver import BlobSaver


@pytest.fixture
def history(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=8)
    repo = small_repo(MemoryBackend())
    first = backup(repo, src)
    mutate_source(src, 1)
    second = backup(repo, src)
    return repo, src, first, second


def _damage_blob(repo, name: str, entry) -> None:
    """Flip one byte inside one blob's ciphertext (memory backend: objects are plain bytes)."""
    objs = repo.backend.objects
    data = bytearray(objs[(Kind.DATA, name)])
    data[entry.offset + entry.length // 2] ^= 0x01
    objs[(Kind.DATA, name)] = bytes(data)


def test_repack_into_another_repository(history, tmp_path):
    """The mirror's shape: src reads and verifies, a saver of another repository (own master key)
    encrypts again; the copy checks clean with --read-data and restores identically."""
    src, source, _first, second = history
    dst = repo_sharing_ids(src, MemoryBackend())
    assert dst.keys.master != src.keys.master
    ref = src.load_snapshot(second)
    wanted = reach(src, [ref.tree]).blobs()
    packs = dict(wanted_entries(read_index_view(src), src.index, wanted))
    assert sum(len(es) for es in packs.values()) == len(wanted)
    saver = BlobSaver(dst)  # a normal saver: dedups against dst and writes dst's index files
    try:
        res = repack(src, saver, packs.items())
    finally:
        saver.close()
    assert res.blobs_copied == len(wanted) and not res.lost
    assert res.packs_read == len(packs)
    copy_id = dst.save_snapshot(ref)

    dst = reopen(dst.backend)
    report = run_check(dst, read_data=True)
    assert report.ok, [p.message for p in report.errors]
    assert report.blobs == len(wanted)
    for bid in sorted(wanted)[:50]:
        assert dst.load_blob(bid) == src.load_blob(bid)
    # encrypted again: no pack of the copy is a pack of the source
    assert not set(dict(dst.backend.list(Kind.DATA))) & set(dict(src.backend.list(Kind.DATA)))
    restores_identically(dst, copy_id, source, tmp_path / "restore")
    # copying again adds nothing: the destination saver deduplicates against what it holds
    saver = BlobSaver(dst)
    try:
        again = repack(src, saver, packs.items())
    finally:
        saver.close()
    assert saver.packs_written == 0 and again.blobs_copied == len(wanted)


def test_repack_refuses_another_id_key(history):
    src = history[0]
    other = small_repo(MemoryBackend())
    saver = BlobSaver(other)
    try:
        with pytest.raises(UsageError, match="id key"):
            Repacker(src, saver)
    finally:
        saver.close()


def test_lost_blobs_are_reported_never_copied(history):
    repo = history[0]
    entries = pack_entries(repo)
    name, es = next((n, es) for n, es in entries.items() if len(es) >= 2)
    victim = es[0]
    _damage_blob(repo, name, victim)
    saver = rewrite_saver(repo)
    try:
        res = repack(repo, saver, [(name, es)])
        assert res.lost.keys() == {victim.blob_id} and res.blobs_copied == len(es) - 1
        new = saver.new_packs
        copied = {e.blob_id for blobs in new.values() for e in pack_entries_of(blobs)}
        assert copied == {e.blob_id for e in es[1:]}
        for pid in new:  # the new packs are complete, valid packs with the same payloads
            hdr = read_pack_header(repo, pid.hex())
            assert {e.blob_id for e in hdr} == copied
        with pytest.raises(RepackIncomplete) as ex:
            Repacker(repo, saver).repack(name, es, require_all=True)
        assert ex.value.lost.keys() == {victim.blob_id} and ex.value.pack == name
    finally:
        saver.close()


def test_missing_and_foreign_packs_lose_every_blob(history):
    repo = history[0]
    name, es = next(iter(pack_entries(repo).items()))
    repo.backend.remove(Kind.DATA, name)
    got = read_verified(repo, name, es)
    assert got.data is None and got.lost.keys() == {e.blob_id for e in es} and not got.good
    got = read_verified(repo, name, es, data=b"NOTAPACK" + bytes(100))
    assert "bad magic" in next(iter(got.lost.values()))


def test_payload_is_carried_over_uncompressed_again(history, monkeypatch):
    repo = history[0]
    name, es = next((n, es) for n, es in pack_entries(repo).items() if es[0].type == pack.DATA)

    def no_compress(*_a, **_k):
        raise AssertionError("repack compressed a blob again")

    monkeypatch.setattr(pack, "compress", no_compress)
    saver = rewrite_saver(repo)
    try:
        res = repack(repo, saver, [(name, es)])
    finally:
        saver.close()
    assert res.blobs_copied == len(es) and res.bytes_copied == sum(e.raw_length for e in es)


def pack_entries_of(blobs: bytes):
    from cermin.format.index import iter_entries

    return list(iter_entries(blobs))


def test_prune_and_repair_use_it(history):
    """Both go through engine.repack (the same verification and copy path)."""
    import cermin.engine.prune as prune
    import cermin.engine.repair as repair

    assert prune.repack is repack and repair.Repacker is Repacker
