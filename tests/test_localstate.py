"""repo/localstate.py: the local cache of snapshots this client wrote (parent choice) stays whole when
several threads or processes of one client record snapshots at once."""

from __future__ import annotations

import multiprocessing
import os
import threading

from cermin.repo import localstate

REPO_ID = "ab" * 32


def _ids(prefix: int, n: int) -> list[str]:
    return [f"{prefix:08x}{i:056x}" for i in range(n)]


def test_remember_snapshot_from_many_threads_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))
    groups = [localstate.group_key(f"host{t}", [b"/data"]) for t in range(12)]
    per_thread = 40  # below MAX_OWN_SNAPSHOTS: every record must stay
    start = threading.Barrier(len(groups))

    def work(t: int) -> None:
        start.wait()
        for sid in _ids(t, per_thread):
            localstate.remember_snapshot(REPO_ID, groups[t], sid)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(groups))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t, g in enumerate(groups):
        assert localstate.own_snapshots(REPO_ID, g) == _ids(t, per_thread), f"group {t} lost records"
    left = os.listdir(tmp_path / "cache" / "snapshots")
    assert not [n for n in left if n.endswith(".tmp")], left


def _process(cache: str, t: int, n: int) -> None:
    os.environ["CERMIN_CACHE_DIR"] = cache
    g = localstate.group_key(f"proc{t}", [b"/data"])
    for sid in _ids(1000 + t, n):
        localstate.remember_snapshot(REPO_ID, g, sid)


def test_remember_snapshot_from_two_processes_loses_nothing(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("CERMIN_CACHE_DIR", cache)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process, args=(cache, t, 40)) for t in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for t in range(3):
        g = localstate.group_key(f"proc{t}", [b"/data"])
        assert localstate.own_snapshots(REPO_ID, g) == _ids(1000 + t, 40), f"process {t} lost records"


def test_a_broken_cache_is_only_a_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(cache))
    g = localstate.group_key("h", [b"/p"])
    (cache / "snapshots").mkdir(parents=True)
    (cache / "snapshots" / f"{REPO_ID}.json").write_text("{not json")
    localstate.remember_snapshot(REPO_ID, g, "cd" * 32)
    assert localstate.own_snapshots(REPO_ID, g) == ["cd" * 32]
    localstate.remember_snapshot("not-a-repo-id", g, "cd" * 32)  # never shapes a path, never raises
    os.chmod(cache / "snapshots", 0o500)
    try:
        localstate.remember_snapshot(REPO_ID, g, "ef" * 32)  # unwritable: ignored
    finally:
        os.chmod(cache / "snapshots", 0o700)
