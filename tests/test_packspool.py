"""Packs for stores that take whole objects are filled in an unnamed temporary file (repo/packspool.py):
the pack is not held in memory while it fills, is read back and saved through the wrappers (retries),
and a full disk fails the backup in one line, leaving the repository clean and nothing behind."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import backup, reopen, restores_identically

from cermin.backend.base import Kind
from cermin.backend.faulty import FaultyBackend
from cermin.backend.memory import MemoryBackend
from cermin.backend.retry import RetryBackend
from cermin.engine.check import run_check
from cermin.errors import CerminError
from cermin.format import pack
from cermin.repo import packspool
from cermin.repo.repository import Repository


def _repo(backend) -> Repository:
    return Repository.init(backend, PASSWORD.encode(), kdf=FAST_KDF, pack_size=4 * 1024 * 1024)


def _source(root, files: int = 6) -> None:
    root.mkdir()
    for i in range(files):
        (root / f"f{i}").write_bytes(os.urandom(1500 * 1024))  # incompressible: packs pass SPOOL_WRITE


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def opened(monkeypatch, tmp_path):
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))
    spools: list[packspool.TempSpool] = []
    real = packspool.open_temp
    monkeypatch.setattr(packspool, "open_temp", lambda: (s := real()) is not None and spools.append(s) or s)
    return spools


def test_packs_fill_a_temporary_file_and_are_saved_whole(opened, tmp_path, monkeypatch):
    mem = MemoryBackend()
    repo = _repo(mem)
    src = tmp_path / "src"
    _source(src)
    held: list[int] = []
    real_add = pack.PackBuilder.add

    def add(self, *a):
        real_add(self, *a)
        held.append(sum(len(p) for p in self._parts))

    monkeypatch.setattr(pack.PackBuilder, "add", add)
    before = _fds()
    sid = backup(repo, src)
    assert opened and all(s.fd == -1 for s in opened), "every temporary pack was closed"
    assert max(held) < 2 * pack.SPOOL_WRITE, "a pack being filled is never held whole in memory"
    assert _fds() == before
    assert not os.listdir(tmp_path / "cache" / "tmp"), "an unnamed file leaves no name behind"
    packs = [n for n, _ in mem.list(Kind.DATA)]
    assert packs and all(len(mem.load(Kind.DATA, n)) > pack.SPOOL_WRITE for n in packs[:1])
    repo = reopen(mem)
    assert not run_check(repo, read_data=True).errors
    restores_identically(repo, sid, src, tmp_path / "out")


def test_a_failed_upload_is_retried_from_the_bytes_read_back(opened, tmp_path):
    mem = MemoryBackend()
    _repo(mem)
    repo = reopen(mem)
    faulty = FaultyBackend(mem, mode="fail", at=1, only="save")
    repo.backend = RetryBackend(faulty, sleep=lambda s: None)
    src = tmp_path / "src"
    _source(src)
    sid = backup(repo, src)
    assert faulty.fired and opened
    repo = reopen(mem)
    assert not run_check(repo, read_data=True).errors
    restores_identically(repo, sid, src, tmp_path / "out")


def test_a_full_disk_under_the_temporary_pack_fails_in_one_line(opened, tmp_path, monkeypatch):
    mem = MemoryBackend()
    repo = _repo(mem)
    src = tmp_path / "src"
    _source(src)
    real = packspool.write_all
    calls = []

    def full(fd, parts):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, parts)

    monkeypatch.setattr(packspool, "write_all", full)
    before = _fds()
    with pytest.raises(CerminError) as e:
        backup(repo, src)
    msg = str(e.value)
    assert msg.startswith("cannot write a temporary pack in ") and msg.endswith(": no space left on device")
    assert "\n" not in msg
    assert _fds() == before, "the temporary pack was closed"
    assert not list(mem.list(Kind.SNAPSHOT))
    monkeypatch.setattr(packspool, "write_all", real)
    repo = reopen(mem)
    assert not run_check(repo).errors
    sid = backup(repo, src)
    restores_identically(reopen(mem), sid, src, tmp_path / "out")


def test_without_o_tmpfile_packs_stay_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))
    real_open = os.open

    def no_tmpfile(path, flags, *a, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(packspool.os, "open", no_tmpfile)
    assert packspool.open_temp() is None
    mem = MemoryBackend()
    repo = _repo(mem)
    src = tmp_path / "src"
    _source(src, files=3)
    sid = backup(repo, src)
    restores_identically(reopen(mem), sid, src, tmp_path / "out")
