"""Backup workers that write their own packs (engine/backup/ownpacks.py): the parent grants each new chunk
to exactly one worker, a pack is indexed only once written, and a worker that dies or fails stops the
backup without leaving anything a later backup or check trips on."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import pytest
from conftest import reopen
from helpers import do_backup, do_restore, pack_entries

from cermin.backend.base import Kind
from cermin.engine.backup import ownpacks
from cermin.engine.backup import workers as workers_mod
from cermin.engine.check import run_check
from cermin.errors import CerminError
from cermin.format import pack


def _shared_blocks(src, files: int = 24) -> None:
    """Files made of the same few blocks in different pairs: every block is met by both workers."""
    os.makedirs(src)
    blocks = [os.urandom(1_200_000) for _ in range(6)]
    for i in range(files):
        (src / f"f{i:02}").write_bytes(blocks[i % 6] + blocks[(i * 5 + 1) % 6])


def _packing_pids(monkeypatch, log) -> None:
    """Record which processes store granted chunks."""
    real = ownpacks.OwnPacks.grant

    def grant(self, bits):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(self, bits)

    monkeypatch.setattr(ownpacks.OwnPacks, "grant", grant)


def _data_ids(repo) -> Counter:
    return Counter(e.blob_id for entries in pack_entries(repo).values() for e in entries if e.type == pack.DATA)


def test_a_chunk_both_workers_meet_is_stored_once(local_repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    _shared_blocks(src)
    log = tmp_path / "pids"
    _packing_pids(monkeypatch, log)
    s = do_backup(local_repo, src, workers=2)
    assert not s.errors and s.snapshot.summary.files_new == 24
    pids = set(log.read_text().split())
    assert len(pids) == 2 and str(os.getpid()) not in pids, "both workers, not the parent, wrote packs"
    repo = reopen(local_repo)
    ids = _data_ids(repo)
    assert ids and max(ids.values()) == 1, "no chunk is stored twice"
    stored = [e for p in pack_entries(repo).values() for e in p if e.type == pack.DATA]
    assert s.snapshot.summary.data_added_raw == sum(e.raw_length for e in stored)
    report = run_check(repo, read_data=True)
    assert report.ok and not report.notices, report.notices
    r = do_restore(repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors
    out = tmp_path / "out" / str(src).lstrip("/")
    assert all((out / f.name).read_bytes() == f.read_bytes() for f in src.iterdir())


def test_a_worker_that_waits_for_every_grant_still_finishes(local_repo, tmp_path, monkeypatch):
    """Past its hold limit a worker waits for the parent's answer, also in the middle of a large file
    (batches that arrive meanwhile are kept for later): with a limit of 0 it waits after every message."""
    monkeypatch.setattr(workers_mod, "HOLD_BYTES", 0)
    src = tmp_path / "src"
    os.makedirs(src)
    big = os.urandom(20 << 20)
    (src / "big").write_bytes(big)
    for i in range(300):
        (src / f"small{i}").write_bytes(os.urandom(3000) + b"%d" % i)
    s = do_backup(local_repo, src, workers=2)
    assert not s.errors and s.snapshot.summary.files_new == 301
    r = do_restore(local_repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors
    assert (tmp_path / "out" / str(src).lstrip("/") / "big").read_bytes() == big
    assert run_check(reopen(local_repo), read_data=True).ok


def test_a_worker_killed_after_writing_a_pack_leaves_a_pack_the_next_backup_adopts(local_repo, tmp_path, monkeypatch):
    """A pack is written before the parent indexes it: a worker killed between the two leaves a pack no
    index names. The backup fails with one line and no snapshot; check finds no error; the next backup
    indexes the pack (its chunks are not stored again) and restores."""
    src = tmp_path / "src"
    _shared_blocks(src, files=12)
    real = ownpacks.write_pack

    def write_then_die(builder, store):
        out = real(builder, store)
        os.kill(os.getpid(), signal.SIGKILL)
        return out

    monkeypatch.setattr(ownpacks, "write_pack", write_then_die)
    with pytest.raises(CerminError) as e:
        do_backup(local_repo, src, workers=2)
    assert "exited unexpectedly (killed by signal 9)" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    repo = reopen(local_repo)
    assert list(repo.backend.list(Kind.SNAPSHOT)) == []
    orphans = {n for n, _ in repo.backend.list(Kind.DATA)} - {p for p in pack_entries(repo)}
    assert orphans, "the written pack is there, named by no index"
    assert not run_check(repo, read_data=True).errors
    s = do_backup(repo, src, workers=2)
    assert not s.errors
    repo = reopen(local_repo)
    assert orphans <= set(pack_entries(repo)), "the next backup indexed it"
    assert max(_data_ids(repo).values()) == 1
    assert run_check(repo, read_data=True).ok
    r = do_restore(repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors


@pytest.mark.parametrize("where", ["filling", "sealing"])
def test_a_worker_s_cermin_error_reaches_the_caller_as_itself(local_repo, tmp_path, monkeypatch, where):
    """A repository error in a worker (here: the repository's disk is full, while a pack fills or
    while the worker's writer thread writes a full one out) is raised in the parent as the same
    error, with its own message and exit code, and no temporary file is left behind."""
    import errno

    from cermin.backend import local as local_mod

    parent = os.getpid()
    real = local_mod.write_all

    def full(fd, parts):
        writer = threading.current_thread().name.startswith("cermin-pack")
        if os.getpid() != parent and (where == "filling" or writer):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, parts)

    src = tmp_path / "src"
    _shared_blocks(src, files=6)
    monkeypatch.setattr(local_mod, "write_all", full)
    monkeypatch.setattr(local_repo.secrets, "pack_size", 3 << 20)  # packs fill up and are written out
    with pytest.raises(CerminError) as e:
        do_backup(local_repo, src, workers=2)
    msg = str(e.value)
    assert msg.startswith("no space left on device while writing data/") and "\n" not in msg, msg
    assert type(e.value) is CerminError
    monkeypatch.undo()
    assert _leftovers(local_repo) == []
    assert run_check(reopen(local_repo), read_data=True).ok


def _leftovers(repo) -> list[str]:
    return [n for _, _, files in os.walk(repo.backend.root) for n in files if n.startswith(".tmp-")]


def test_a_worker_killed_with_a_pack_half_written_leaves_no_spool_file(local_repo, tmp_path, monkeypatch):
    """A worker can be stopped anywhere, also between creating its spool file and recording it (or
    killed outright, as here): the parent removes that worker's spool files once it is reaped."""
    real = ownpacks.OwnPacks._spool

    def spool_then_die(self):
        s = real(self)
        s.write([b"x" * 1000])
        os.kill(os.getpid(), signal.SIGKILL)

    src = tmp_path / "src"
    _shared_blocks(src, files=6)
    monkeypatch.setattr(ownpacks.OwnPacks, "_spool", spool_then_die)
    with pytest.raises(CerminError, match="exited unexpectedly"):
        do_backup(local_repo, src, workers=2)
    monkeypatch.undo()
    assert _leftovers(local_repo) == []
    assert run_check(reopen(local_repo), read_data=True).ok


def test_a_worker_stopped_while_its_writer_saves_a_pack_leaves_no_temporary_file(local_repo, tmp_path, monkeypatch):
    """When one worker fails, the others are told to stop; one whose writer thread is saving a pack
    (a small one goes through `save`, whose temporary file has no pid in its name) lets it finish
    before it exits."""
    import time

    from cermin.backend import local as local_mod

    parent = os.getpid()
    real = local_mod.write_all

    def slow(fd, parts):
        if os.getpid() != parent and threading.current_thread().name.startswith("cermin-pack"):
            time.sleep(0.3)
        real(fd, parts)

    real_read = workers_mod.read_one

    def read_one(cutter, dfd, name, size, blocks, emit):
        if name == b"zz-boom":
            time.sleep(0.15)  # a pack of this worker's and of the other's is being saved
            raise MemoryError("out of memory")
        return real_read(cutter, dfd, name, size, blocks, emit)

    src = tmp_path / "src"
    os.makedirs(src)
    for i in range(40):  # batches of 4 MiB: both workers get some, "zz-boom" comes in the last
        (src / f"f{i:02}").write_bytes(os.urandom(300_000))
    (src / "zz-boom").write_bytes(b"x")
    monkeypatch.setattr(local_mod, "write_all", slow)
    monkeypatch.setattr(workers_mod, "read_one", read_one)
    monkeypatch.setattr(local_repo.secrets, "pack_size", 500_000)  # packs under 1 MiB go through `save`
    with pytest.raises(CerminError, match="MemoryError"):
        do_backup(local_repo, src, workers=2)
    monkeypatch.undo()
    assert _leftovers(local_repo) == []
    assert run_check(reopen(local_repo), read_data=True).ok


def test_a_stopped_backup_removes_only_its_own_workers_spool_files(local_repo):
    """Spool files are named by their owner, random per backup: a stopped backup's cleanup never
    touches another backup's pack in progress (pids repeat across hosts and pid namespaces)."""
    b = local_repo.backend
    mine, other, parents = (
        b.spool(Kind.DATA, "3fa9c2d1e4b0-1"),
        b.spool(Kind.DATA, "77aa00bb11cc-1"),
        b.spool(Kind.DATA),
    )
    for s in (mine, other, parents):
        s.write([b"x" * 100])
    b.drop_spools("3fa9c2d1e4b0-1")
    assert not os.path.exists(mine.tmp) and os.path.exists(other.tmp) and os.path.exists(parents.tmp)
    b.drop_spools("")  # no owner: nothing
    assert os.path.exists(parents.tmp)
    other.commit("ab" * 32)
    parents.discard()
    assert _leftovers(local_repo) == []


def test_a_small_backup_leaves_one_partial_pack_not_one_per_worker(local_repo, tmp_path, monkeypatch):
    """A worker's last pack that never reached its first write (under 1 MiB) goes back to the parent
    at the end, into the parent's one data pack: hourly backups of a few changed files do not add a
    small pack per worker."""
    log = tmp_path / "pids"
    _packing_pids(monkeypatch, log)
    src = tmp_path / "src"
    os.makedirs(src)
    for i in range(400):  # several batches of 64 files: both workers get some
        (src / f"f{i:03}").write_bytes(os.urandom(1500))
    s = do_backup(local_repo, src, workers=2)
    assert not s.errors and s.snapshot.summary.files_new == 400
    assert len(set(log.read_text().split())) == 2, "both workers were granted chunks"
    repo = reopen(local_repo)
    packs = pack_entries(repo)
    assert len(packs) == 2 == s.packs_written, "one data pack and one tree pack"
    assert max(_data_ids(repo).values()) == 1 and sum(_data_ids(repo).values()) == 400
    assert run_check(repo, read_data=True).ok
    r = do_restore(repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors
