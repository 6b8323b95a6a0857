"""repo/lock.py: shared and exclusive locks, refresh, staleness, future-dated locks; and a read-only repository
(a read-only mount, as root too): read-only work just works, without a lock and with one warning; writes
stop with one line naming the read-only repository."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FAST_KDF, PASSWORD, cermin_exe

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.backend.memory import MemoryBackend
from cermin.errors import (
    AccessDenied,
    ReadOnlyRepository,
    RepositoryLocked,
)
from cermin.format import records
from cermin.format.records import Lock
from cermin.repo.lock import RepoLock, read_locks, remove_stale_locks
from cermin.repo.repository import Repository
from cermin.util import now_rfc3339

READS = {
    "restore": "restore latest --target {tmp}/restored",
    "dump": "dump latest {src}/a.txt",
    "check": "check --read-data",
    "ls": "ls latest",
    "snapshots": "snapshots",
    "diff": "diff {s0} {s1}",
    "find": "find a.txt",
    "stats": "stats",
    "cat": "cat config",
}
WRITES = {
    "backup": "backup {src}",
    "prune": "prune",
    "forget": "forget --keep-last 1",
    "repair": "repair index",
}


def _bind_ro(tmp_path, cli, commands: dict[str, str], fmt: dict) -> dict[str, tuple[int, str, str]]:
    """Run each command against a read-only bind mount of the repository in a private mount namespace."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-m", "mount", "--bind", "-o", "ro", cli.repo, str(mnt)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot bind-mount read-only in a private mount namespace here")
    out = tmp_path / "out"
    out.mkdir()
    exe = shlex.join(cermin_exe())
    lines = [f"mount --bind -o ro {shlex.quote(cli.repo)} {shlex.quote(str(mnt))} || exit 99"]
    for name, args in commands.items():
        o = shlex.quote(str(out / name))
        lines.append(f"{exe} -r {shlex.quote(str(mnt))} {args.format(**fmt)} >{o}.out 2>{o}.err; echo $? >{o}.rc")
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", "\n".join(lines)],
        capture_output=True,
        env=dict(cli.env, CERMIN_PASSWORD=PASSWORD, PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin"),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr.decode()
    res = {}
    for name in commands:
        rc = int((out / f"{name}.rc").read_text())
        res[name] = (rc, (out / f"{name}.out").read_text(), (out / f"{name}.err").read_text())
    return res


def test_read_only_work_on_a_read_only_mount_just_works(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    cli("backup", str(src))
    (src / "b.txt").write_text("world\n")
    cli("backup", str(src))

    ids = [s["id"] for s in json.loads(cli("--json", "snapshots").stdout)["snapshots"]]
    fmt = {"tmp": tmp_path, "src": src, "s0": ids[0], "s1": ids[1]}
    before = sorted(os.listdir(os.path.join(cli.repo, "locks")))
    res = _bind_ro(tmp_path, cli, {**READS, **WRITES}, fmt)
    for name in READS:
        rc, out, err = res[name]
        assert rc == 0, f"{name}: exit {rc}: {err}"
        locked_cmd = name in ("restore", "dump", "check")
        warns = [ln for ln in err.splitlines() if "read-only" in ln]
        if locked_cmd:  # said once, with what a shared lock is for
            assert len(warns) == 1 and warns[0].startswith("warning:") and "without a lock" in warns[0], err
            assert "prune" in warns[0], err
        assert "error" not in err, f"{name}: {err}"
    assert (tmp_path / "restored" / str(src).lstrip("/") / "b.txt").read_text() == "world\n"
    assert res["dump"][1] == "hello\n"
    for name in WRITES:
        rc, _out, err = res[name]
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1, f"{name}: exit {rc}: {err}"
        assert "read-only" in lines[0] and str(tmp_path / "ro") in lines[0], f"{name}: {err}"
        assert "Traceback" not in err
    assert sorted(os.listdir(os.path.join(cli.repo, "locks"))) == before


class _ReadOnlyCredential(MemoryBackend):
    """A store answering every write with 403, like an S3 credential or server token allowed to read only."""

    def save(self, kind, name, data):
        raise AccessDenied(f"S3 refused access to {kind.value}/{name[:12]}: check the credentials (AccessDenied)")


def test_a_read_only_credential_reads_without_a_lock_and_refuses_writes():
    mem = MemoryBackend()
    Repository.init(mem, PASSWORD.encode(), kdf=FAST_KDF)
    ro = _ReadOnlyCredential()
    ro.objects = mem.objects  # the same store, seen through a read-only credential
    repo = Repository.open(ro, PASSWORD.encode())
    with RepoLock(repo, False, "restore") as lock:
        assert lock.name is None and lock.unlocked
    assert len(repo.warnings) == 1 and "without a lock" in repo.warnings[0]
    with pytest.raises(ReadOnlyRepository, match="backup needs to write .* read-only"):
        RepoLock(repo, False, "backup").acquire()
    with pytest.raises(ReadOnlyRepository, match="prune needs to write"):
        RepoLock(repo, True, "prune").acquire()
    with pytest.raises(ReadOnlyRepository):  # an exclusive lock never goes on without one
        RepoLock(repo, True, "check", readonly_ok=False).acquire()


def test_locks_exclusive_conflicts_and_release(mem_repo):
    with RepoLock(mem_repo, False, "backup"):
        with RepoLock(mem_repo, False, "backup"):  # shared locks coexist
            assert len(read_locks(mem_repo)) == 2
        with pytest.raises(RepositoryLocked):
            RepoLock(mem_repo, True, "prune").acquire()
    assert read_locks(mem_repo) == []
    with RepoLock(mem_repo, True, "prune"):
        with pytest.raises(RepositoryLocked, match="exclusively"):
            RepoLock(mem_repo, False, "backup").acquire()


def test_lock_refresh_and_staleness(mem_repo):
    import time as _time

    from cermin.repo import lock as lockmod

    lk = RepoLock(mem_repo, False, "backup").acquire()
    first = lk.name
    assert lk.refresh(), "one refresh step, as the holder's thread runs every REFRESH seconds"
    assert lk.name != first, "the lock is rewritten while held"
    names = [n for n, _ in read_locks(mem_repo)]
    assert names == [lk.name], "the previous lock object is removed"
    lk.release()
    assert read_locks(mem_repo) == []
    now = _time.time()
    fresh = Lock(time=now_rfc3339(), exclusive=True, hostname="other-host", pid=1)
    assert not lockmod.is_stale(fresh, now)
    assert lockmod.is_stale(fresh, now + lockmod.STALE + 1)
    dead = Lock(time=now_rfc3339(), exclusive=True, hostname=socket.gethostname(), pid=2**22 + 12345)
    assert lockmod.is_stale(dead, now), "a lock of a dead process on this host is stale at once"


def test_prune_refuses_while_a_backup_holds_its_lock(tmp_path):
    import subprocess

    from conftest import Cli

    cli = Cli(str(tmp_path / "r"), {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")})
    cli("init")
    repo = Repository.open(LocalBackend(cli.repo), PASSWORD.encode())
    with RepoLock(repo, False, "backup"):
        r = cli("prune", ok=False, stdin=subprocess.DEVNULL)
        assert r.returncode == 11 and b"locked" in r.stderr
        lk = RepoLock(repo, True, "prune")
        with pytest.raises(RepositoryLocked):
            lk.acquire()
    cli("prune")


def test_ensure_fresh_stops_destructive_work(mem_repo):
    lk = RepoLock(mem_repo, True, "prune").acquire()
    lk.ensure_fresh()
    mem_repo.backend.remove(Kind.LOCK, lk.name)  # someone ran `unlock --remove-all`
    with pytest.raises(RepositoryLocked):
        lk.ensure_fresh()
    lk.release()


@pytest.mark.usefixtures("own_cache")
def test_future_lock_blocks_nothing_and_plain_unlock_removes_it(mem_repo):
    lock = Lock(time="2999-01-01T00:00:00Z", exclusive=True, hostname="elsewhere", pid=1, operation="prune")
    name = mem_repo.save_object(Kind.LOCK, records.encode(lock))
    with RepoLock(mem_repo, False, "backup"):
        pass
    assert remove_stale_locks(mem_repo) == [name]
    # A lock only slightly ahead (within the allowance) is honoured.
    now = datetime.now(UTC) + timedelta(minutes=5)
    near = Lock(time=now.strftime("%Y-%m-%dT%H:%M:%SZ"), exclusive=True, hostname="elsewhere", pid=1)
    mem_repo.save_object(Kind.LOCK, records.encode(near))
    from cermin.errors import RepositoryLocked

    with pytest.raises(RepositoryLocked):
        RepoLock(mem_repo, False, "backup").acquire()
