"""Cross-cutting (backend/faulty.py against the engine): crash safety by fault injection: sweep a failure, a
crash or a corrupted write over every backend call of backup, prune and repair. Afterwards check is clean
(or names exactly the injected damage) and every snapshot acknowledged before the fault restores byte-for-
byte."""

from __future__ import annotations

import shutil

import pytest
from helpers import backup, make_source, mutate_source, reopen, restores_identically, small_repo

from cermin.backend.base import Kind
from cermin.backend.faulty import FaultyBackend
from cermin.backend.memory import MemoryBackend
from cermin.engine.check import run_check
from cermin.engine.forget import remove_snapshots
from cermin.engine.prune import execute_prune, plan_prune
from cermin.engine.repair import repair_index, repair_packs, repair_snapshots
from cermin.errors import CerminError


def clone(mem: MemoryBackend) -> MemoryBackend:
    c = MemoryBackend()
    c.objects = dict(mem.objects)
    return c


def through(inner: MemoryBackend, **fault):
    """A repository opened normally whose backend then starts injecting faults."""
    repo = reopen(inner)
    faulty = FaultyBackend(inner, **fault)
    repo.backend = faulty
    return repo, faulty


def count_calls(inner, op, **kw) -> int:
    repo, faulty = through(clone(inner), **kw)
    op(repo)
    return faulty.calls


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    src = d / "src"
    make_source(src, files=8)
    mem = MemoryBackend()
    repo = small_repo(mem)
    s1 = backup(repo, src)
    snap_src = d / "snap1"
    shutil.copytree(src, snap_src, symlinks=True)
    mutate_source(src, 7)
    return mem, s1, snap_src, src


def _restore_ok(repo, sid, src, tmp_path, tag, expected=None):
    out = tmp_path / f"r-{tag}"
    restores_identically(repo, sid, src, out, expected)
    shutil.rmtree(out)


FAULTS = [dict(mode="fail"), dict(mode="crash"), dict(mode="crash", crash_after=True)]


@pytest.mark.parametrize("fault", FAULTS, ids=["fail", "crash", "crash-after"])
def test_backup_sweep(base, tmp_path, fault):
    mem, s1, snap_src, src = base
    n = count_calls(mem, lambda r: backup(r, src))
    assert n >= 8
    for at in range(1, n + 1):
        inner = clone(mem)
        before = {n for n, _ in inner.list(Kind.SNAPSHOT)}
        repo, faulty = through(inner, at=at, **fault)
        acked = None
        try:
            acked = backup(repo, src)
        except CerminError:
            pass
        assert faulty.fired
        repo = reopen(inner)
        report = run_check(repo, read_data=True)
        assert report.ok, (at, [p.message for p in report.errors])
        _restore_ok(repo, s1, src, tmp_path, f"{at}a", snap_src)
        new = {n for n, _ in inner.list(Kind.SNAPSHOT)} - before
        if acked:
            assert new == {acked}, at
            _restore_ok(repo, acked, src, tmp_path, f"{at}b")
        elif fault.get("crash_after"):
            # The snapshot write itself may have landed unacknowledged: then it is complete.
            assert len(new) <= 1, at
            for sid in new:
                _restore_ok(repo, sid, src, tmp_path, f"{at}c")
        else:
            assert new == set(), f"call {at}: a backup that failed left a snapshot behind"


@pytest.mark.parametrize("mode", ["truncate", "flip"])
def test_backup_corrupted_write_is_named(base, tmp_path, mode):
    mem, s1, snap_src, src = base
    n = count_calls(mem, lambda r: backup(r, src), only="save")
    for at in range(1, n + 1):
        inner = clone(mem)
        before = set(inner.objects)
        repo, faulty = through(inner, mode=mode, at=at, only="save")
        try:
            backup(repo, src)
        except CerminError:
            pass
        corrupted = [k for k in inner.objects if k not in before]
        repo = reopen_lenient(inner)
        report = run_check(repo, read_data=True)
        # The corrupted object is the one whose stored bytes no longer hash to its name.
        from cermin.format.crypto import file_id

        bad = [(k, n_) for (k, n_) in corrupted if k is not Kind.LOCK and file_id(inner.objects[(k, n_)]) != n_]
        assert len(bad) == 1, (at, bad)
        kind, name = bad[0]
        named = {p.pack for p in report.errors if p.pack} | {p.object for p in report.errors if p.object}
        assert name in named, (at, kind, [p.message for p in report.errors])
        assert {p.pack for p in report.errors if p.pack} <= {name}
        if kind is not Kind.SNAPSHOT:
            assert not report.damaged_snapshots
        _restore_ok(repo, s1, src, tmp_path, f"{at}", snap_src)
        # and repair brings it back to clean
        repair_packs(repo)
        repair_index(repo)
        repair_snapshots(repo, forget_originals=True)
        assert run_check(reopen(inner), read_data=True).ok


