"""guard/lastclean.py: `restore --last-clean` brings back the tree exactly as it was before the attack;
the group rules, filters and errors; `last-clean` wherever a snapshot is named."""

from __future__ import annotations

import json
import os
import random
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from helpers import assert_same_tree, backup, make_source, set_verdict, small_repo, verdict_snapshot

from cermin.backend.local import LocalBackend
from cermin.engine.restore import RestoreOptions
from cermin.errors import SnapshotNotFound, UsageError
from cermin.guard.lastclean import last_clean
from cermin.guard.verdict import write_ack
from cermin.ops import commands


def encrypt(root, share: float = 0.5, seed: int = 1) -> None:
    """What ransomware does: files overwritten by ciphertext-like bytes, a note in every directory."""
    rnd = random.Random(seed)
    for d, _, files in os.walk(root):
        for f in sorted(files):
            if rnd.random() < share:
                p = os.path.join(d, f)
                size = os.path.getsize(p)
                with open(p, "wb") as fh:
                    fh.write(rnd.randbytes(size))
        with open(os.path.join(d, "README-DECRYPT.txt"), "w") as fh:
            fh.write("pay up\n")


@pytest.fixture
def attacked(tmp_path):
    """clean, clean, infected, suspicious snapshots of one tree; the tree as it was before the attack."""
    src = tmp_path / "src"
    make_source(src, files=12)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    first = set_verdict(repo, backup(repo, src), "clean")
    (src / "a" / "later.txt").write_bytes(b"a clean change\n")
    clean = set_verdict(repo, backup(repo, src), "clean")
    shutil.copytree(src, tmp_path / "before", symlinks=True)
    encrypt(src)
    bad = set_verdict(repo, backup(repo, src), "infected", reasons=["compressible files became incompressible"])
    encrypt(src, share=1.0, seed=2)
    worse = set_verdict(repo, backup(repo, src), "suspicious")
    return repo, src, tmp_path / "before", (first, clean, bad, worse)


def test_restore_last_clean_restores_the_pre_attack_tree_exactly(attacked, tmp_path):
    repo, src, before, (first, clean, bad, worse) = attacked
    assert last_clean(repo).id == clean
    target = tmp_path / "restored"
    s = commands.restore(repo, "last-clean", RestoreOptions(target=str(target), verify=True, workers=2))
    assert s.snapshot_id == clean and not s.errors
    assert_same_tree(before, os.path.join(str(target), str(src).lstrip("/")))

    write_ack(repo, worse, "the test's own encryption", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert last_clean(repo).id == worse, "an acknowledged snapshot is clean again"


def test_last_clean_groups_filters_and_errors(mem_repo):
    repo = mem_repo
    now = datetime.now(UTC)
    a1 = verdict_snapshot(repo, now - timedelta(days=3), "clean", host="a")
    verdict_snapshot(repo, now - timedelta(days=1), "infected", host="a")
    b1 = verdict_snapshot(repo, now - timedelta(days=2), "clean", host="b")
    verdict_snapshot(repo, now + timedelta(days=300), "clean", host="b")  # future-dated: never the last clean
    with pytest.raises(UsageError, match="--host"):
        last_clean(repo)
    assert last_clean(repo, hosts=("a",)).id == a1
    assert last_clean(repo, hosts=("b",)).id == b1
    verdict_snapshot(repo, now - timedelta(days=5), "infected", host="c")
    with pytest.raises(SnapshotNotFound, match="no clean snapshot"):
        last_clean(repo, hosts=("c",))
    pre = verdict_snapshot(repo, now - timedelta(days=5), None, host="d")
    assert last_clean(repo, hosts=("d",)).id == pre, "made before the guard: the newest one stands in"


def test_cli_restore_last_clean_and_last_clean_as_a_name(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "doc.txt").write_bytes(b"the real document\n" * 100)
    cli("backup", str(src))
    before = tmp_path / "before"
    shutil.copytree(src, before)
    start = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # after the first backup started
    cli("guard", "mark", "--from", start, "--reason", "EDR: encryption seen")
    (src / "doc.txt").write_bytes(os.urandom(1800))
    cli("backup", str(src))
    snaps = json.loads(cli("--json", "snapshots").stdout)["snapshots"]
    assert [s["guard"]["verdict"] for s in snaps][-1] == "suspicious"

    r = json.loads(cli("--json", "restore", "--last-clean", "-t", str(tmp_path / "r")).stdout.splitlines()[-1])
    assert r["snapshot_id"] == snaps[0]["id"]
    assert_same_tree(before, tmp_path / "r" / str(src).lstrip("/"))
    r = json.loads(
        cli("--json", "restore", "--last-clean", "--path", str(src), "-t", str(tmp_path / "r2")).stdout.splitlines()[-1]
    )
    assert r["snapshot_id"] == snaps[0]["id"]
    assert cli("ls", "last-clean", str(src)).stdout.decode().split() == [f"{src}/doc.txt"]
    assert cli("restore", "latest", "--last-clean", "-t", str(tmp_path / "x"), ok=False).returncode == 2
    assert cli("restore", "--last-clean", "--host", "nobody", "-t", str(tmp_path / "x"), ok=False).returncode == 1
