"""What interrupted runs leave behind: temporary files of a write killed before its link (check
names them, prune removes the old ones only), and packs written but never indexed (the next backup
adopts them instead of uploading their data again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import FAST_KDF, PASSWORD, cermin_exe
from test_kill import write_source

from cermin.backend.local import LocalBackend
from cermin.engine.prune import LEFTOVER_AGE, execute_prune, plan_prune
from cermin.repo.repository import Repository


def _temp_files(repo_dir: str) -> list[str]:
    out = []
    data = os.path.join(repo_dir, "data")
    for d in os.listdir(data):
        with os.scandir(os.path.join(data, d)) as it:
            out += [os.path.join(data, d, e.name) for e in it if e.name.startswith(".tmp-")]
    return out


def _kill_during_a_pack_write(cli, src, tries: int = 40) -> list[str]:
    """kill -9 a real backup the moment a pack's temporary file is seen in data/."""
    env = dict(cli.env, CERMIN_PASSWORD=PASSWORD)
    for _ in range(tries):
        p = subprocess.Popen(
            cermin_exe() + ["-r", cli.repo, "backup", str(src)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        found: list[str] = []
        while p.poll() is None and not found:
            found = _temp_files(cli.repo)
        p.send_signal(signal.SIGKILL)
        p.wait()
        left = _temp_files(cli.repo)
        if left:
            return left
    raise AssertionError("never caught a pack write in flight")


def test_kill9_during_a_pack_write_leaves_a_temp_file_check_names_it_prune_removes_it_when_old(
    initialized_cli, tmp_path
):
    cli = initialized_cli
    src = tmp_path / "src"
    write_source(src, 7, files=120)
    left = _kill_during_a_pack_write(cli, src)
    size = sum(os.path.getsize(p) for p in left)

    r = cli("check")  # a notice, not damage
    out = r.stdout.decode() + r.stderr.decode()
    assert f"{len(left)} temporary files" in out and "left by interrupted writes" in out, out
    assert "prune removes those not written for 30 minutes" in out, out

    cli("prune")
    assert all(os.path.exists(p) for p in left), "a young temp file may be a write in flight"

    old = time.time() - LEFTOVER_AGE - 60
    for p in left:
        os.utime(p, (old, old))
    plan = json.loads(cli("--json", "prune", "--dry-run").stdout.splitlines()[0])
    assert len(plan["temp_files"]) == len(left) and plan["temp_bytes"] == size
    assert all(os.path.exists(p) for p in left)
    cli("prune")
    assert not any(os.path.exists(p) for p in left)
    assert _temp_files(cli.repo) == []
    r = cli("check")
    assert "temporary files" not in r.stdout.decode() + r.stderr.decode()
    cli("backup", str(src))  # the interrupted backup's work is finished
    cli("check", "--read-data")


def test_prune_keeps_a_temp_file_in_flight_and_removes_old_ones_everywhere(tmp_path):
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    root = tmp_path / "repo"
    now = time.time()
    paths = {
        "old_pack": root / "data" / "ab" / ".tmp-abcdef-000001",
        "old_lock": root / "locks" / ".tmp-0123-000002",
        "old_config": root / ".tmp-config-000003",
        "young_pack": root / "data" / "cd" / ".tmp-cdef01-000004",
    }
    for name, p in paths.items():
        p.write_bytes(b"x" * 100)
        if name.startswith("old"):
            os.utime(p, (now - LEFTOVER_AGE - 1, now - LEFTOVER_AGE - 1))
    (root / "data" / "ab" / ".tmp-dir").mkdir()  # not a file: never touched
    assert len(repo.backend.leftovers()) == 4
    repo.load_index()
    plan = plan_prune(repo, now=now)
    assert sorted(plan.temp_files) == sorted(str(p.relative_to(root)) for n, p in paths.items() if n.startswith("old"))
    res = execute_prune(repo, plan)
    assert res.temp_files_removed == 3 and res.temp_bytes_removed == 300
    assert paths["young_pack"].exists() and (root / "data" / "ab" / ".tmp-dir").is_dir()
    assert [t.path for t in repo.backend.leftovers()] == ["data/cd/.tmp-cdef01-000004"]
    try:
        repo.backend.remove_leftover("data/../config")
    except Exception as e:
        assert "not a temporary file" in str(e)
    else:
        raise AssertionError("removed a non-temporary path")
    assert (root / "config").exists()


def test_a_backup_adopts_authenticated_unindexed_packs_only(tmp_path):
    import blake3

    from cermin.backend.base import Kind
    from cermin.engine.backup import BackupOptions, run_backup

    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(2_000_000))
    repo.load_index()
    first = run_backup(repo, BackupOptions(paths=[os.fsencode(src)], workers=2))
    assert first.bytes_uploaded > 2_000_000
    # As if interrupted before its index and snapshot: durable packs that no index file names.
    for kind in (Kind.INDEX, Kind.SNAPSHOT):
        for name, _ in list(repo.backend.list(kind)):
            repo.backend.remove(kind, name)
    written = {n for n, _ in repo.backend.list(Kind.DATA)}
    planted = os.urandom(5000)  # a storage credential without the key: a "pack" under its own hash
    planted_name = blake3.blake3(planted).hexdigest()
    repo.backend.save(Kind.DATA, planted_name, planted)

    r = Repository.open(repo.backend, PASSWORD.encode())
    r.load_index()
    assert set(r.unindexed_packs) == written | {planted_name}
    s = run_backup(r, BackupOptions(paths=[os.fsencode(src)], workers=2))
    assert s.bytes_uploaded == 0 and s.packs_written == 0, "everything was adopted, nothing uploaded again"
    assert [w for w in r.warnings if "not adopted" in w and planted_name[:12] in w]
    r2 = Repository.open(repo.backend, PASSWORD.encode())
    r2.load_index()
    assert set(r2.unindexed_packs) == {planted_name}, "the adopted packs are named by an index file"
    assert {p.hex() for p in r2.index.packs} == written