def reopen_lenient(inner):
    """Open even when an index file is damaged (check must report it, not crash on it)."""
    from conftest import PASSWORD

    from cermin.repo.repository import Repository

    repo = Repository.open(inner, PASSWORD.encode())
    try:
        repo.load_index()
    except CerminError:
        pass
    return repo


@pytest.fixture(scope="module")
def prunable(base):
    mem, s1, snap_src, src = base
    inner = clone(mem)
    repo = reopen(inner)
    s2 = backup(repo, src)
    remove_snapshots(repo, [s1])  # s1's unique data becomes garbage
    return inner, s2, src


@pytest.mark.parametrize("fault", FAULTS, ids=["fail", "crash", "crash-after"])
def test_prune_sweep(prunable, tmp_path, fault):
    inner0, s2, src = prunable

    def prune(repo):
        execute_prune(repo, plan_prune(repo, max_unused=0.0))

    n = count_calls(inner0, prune)
    assert n >= 5
    for at in range(1, n + 1):
        inner = clone(inner0)
        repo, faulty = through(inner, at=at, **fault)
        with pytest.raises(CerminError):
            prune(repo)
        repo = reopen(inner)
        report = run_check(repo, read_data=True)
        assert report.ok, (at, [p.message for p in report.errors])
        _restore_ok(repo, s2, src, tmp_path, f"{at}")
        prune(repo)  # restartable: a second run finishes the job
        repo = reopen(inner)
        report = run_check(repo, read_data=True)
        assert report.ok and not report.notices, (at, [p.message for p in report.errors + report.notices])
        _restore_ok(repo, s2, src, tmp_path, f"{at}-again")


@pytest.mark.parametrize("fault", FAULTS, ids=["fail", "crash", "crash-after"])
def test_repair_sweep(base, tmp_path, fault):
    mem, s1, snap_src, src = base
    damaged = clone(mem)
    repo = reopen(damaged)
    backup(repo, src)
    # damage: one pack of the second snapshot's new data disappears
    new_packs = sorted(n for (k, n) in damaged.objects if k is Kind.DATA and (k, n) not in mem.objects)
    del damaged.objects[(Kind.DATA, new_packs[0])]

    def repair(r):
        repair_packs(r)
        repair_index(r)
        repair_snapshots(r, forget_originals=True)

    n = count_calls(damaged, repair)
    for at in range(1, n + 1):
        inner = clone(damaged)
        repo, faulty = through(inner, at=at, **fault)
        try:
            repair(repo)
        except CerminError:
            pass
        repo = reopen_lenient(inner)
        _restore_ok(repo, s1, src, tmp_path, f"{at}", snap_src)  # untouched by the damage and by the fault
        repair(repo)
        report = run_check(reopen(inner), read_data=True)
        assert report.ok, (at, [p.message for p in report.errors])


def test_prune_sweep_with_many_index_files(prunable, tmp_path, monkeypatch):
    """One pack per index file: a crash between the new files must never hide the old ones."""
    from cermin.repo import indexfiles

    monkeypatch.setattr(indexfiles, "PACKS_PER_INDEX_FILE", 1)
    inner0, s2, src = prunable

    def prune(repo):
        execute_prune(repo, plan_prune(repo, max_unused=0.0))

    n = count_calls(inner0, prune, only="save")
    assert n >= 3
    for at in range(1, n + 1):
        inner = clone(inner0)
        repo, faulty = through(inner, mode="crash", at=at, only="save")
        with pytest.raises(CerminError):
            prune(repo)
        repo = reopen(inner)
        report = run_check(repo, read_data=True)
        assert report.ok, (at, [p.message for p in report.errors])
        _restore_ok(repo, s2, src, tmp_path, f"m{at}")
