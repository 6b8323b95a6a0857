"""ops/browse.py and engine/dump.py: ls, find, diff and dump over hostile snapshots."""

from __future__ import annotations

from conftest import PASSWORD
from helpers import Hostile, good_entries


def test_ls_find_diff_dump_refuse_bad_names(initialized_cli):
    cli = initialized_cli
    from cermin.backend.local import LocalBackend
    from cermin.repo.repository import Repository

    repo = Repository.open(LocalBackend(cli.repo), PASSWORD.encode())
    repo.load_index()
    h = Hostile(repo)
    clean = h.snapshot(good_entries(h))
    sid = h.snapshot(
        [
            h.dir(b"..", [h.file(b"pwn", b"x")]),
            h.file(b"f", b"first\n"),
            h.file(b"f", b"second\n"),
            *good_entries(h),
        ]
    )
    r = cli("ls", "-R", sid, ok=False)
    assert r.returncode == 1
    out, err = r.stdout.decode(), r.stderr.decode()
    assert out.splitlines() == ["/f", "/good", "/gooddir", "/gooddir/inner"]
    assert "error: /: invalid entry '..': name is '..'" in err
    assert "error: /: invalid entry 'f': duplicate name" in err
    assert "Traceback" not in err
    r = cli("find", "pwn", "-s", sid, ok=False)
    assert r.returncode == 1 and "0 matches" in r.stdout.decode()
    r = cli("diff", clean, sid, ok=False)
    assert r.returncode == 1 and "pwn" not in r.stdout.decode() and "+    /f" in r.stdout.decode()
    r = cli("dump", sid, "/../pwn", ok=False)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().strip().endswith("invalid entry '..': name is '..'")
    assert len(r.stderr.decode().strip().splitlines()) == 1
    assert cli("dump", sid, "/f").stdout == b"first\n"  # the first of two entries named f
