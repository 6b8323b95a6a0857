"""The stand-alone recovery script restores a snapshot using only FORMAT.md and three libraries."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from conftest import PASSWORD
from treeutil import make_rich_tree

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "cermin-recover.py")


def test_recover_script_matches_source(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    make_rich_tree(str(src))
    (src / "big").write_bytes(os.urandom(9 * 1024 * 1024))  # several chunks, more than one pack
    cli("backup", str(src))
    out = tmp_path / "out"
    env = dict(os.environ, CERMIN_PASSWORD=PASSWORD)
    r = subprocess.run([sys.executable, SCRIPT, cli.repo, "latest", str(out)], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    got = out / str(src).lstrip("/")
    checked = 0
    for d, dirs, files in os.walk(os.fsencode(src)):
        for name in files + dirs:
            a = os.path.join(d, name)
            b = os.path.join(os.fsencode(got), os.path.relpath(a, os.fsencode(src)))
            sa, sb = os.lstat(a), os.lstat(b)
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode)
            if stat.S_ISREG(sa.st_mode):
                assert open(a, "rb").read() == open(b, "rb").read()
                assert (sa.st_mode, sa.st_mtime_ns) == (sb.st_mode, sb.st_mtime_ns)
                checked += 1
            elif stat.S_ISLNK(sa.st_mode):
                assert os.readlink(a) == os.readlink(b)
    assert checked >= 7
