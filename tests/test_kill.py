"""Cross-cutting (the CLI end to end): kill -9 the real command at seeded random moments during backup and
prune; afterwards the repository checks clean and every snapshot restores byte-for-byte."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time

from conftest import PASSWORD, cermin_exe
from helpers import assert_same_tree


def write_source(root, seed: int, files: int = 60) -> None:
    rnd = random.Random(seed)
    words = [bytes(rnd.choices(b"abcdefghijklmnop", k=rnd.randint(3, 10))) for _ in range(2000)]
    os.makedirs(root, exist_ok=True)
    for i in range(files):
        with open(os.path.join(root, f"f{i:03d}"), "wb") as f:
            f.write(b" ".join(rnd.choices(words, k=90_000)))  # ~600 KiB of compressible text


def start(cli, *args):
    env = dict(cli.env, CERMIN_PASSWORD=PASSWORD)
    return subprocess.Popen(
        cermin_exe() + ["-r", cli.repo, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def timed(cli, *args) -> float:
    t0 = time.monotonic()
    cli(*args)
    return time.monotonic() - t0


def snapshots(cli) -> list[dict]:
    return json.loads(cli("--json", "snapshots").stdout)["snapshots"]


def verify_all(cli, tmp_path, expected: dict[str, str], src) -> None:
    r = cli("check", "--read-data", ok=False)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    for s in snapshots(cli):
        out = tmp_path / "verify"
        cli("restore", s["id"], "--target", str(out), "--verify")
        assert_same_tree(expected[s["id"]], out / str(src).lstrip("/"))
        shutil.rmtree(out)


def test_kill9_during_backup_and_prune(initialized_cli, tmp_path):
    cli = initialized_cli
    rnd = random.Random(20261125)
    src = tmp_path / "src"
    write_source(src, 1)
    v1 = tmp_path / "v1"
    shutil.copytree(src, v1)
    t_backup = timed(cli, "backup", str(src))
    expected = {snapshots(cli)[0]["id"]: v1}
    write_source(src, 2)  # every file changes: the next backups have real work to do
    for _ in range(5):
        p = start(cli, "backup", str(src))
        time.sleep(rnd.uniform(0.05, max(0.2, t_backup)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        for s in snapshots(cli):  # a backup that finished before the kill is a complete snapshot of v2
            expected.setdefault(s["id"], src)
        verify_all(cli, tmp_path, expected, src)
    cli("backup", str(src))
    for s in snapshots(cli):
        expected.setdefault(s["id"], src)
    cli("forget", "--keep-last", "1")
    t_prune = timed(cli, "prune", "--dry-run")
    for _ in range(4):
        p = start(cli, "prune", "--max-unused", "0%")
        time.sleep(rnd.uniform(0.05, max(0.3, 3 * t_prune)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        verify_all(cli, tmp_path, expected, src)
    cli("prune", "--max-unused", "0%")
    verify_all(cli, tmp_path, expected, src)
    plan = json.loads(cli("--json", "prune", "--dry-run").stdout.splitlines()[0])
    assert plan["delete_packs"] == [] and plan["unindexed_packs"] == [], "a completed prune leaves nothing behind"


def test_two_backups_at_once_both_succeed(initialized_cli, tmp_path):
    cli = initialized_cli
    a, b = tmp_path / "a", tmp_path / "b"
    write_source(a, 3, files=30)
    write_source(b, 3, files=30)  # identical content: both dedup against the same blobs
    pa, pb = start(cli, "backup", str(a)), start(cli, "backup", str(b))
    assert pa.wait(timeout=300) == 0 and pb.wait(timeout=300) == 0
    snaps = snapshots(cli)
    assert len(snaps) == 2
    r = cli("--json", "check", "--read-data")
    assert json.loads(r.stdout.splitlines()[-1])["ok"] is True
    for s in snaps:
        out = tmp_path / "out"
        cli("restore", s["id"], "--target", str(out))
        path = s["paths"][0]
        assert_same_tree(path, out / path.lstrip("/"))
        shutil.rmtree(out)


def _data_packs(repo: str) -> dict[str, int]:
    out = {}
    for d, _, files in os.walk(os.path.join(repo, "data")):
        out.update({f: os.path.getsize(os.path.join(d, f)) for f in files if not f.startswith(".tmp-")})
    return out


def test_kill9_mid_backup_then_the_next_backup_reuses_the_packs_already_written(initialized_cli, tmp_path):
    """Packs a killed backup made durable but never indexed are adopted by the next backup (from their
    authenticated headers), not uploaded again."""
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"r{i:02d}").write_bytes(os.urandom(5 << 20))  # incompressible: 60 MiB, about 8 packs of 8 MiB
    total = 60 << 20
    p = start(cli, "backup", str(src))
    while p.poll() is None and sum(_data_packs(cli.repo).values()) < total // 2:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = _data_packs(cli.repo)
    assert not os.listdir(os.path.join(cli.repo, "index")), "killed before any index file: the packs are unindexed"
    assert sum(left.values()) >= total // 2 and not snapshots(cli)

    cli("backup", str(src))
    added = sum(s for n, s in _data_packs(cli.repo).items() if n not in left)
    # Only what the killed run had not stored yet is uploaded (plus a tree pack and pack overhead).
    assert added < total - sum(left.values()) + (1 << 20), (added, sum(left.values()))
    r = cli("check", "--read-data")
    out = r.stdout.decode() + r.stderr.decode()
    assert "in no index" not in out and "more than one pack" not in out, out
    s = snapshots(cli)[0]
    cli("restore", s["id"], "--target", str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out" / str(src).lstrip("/"))
