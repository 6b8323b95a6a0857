"""Cross-cutting (the CLI end to end): bad input through the real command: one clear line, the documented exit
code, nothing lost."""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess

import pytest
from conftest import PASSWORD

from cermin.backend.local import LocalBackend
from cermin.repo.lock import RepoLock
from cermin.repo.repository import Repository


def one_line_error(r, code: int, *needles: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == code, f"exit {r.returncode}, expected {code}: {err}"
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("cermin: error:"), err
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def drop_dac_capabilities():
    """preexec_fn: keep uid 0 but lose the capabilities that let root ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: gone after exec


def unprivileged() -> dict:
    return {"preexec_fn": drop_dac_capabilities} if os.geteuid() == 0 else {}


def test_wrong_password(initialized_cli):
    one_line_error(initialized_cli("snapshots", password="nope", ok=False), 12, "wrong password")


def test_missing_repository(cli):
    one_line_error(cli("snapshots", ok=False), 10, "no repository")
    one_line_error(cli("backup", "/etc/hostname", ok=False), 10)


def test_no_password_source(initialized_cli):
    r = initialized_cli("snapshots", password=None, ok=False, stdin=subprocess.DEVNULL)
    one_line_error(r, 2, "no password given")


def _writable(path):
    os.chmod(path, 0o600)
    return path


def test_corrupted_config_key_and_version(initialized_cli):
    cli = initialized_cli
    cfg = _writable(os.path.join(cli.repo, "config"))
    original = open(cfg, "rb").read()
    open(cfg, "wb").write(b"\x00garbage")
    one_line_error(cli("snapshots", ok=False), 1, "config", "corrupted")
    doc = json.loads(original)
    doc["version"] = 7
    open(cfg, "w").write(json.dumps(doc))
    one_line_error(cli("snapshots", ok=False), 1, "version 7", "not supported")
    open(cfg, "wb").write(original)
    key = _writable(os.path.join(cli.repo, "keys", os.listdir(os.path.join(cli.repo, "keys"))[0]))
    open(key, "wb").write(b'{"version": 1}')
    one_line_error(cli("snapshots", ok=False), 1, "key file", "corrupted")


def test_unreadable_file_gives_incomplete_snapshot(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "ok").write_bytes(b"fine")
    (src / "secret").write_bytes(b"hidden")
    os.chmod(src / "secret", 0)
    r = cli("backup", str(src), ok=False, **unprivileged())
    assert r.returncode == 3, r.stderr.decode()
    assert b"secret" in r.stderr and b"Permission denied" in r.stderr and b"Traceback" not in r.stderr
    snap = json.loads(cli("--json", "snapshots").stdout)["snapshots"][0]
    assert snap["incomplete"] is True and snap["summary"]["errors"] == 1
    out = tmp_path / "out"
    cli("restore", "latest", "--target", str(out))
    assert (out / str(src).lstrip("/") / "ok").read_bytes() == b"fine"


def test_missing_source_path(initialized_cli, tmp_path):
    one_line_error(initialized_cli("backup", str(tmp_path / "nope"), ok=False), 1, "does not exist")


def test_locked_repository(initialized_cli, tmp_path):
    repo = Repository.open(LocalBackend(initialized_cli.repo), PASSWORD.encode())
    with RepoLock(repo, True, "prune"):
        one_line_error(initialized_cli("backup", str(tmp_path), ok=False), 11, "locked")
    initialized_cli("backup", str(tmp_path))


def test_target_not_writable(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "f").write_bytes(b"1")
    cli("backup", str(src))
    (tmp_path / "afile").write_bytes(b"")
    one_line_error(cli("restore", "latest", "--target", str(tmp_path / "afile" / "sub"), ok=False), 1, "target")
    ro = tmp_path / "readonly"
    os.makedirs(ro)
    os.chmod(ro, 0o555)
    one_line_error(cli("restore", "latest", "--target", str(ro), ok=False, **unprivileged()), 1, "target")


def test_damaged_pack_is_reported_on_restore(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "f").write_bytes(os.urandom(100_000))
    cli("backup", str(src))
    data_dir = os.path.join(cli.repo, "data")
    packs = [os.path.join(d, f) for d, _, fs in os.walk(data_dir) for f in fs]
    for p in packs:  # flip one byte in the middle of every pack
        _writable(p)
        b = bytearray(open(p, "rb").read())
        b[len(b) // 2] ^= 0xFF
        open(p, "wb").write(bytes(b))
    r = cli("restore", "latest", "--target", str(tmp_path / "out"), ok=False)
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert b"failed authentication" in r.stderr or b"damaged" in r.stderr


def test_extreme_shapes(initialized_cli, tmp_path):
    """0-byte files, a 4 GiB sparse file and a 10,000-deep path (beyond PATH_MAX)."""
    cli = initialized_cli
    src = tmp_path / "src"
    out = tmp_path / "out"
    try:
        os.makedirs(src)
        for i in range(5):
            (src / f"empty{i}").write_bytes(b"")
        with open(src / "sparse4g", "wb") as f:
            f.truncate(4 << 30)
            f.seek(2 << 30)
            f.write(b"middle")
        fd = os.open(src, os.O_RDONLY)
        for _ in range(10_000):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"at the bottom")
        os.close(leaf)
        os.close(fd)
        s = [json.loads(x) for x in cli("--json", "backup", str(src)).stdout.splitlines()][-1]
        assert s["errors"] == 0 and s["dirs"] == 10_001
        cli("restore", "latest", "--target", str(out), "--verify")
        base = out / str(src).lstrip("/")
        assert os.path.getsize(base / "empty3") == 0
        st = os.stat(base / "sparse4g")
        assert st.st_size == 4 << 30 and st.st_blocks * 512 < (1 << 24)
        with open(base / "sparse4g", "rb") as f:
            f.seek(2 << 30)
            assert f.read(6) == b"middle"
        fd = os.open(base, os.O_RDONLY)
        for _ in range(10_000):
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 100) == b"at the bottom"
        os.close(leaf)
        os.close(fd)
    finally:
        subprocess.run(["rm", "-rf", str(src), str(out)])  # shutil.rmtree recurses too deep


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    os.makedirs(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk(tiny_fs, tmp_path):
    from conftest import Cli

    cli = Cli(str(tiny_fs / "repo"), {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")})
    cli("init")
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "small").write_bytes(b"fits")
    cli("backup", str(src))
    (src / "big").write_bytes(os.urandom(8 << 20))
    one_line_error(cli("backup", str(src), ok=False), 1, "no space left")
    snaps = json.loads(cli("--json", "snapshots").stdout)["snapshots"]
    assert len(snaps) == 1
    out = tmp_path / "out"
    cli("restore", "latest", "--target", str(out), "--verify")
    assert (out / str(src).lstrip("/") / "small").read_bytes() == b"fits"
    assert not [f for d, _, fs in os.walk(cli.repo) for f in fs if f.startswith(".tmp-")]


def test_odd_arguments_give_clean_errors(initialized_cli, tmp_path):
    cli = initialized_cli
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "f").write_bytes(b"x")
    cli("backup", str(tmp_path / "s"))
    for args, code in [
        (("--keep-last", "-1"), 2),
        (("--keep-tag", ""), 2),
    ]:
        r = cli("forget", *args, ok=False)
        assert r.returncode == code and b"Traceback" not in r.stderr, (args, r.stderr)
    assert len(json.loads(cli("--json", "snapshots").stdout)["snapshots"]) == 1, "nothing was forgotten"
    for args in [("cat", "blob", "zz"), ("cat", "tree", "g" * 64), ("cat", "index", "../config")]:
        r = cli(*args, ok=False)  # a bad id is exit 1 in every command (README)
        assert r.returncode == 1 and b"Traceback" not in r.stderr and b"internal" not in r.stderr, args
    for cmd in ['"x', "  "]:
        r = cli("--password-command", cmd, "snapshots", password=None, ok=False)
        assert r.returncode == 2 and b"internal" not in r.stderr, cmd
    r = cli("restore", "latest", "--target", "", ok=False)
    assert r.returncode == 2
    r = cli("backup", "--stdin", "--stdin-filename", "..", input=b"x", ok=False)
    assert r.returncode == 2
    r = cli("ls", "latest", str(tmp_path / "s" / "f" / "deeper"), ok=False)
    assert r.returncode == 1 and b"f is a file" in r.stderr


def test_restore_subpath_forms_and_sockets(initialized_cli, tmp_path):
    import socket

    cli = initialized_cli
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(b"a")
    (src / "d" / "sub" / "b.txt").write_bytes(b"b")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "d" / "sock"))
    cli("backup", str(src))
    s.close()
    rel = str(src).lstrip("/")
    for i, spec in enumerate([f"latest:{rel}/d", f"latest:/{rel}//d/", f"latest:{src}/d"]):
        out = tmp_path / f"o{i}"
        r = cli("restore", spec, "--target", str(out), "--include", f"{src}/d/sub/*")
        assert r.returncode == 0 and b"socket not restored" not in r.stderr
        assert sorted(os.listdir(out)) == ["sub"], spec
    out = tmp_path / "all"
    r = cli("restore", f"latest:{src}/d", "--target", str(out))
    assert r.returncode == 0 and b"socket not restored" not in r.stderr
    assert stat.S_ISSOCK(os.lstat(out / "sock").st_mode), "a socket is recreated"
    out = tmp_path / "excl"
    cli("restore", f"latest:{rel}/d/a.txt", "--target", str(out), "--exclude", f"{src}/d/a.txt")
    assert not os.path.exists(out / "a.txt")
