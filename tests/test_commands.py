"""ops/commands.py: lock policy lives in the engine: a library caller (the agent, the dashboard) gets the
same refusals as the command, without the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import PASSWORD, reopen

from cermin.engine.backup import BackupOptions
from cermin.errors import RepositoryLocked
from cermin.ops import commands

HOLDER = textwrap.dedent(
    """
    import sys
    from cermin.backend.local import LocalBackend
    from cermin.repo.lock import RepoLock
    from cermin.repo.repository import Repository

    repo = Repository.open(LocalBackend(sys.argv[1]), sys.argv[2].encode())
    with RepoLock(repo, sys.argv[3] == "exclusive", sys.argv[4]):
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def holder(local_repo):
    """Another process holding a lock on local_repo until the test ends."""
    procs = []

    def hold(kind: str, operation: str) -> None:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, local_repo.backend.root, PASSWORD, kind, operation],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(p)
        assert p.stdout.readline() == b"held\n"

    yield hold
    for p in procs:
        p.stdin.close()
        p.wait(timeout=30)


@pytest.fixture
def repo_with_snapshot(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "f").write_bytes(os.urandom(10_000))
    s = commands.backup(local_repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2))
    assert s.snapshot_id and not s.errors
    return reopen(local_repo), s.snapshot_id


def test_prune_is_refused_while_another_process_backs_up(repo_with_snapshot, holder):
    repo, _ = repo_with_snapshot
    holder("shared", "backup")
    with pytest.raises(RepositoryLocked, match="backup"):
        commands.prune(repo, commands.PruneOptions())
    with pytest.raises(RepositoryLocked):
        commands.forget(repo, commands.ForgetOptions(snapshot_ids=["latest"]))
    with pytest.raises(RepositoryLocked):
        commands.repair_index(repo)
    assert len(list(repo.backend.list(repo_kind_snapshot()))) == 1, "nothing was forgotten"
    # shared work goes on next to a backup
    assert commands.check(repo, commands.CheckOptions()).exit_code == 0
    assert commands.prune(repo, commands.PruneOptions(dry_run=True, no_lock=True)).exit_code == 0


def test_backup_and_restore_are_refused_during_prune(repo_with_snapshot, holder, tmp_path):
    repo, sid = repo_with_snapshot
    holder("exclusive", "prune")
    with pytest.raises(RepositoryLocked, match="exclusively"):
        commands.backup(repo, BackupOptions(paths=[os.fsencode(str(tmp_path / "src"))]))
    from cermin.engine.restore import RestoreOptions

    with pytest.raises(RepositoryLocked):
        commands.restore(repo, sid, RestoreOptions(target=str(tmp_path / "out")))
    with pytest.raises(RepositoryLocked):
        commands.check(repo, commands.CheckOptions())
    # --no-lock keeps working (read-only media): the caller takes the risk
    r = commands.restore(repo, sid, RestoreOptions(target=str(tmp_path / "out"), workers=2), no_lock=True)
    assert r.exit_code == 0 and r.files == 1


def test_operations_release_their_locks(repo_with_snapshot):
    from cermin.backend.base import Kind

    repo, sid = repo_with_snapshot
    commands.check(repo, commands.CheckOptions())
    commands.prune(repo, commands.PruneOptions())
    commands.forget(repo, commands.ForgetOptions(snapshot_ids=[sid], dry_run=True))
    assert list(repo.backend.list(Kind.LOCK)) == []


def repo_kind_snapshot():
    from cermin.backend.base import Kind

    return Kind.SNAPSHOT
