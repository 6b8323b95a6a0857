"""Repository locations and ids as a new user gets them wrong: cli/cmd_repo.py, backend/local.py, restore's target."""

from __future__ import annotations

import os


def test_repository_path_that_is_a_file_is_no_repository(cli, tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"not a repository")
    cli.repo = str(f)
    for args in (["snapshots"], ["restore", "latest", "--target", str(tmp_path / "t")], ["check"]):
        r = cli(*args, ok=False)
        assert r.returncode == 10, (args, r.stderr)
        assert r.stderr.decode().splitlines() == [f"cermin: error: no repository at {f}: it is a file, not a directory"]
    r = cli("init", ok=False, password=None)  # refused before a password is asked
    assert r.returncode == 1 and r.stderr.decode().splitlines() == [
        f"cermin: error: cannot create a repository at {f}: it is a file"
    ]
    assert f.read_bytes() == b"not a repository"


def test_init_refuses_a_directory_of_user_files(cli, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_bytes(b"chapter 1")
    cli.repo = str(home)
    r = cli("init", ok=False, password=None)  # refused before a password is asked
    assert r.returncode == 1 and b"not empty (thesis.tex)" in r.stderr
    assert os.listdir(home) == ["thesis.tex"], "nothing was mixed into the user's directory"
    (tmp_path / "empty").mkdir()
    (tmp_path / "fresh-fs" / "lost+found").mkdir(parents=True)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "keys").mkdir()  # the layout an interrupted init left
    for d in ("missing", "empty", "fresh-fs", "half"):
        cli.repo = str(tmp_path / d)
        cli("init")
        assert cli("snapshots").returncode == 0
    r = cli("init", ok=False)
    assert r.returncode == 1 and b"already exists" in r.stderr


def test_failed_restore_creates_no_target(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    target = tmp_path / "X"
    r = cli("restore", "latest:/nope", "--target", str(target), ok=False)  # no snapshot yet
    assert r.returncode == 1 and not target.exists()
    cli("backup", str(src))
    r = cli("restore", "latest:/nope", "--target", str(target), ok=False)
    assert r.returncode == 1 and b"/nope" in r.stderr
    assert not target.exists(), "a path that does not resolve creates no target"
    r = cli("restore", "abcdef12:/", "--target", str(target), ok=False)
    assert r.returncode == 1 and not target.exists()
    cli("restore", f"latest:{src}", "--target", str(target))
    assert (target / "f").read_bytes() == b"x"


def test_bad_ids_exit_1_in_every_command(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    cli("backup", str(src))
    bad = ["zz", "0" * 64, "g" * 64, "abc"]
    for object_id in bad:
        for args in (
            ["cat", "snapshot", object_id],
            ["cat", "tree", object_id],
            ["cat", "index", object_id],
            ["cat", "blob", object_id],
            ["cat", "key", object_id],
            ["ls", object_id],
            ["dump", object_id, "/f"],
            ["restore", object_id, "--target", str(tmp_path / "t")],
            ["diff", object_id, "latest"],
            ["stats", object_id],
        ):
            r = cli(*args, ok=False)
            assert r.returncode == 1, (args, r.returncode, r.stderr)
            assert len(r.stderr.decode().splitlines()) == 1 and b"Traceback" not in r.stderr, args
    assert cli("cat", "snapshot", ok=False).returncode == 2, "a missing id is a usage error"


def test_full_disk_errors_name_what_and_where(cli, tmp_path):
    """ENOSPC on a 1 MiB tmpfs (in a private mount namespace): one line naming the object and the repository."""
    import shlex
    import subprocess
    import sys

    from conftest import PASSWORD, cermin_exe

    small = tmp_path / "small"
    small.mkdir()
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)])
    if probe.returncode != 0:
        import pytest

        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3_000_000))
    exe = shlex.join(cermin_exe())
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {small} && {exe} -q -r {small}/repo init && "
        f"{exe} -r {small}/repo backup {big}"
    )
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        env=dict(cli.env, CERMIN_PASSWORD=PASSWORD, PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin"),
        timeout=120,
    )
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.splitlines()) == 1, err
    assert "no space left on device while writing data/" in err and f"in {small}/repo" in err
    assert "None" not in err


def test_init_compression_level_is_the_repositorys_for_good(cli, tmp_path):
    """`init --compression` sets the zstd level every later backup of the repository uses (a level
    19 repository stores compressible data smaller than a level 1 one); a level out of range is
    refused before anything is created, and a config naming one is refused as corrupt."""
    import json

    import msgspec
    import pytest

    from cermin.format import records

    src = tmp_path / "src"
    src.mkdir()
    words = [b"%06d backup mirror drill %d\n" % (i, i * i % 977) for i in range(60_000)]
    (src / "log").write_bytes(b"".join(words))

    def stored(level: int) -> int:
        cli.repo = str(tmp_path / f"repo{level}")
        cli("init", "--compression", str(level))
        assert json.loads(cli("--json", "cat", "config").stdout)["compression_level"] == level
        cli("backup", str(src))
        data = tmp_path / f"repo{level}" / "data"
        return sum(f.stat().st_size for f in data.rglob("*") if f.is_file())

    assert stored(19) < stored(1) * 0.9
    cli.repo = str(tmp_path / "bad")
    for level in ("0", "20"):
        r = cli("init", "--compression", level, ok=False, password=None)
        assert r.returncode == 2 and b"--compression" in r.stderr
    assert not (tmp_path / "bad").exists()
    good = records.RepoSecrets(b"k" * 32, 1, 1, 2, 3, 4, compression_level=19)
    raw = msgspec.msgpack.encode(good).replace(b"\x13", b"\x63")  # level 19 -> 99
    with pytest.raises(msgspec.ValidationError, match="compression_level"):
        msgspec.msgpack.decode(raw, type=records.RepoSecrets)
