"""cli/cmd_browse.py and the shared Output: -q keeps a command's answer, ls lists like ls(1)."""

from __future__ import annotations

import os


def lines(r) -> list[str]:
    return r.stdout.decode().splitlines()


def test_quiet_keeps_answers_and_drops_chatter(cli, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"one")
    assert cli("-q", "init").stdout == b"", "init has nothing to answer"
    assert cli("-q", "backup", str(src)).stdout == b"", "a quiet backup prints nothing"
    (src / "d" / "g").write_bytes(b"two")
    cli("backup", str(src))
    snaps = lines(cli("snapshots"))
    assert lines(cli("-q", "snapshots")) == snaps[:-1], "the table stays; the count line goes"
    assert lines(cli("snapshots", "-q"))[1:] and snaps[-1] == "2 snapshots"
    first = snaps[1].split()[0]

    assert lines(cli("-q", "ls", "latest", str(src / "d"))) == [f"{src}/d/f", f"{src}/d/g"]
    assert lines(cli("-q", "find", "g")) == [lines(cli("find", "g"))[0]]
    assert lines(cli("-q", "find", "g"))[0].endswith(f"{src}/d/g")
    assert lines(cli("-q", "diff", first, "latest")) == [f"+    {src}/d/g"]
    stats = lines(cli("-q", "stats"))
    assert stats == lines(cli("stats")) and any("total files" in s for s in stats)
    keys = lines(cli("-q", "key", "list"))
    assert len(keys) == 1 and keys[0].startswith("* ")
    assert cli("-q", "restore", "latest", "--target", str(tmp_path / "r")).stdout == b""
    assert (tmp_path / "r" / str(src).lstrip("/") / "d" / "g").read_bytes() == b"two"


def test_ls_lists_one_level_and_R_recurses(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "deep").write_bytes(b"x")
    (src / "top").write_bytes(b"y")
    cli("backup", str(src))
    assert lines(cli("ls", "latest", str(src))) == [f"{src}/d", f"{src}/top"]
    everything = [f"{src}/d", f"{src}/d/e", f"{src}/d/e/deep", f"{src}/top"]
    assert lines(cli("ls", "-R", "latest", str(src))) == everything
    assert lines(cli("ls", "latest", str(src), "--recursive")) == everything
    assert lines(cli("ls", "latest")) == ["/" + str(src).lstrip("/").split("/")[0]], "one level of /"
    assert lines(cli("ls", "-R", "latest"))[-4:] == everything
    assert lines(cli("ls", "latest", f"{src}/top")) == [f"{src}/top"], "a file lists itself"
    assert os.path.exists(src / "top")
