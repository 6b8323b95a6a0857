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
    """data/.tmp-spool-* (a pack being built) and data/XX/.tmp-* (an object being saved)."""
    data = os.path.join(repo_dir, "data")
    out = [os.path.join(data, n) for n in os.listdir(data) if n.startswith(".tmp-")]
    for d in os.listdir(data):
        if os.path.isdir(os.path.join(data, d)):
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


# ---- spooled objects (packs written as they are built) ------------------------------------------
def _spool_fixture(tmp_path):
    from cermin.backend.local import LocalBackend

    b = LocalBackend(str(tmp_path / "repo"))
    b.create()
    return b


def test_a_spool_commits_like_save_and_never_replaces_an_object(tmp_path):
    import pytest

    from cermin.backend.base import Kind
    from cermin.errors import ObjectExists

    b = _spool_fixture(tmp_path)
    s = b.spool(Kind.DATA)
    s.write([b"abc", memoryview(b"defg"), bytearray(b"")])
    s.write([b"h" * 5000])
    assert s.size == 5007
    s.commit("ab" * 32)
    assert b.load(Kind.DATA, "ab" * 32) == b"abcdefg" + b"h" * 5000
    assert os.stat(os.path.join(b.root, "data", "ab", "ab" * 32)).st_mode & 0o777 == 0o400
    assert _temp_files(b.root) == []

    s = b.spool(Kind.DATA)
    s.write([b"other bytes"])
    with pytest.raises(ObjectExists):
        s.commit("ab" * 32)
    assert b.load(Kind.DATA, "ab" * 32) == b"abcdefg" + b"h" * 5000
    assert _temp_files(b.root) == []

    s = b.spool(Kind.DATA)
    s.write([b"dropped"])
    assert len(_temp_files(b.root)) == 1
    s.discard()
    assert _temp_files(b.root) == []


def test_wrappers_never_hand_out_the_inner_stores_spool(tmp_path):
    """A spool writes straight to the inner store: a verifying, retrying or fault-injecting wrapper
    would be bypassed, so every wrapper takes whole objects through its own `save`."""
    from cermin.backend.base import Kind
    from cermin.backend.faulty import FaultyBackend
    from cermin.backend.retry import RetryBackend
    from cermin.backend.verifying import VerifyingBackend

    b = _spool_fixture(tmp_path)
    for wrapper in (VerifyingBackend(b), RetryBackend(b), FaultyBackend(b)):
        assert wrapper.spool(Kind.DATA) is None, type(wrapper).__name__


def test_a_backup_spools_packs_and_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Packs on a local repository go to data/.tmp-spool-* as they are built and are linked under
    their hash; ENOSPC in the middle of one fails the backup in one error and removes the file."""
    import errno

    import pytest
    from helpers import backup, clean, make_source, reopen, restores_identically, small_repo

    from cermin.backend import local as local_mod
    from cermin.errors import CerminError
    from cermin.format import crypto

    b = _spool_fixture(tmp_path)
    repo = small_repo(b)
    src = tmp_path / "src"
    make_source(src, files=40)
    written = []
    real = local_mod.write_all
    monkeypatch.setattr(local_mod, "write_all", lambda fd, parts: written.append(len(parts)) or real(fd, parts))
    snap = backup(repo, src)
    assert written and _temp_files(b.root) == []
    for name, _ in b.list(local_mod.Kind.DATA):  # every pack is named by the hash of its bytes
        assert crypto.file_id(b.load(local_mod.Kind.DATA, name)) == name
    repo = reopen(b)
    assert clean(repo)
    restores_identically(repo, snap, src, tmp_path / "out")

    calls = []

    def full(fd, parts):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, parts)

    monkeypatch.setattr(local_mod, "write_all", full)
    make_source(src / "more", files=40, seed=9)
    with pytest.raises(CerminError, match=r"no space left on device while writing data/"):
        backup(repo, src)
    assert _temp_files(b.root) == []
    monkeypatch.setattr(local_mod, "write_all", real)
    repo = reopen(b)
    assert clean(repo)
    backup(repo, src)


def test_a_failed_spool_write_never_becomes_a_pack(tmp_path, monkeypatch):
    """A spool write that fails after writing part of its bytes (ENOSPC), or is interrupted (Ctrl-C on
    the walking thread), breaks that pack: it is discarded, never sealed or linked under a name that
    is not the hash of its bytes, and the saver stores nothing more (its blobs were counted pending)."""
    import errno
    import glob

    import pytest
    from conftest import FAST_KDF, PASSWORD

    from cermin.backend import local as local_mod
    from cermin.backend.local import LocalBackend
    from cermin.format import crypto, pack
    from cermin.repo.repository import Repository
    from cermin.repo.saver import BlobSaver

    real = local_mod.write_all
    for how in ("enospc", "interrupt"):
        root = tmp_path / how
        repo = Repository.init(LocalBackend(str(root)), PASSWORD.encode(), kdf=FAST_KDF, pack_size=3 << 20)
        saver = BlobSaver(repo, builders=1)
        calls = []

        def flaky(fd, parts, how=how, calls=calls):
            calls.append(1)
            if len(calls) == 2:
                if how == "enospc":
                    os.write(fd, memoryview(parts[0])[: len(parts[0]) // 2])  # what fitted
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise KeyboardInterrupt
            real(fd, parts)

        monkeypatch.setattr(local_mod, "write_all", flaky)
        with pytest.raises((KeyboardInterrupt, Exception)):
            for _ in range(40):
                data = os.urandom(350_000)
                saver.save(pack.DATA, repo.blob_id(data), data)
        with pytest.raises((KeyboardInterrupt, Exception)):  # nothing more is stored by this saver
            data = os.urandom(1000)
            saver.save(pack.DATA, repo.blob_id(data), data)
        saver.close()
        for path in glob.glob(str(root / "data" / "??" / "*")):
            with open(path, "rb") as f:
                assert crypto.file_id(f.read()) == os.path.basename(path), f"{how}: {path}"
        assert _temp_files(str(root)) == [], how
