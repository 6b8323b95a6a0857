"""The stand-alone recovery script restores a snapshot using only FORMAT.md and three libraries."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from conftest import PASSWORD
from helpers import make_rich_tree

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


def test_recover_script_stays_inside_target(local_repo, tmp_path):
    """A hostile snapshot: `..`, a name with '/', NUL, a duplicate of a symlink to the outside, and a
    symlink to the outside already in the target. The script restores the rest, exits 1 naming each
    invalid entry, and changes nothing outside the target."""
    from helpers import Hostile, assert_good_restored, fs_state, good_entries

    world = tmp_path / "world"
    outside, target = world / "outside", world / "target"
    outside.mkdir(parents=True)
    (outside / "victim").write_bytes(b"precious\n")
    target.mkdir()
    os.symlink(outside / "victim", target / "good")  # placed in the target by someone else
    h = Hostile(local_repo)
    sid = h.snapshot(
        [
            h.dir(b"..", [h.file(b"pwn", b"x")]),
            h.file(b"../outside/victim", b"x"),
            h.file(b"a\x00b", b"x"),
            h.symlink(b"x", outside),
            h.dir(b"x", [h.file(b"victim", b"x")]),
            *good_entries(h),
        ]
    )
    before = fs_state(str(world), skip=str(target))
    env = dict(os.environ, CERMIN_PASSWORD=PASSWORD)
    r = subprocess.run(
        [sys.executable, SCRIPT, local_repo.backend.root, sid[:12], str(target)], env=env, capture_output=True
    )
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err
    assert "invalid entry '..'" in err and "invalid entry '../outside/victim'" in err
    assert "invalid entry 'a\\x00b'" in err and "invalid entry 'x': duplicate name" in err
    assert "4 entries could not be restored" in err
    assert fs_state(str(world), skip=str(target)) == before
    assert_good_restored(target)
    assert os.readlink(target / "x") == str(outside)
