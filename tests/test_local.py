"""backend/local.py: the temporary file of a write killed before its link is left behind; check names
it and prune removes it once it is old (prune's own cases: test_prune.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import PASSWORD, cermin_exe
from test_kill import write_source

from cermin.engine.prune import LEFTOVER_AGE


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
