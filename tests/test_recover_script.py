"""scripts/cermin-recover.py: the stand-alone recovery script restores a snapshot using only FORMAT.md
and three libraries, and planted objects do not stop it (red-team reproductions, issue 14 review)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import stat
import subprocess
import sys
import time

import pytest
from conftest import PASSWORD
from helpers import SMALL, backup, make_rich_tree, make_source, small_repo

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.format import crypto
from cermin.format.records import Snapshot
from cermin.repo.repository import Repository

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


@pytest.fixture
def repo_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))
    make_source(tmp_path / "src", files=3)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    backup(repo, tmp_path / "src")
    return repo.backend, str(tmp_path / "repo")


def recover(repo: str, target, timeout=60):
    env = dict(os.environ, CERMIN_PASSWORD=PASSWORD)
    return subprocess.run(
        [sys.executable, SCRIPT, repo, "latest", str(target)], capture_output=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize("kind", [Kind.INDEX, Kind.SNAPSHOT])
def test_recovery_script_skips_planted_objects(repo_dir, tmp_path, kind):
    """Red-team reproduction (issue 14 review)."""
    backend, path = repo_dir
    junk = bytes(32) + os.urandom(100)  # a storage credential or backup token: any bytes under their hash
    backend.save(kind, crypto.file_id(junk), junk)
    r = recover(path, tmp_path / "out")
    assert r.returncode == 0, r.stderr.decode()[-300:]


def test_recovery_script_is_not_hung_by_a_planted_key_slot(repo_dir, tmp_path):
    """Red-team reproduction (issue 14 review)."""
    _, path = repo_dir
    slot = {
        "version": 1,
        "kdf": "argon2id",
        "memory_kib": 65536,
        "iterations": 2**31,
        "lanes": 1,
        "salt": base64.b64encode(b"s" * 16).decode(),
        "wrapped": base64.b64encode(b"w" * 60).decode(),
    }
    with open(os.path.join(path, "keys", "000000planted"), "w") as f:
        json.dump(slot, f)
    try:
        r = recover(path, tmp_path / "out", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("recovery script still deriving the planted slot's key after 20 s")
    assert r.returncode == 0


def _slot(iterations=2**31, memory_kib=65536, **kw) -> bytes:
    """A key slot named by its own bytes (so only the KDF bounds can stop it)."""
    return json.dumps(
        {
            "version": 1,
            "kdf": "argon2id",
            "memory_kib": memory_kib,
            "iterations": iterations,
            "lanes": 1,
            "salt": base64.b64encode(b"s" * 16).decode(),
            "wrapped": base64.b64encode(b"w" * 60).decode(),
        }
        | kw
    ).encode()


@pytest.mark.parametrize(
    "slot",
    [_slot(iterations=2**31), _slot(iterations=3, memory_kib=2**40), _slot(iterations=3, lanes=2**20)],
    ids=["iterations", "memory", "lanes"],
)
def test_recovery_script_skips_a_correctly_named_slot_outside_the_kdf_bounds(repo_dir, tmp_path, slot):
    backend, path = repo_dir
    backend.save(Kind.KEY, crypto.file_id(slot), slot)
    t0 = time.monotonic()
    r = recover(path, tmp_path / "out", timeout=30)
    assert r.returncode == 0, r.stderr.decode()[-300:]
    assert b"outside" in r.stderr and time.monotonic() - t0 < 20


def _load_script():
    spec = importlib.util.spec_from_file_location("cermin_recover", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recovery_script_tries_key_slots_cheapest_first(tmp_path, monkeypatch):
    """Derivations run in order of cost (memory x iterations) and stop at the first slot that fits."""
    mod = _load_script()
    keys = tmp_path / "keys"
    keys.mkdir()
    costs = [(65536, 4), (1024, 1), (4 * 1024 * 1024, 64), (65536, 1)]
    for mem, it in costs:
        data = _slot(iterations=it, memory_kib=mem)
        (keys / crypto.file_id(data)).write_bytes(data)
    derived = []

    class Recorder:
        def __init__(self, salt, length, iterations, lanes, memory_cost):
            self.cost = (memory_cost, iterations)

        def derive(self, password):
            derived.append(self.cost)
            return bytes(32)  # opens no slot: every slot is tried

    monkeypatch.setattr(mod, "Argon2id", Recorder)
    with pytest.raises(SystemExit, match="wrong password"):
        mod.open_master_key(str(tmp_path), b"pw", lambda master: master)
    assert derived == sorted(costs, key=lambda c: c[0] * c[1])


SLOWER = crypto.KdfParams(2048, 1, 1)


def test_recovery_script_skips_a_slot_that_opens_but_does_not_fit(tmp_path, monkeypatch):
    """Someone with the password plants a cheap slot around another master key: it is skipped."""
    from cermin.repo import keys as keyslots

    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))
    make_source(tmp_path / "src", files=2)
    # the real slot costs a little more, so the planted one is tried first
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), **SMALL | {"kdf": SLOWER})
    backup(repo, tmp_path / "src")
    kf = keyslots.make_keyfile(os.urandom(32), PASSWORD.encode(), crypto.KdfParams(1024, 1, 1))
    data = keyslots.encode_keyfile(kf)
    repo.backend.save(Kind.KEY, crypto.file_id(data), data)
    r = recover(str(tmp_path / "repo"), tmp_path / "out")
    assert r.returncode == 0, r.stderr.decode()[-300:]
    assert b"does not fit" in r.stderr


def test_recovery_script_skips_an_authentic_index_that_is_a_decompression_bomb(repo_dir, tmp_path):
    """Red-team reproduction (issue 14 review). An index file (sealed with the key) whose zstd frame declares 1 TiB
    is skipped unread."""
    backend, path = repo_dir
    repo = Repository.open(backend, PASSWORD.encode())
    frame = b"\x28\xb5\x2f\xfd\xe0" + (1 << 40).to_bytes(8, "little") + b"\x01\x00\x00"
    data = crypto.seal(repo.keys, b"\x01" + frame, b"cermin/index")
    backend.save(Kind.INDEX, crypto.file_id(data), data)
    r = recover(path, tmp_path / "out")
    assert r.returncode == 0, r.stderr.decode()[-300:]
    assert b"declares 1099511627776 bytes" in r.stderr


def test_recovery_script_latest_is_not_a_future_dated_snapshot(repo_dir, tmp_path):
    backend, path = repo_dir
    repo = Repository.open(backend, PASSWORD.encode())
    real = repo.load_snapshot(next(n for n, _ in backend.list(Kind.SNAPSHOT)))
    repo.save_snapshot(Snapshot(time="2999-01-01T00:00:00Z", tree=real.tree, paths=["/planted"]))
    r = recover(path, tmp_path / "out")
    assert r.returncode == 0, r.stderr.decode()[-300:]
    assert b"dated in the future" in r.stderr and real.time.encode() in r.stdout


@pytest.mark.parametrize("version", [2, 3])
def test_recovery_script_reads_both_tree_namings(tmp_path, monkeypatch, version):
    """Format 2 named trees with the data key, format 3 with a key derived for trees (FORMAT.md §5):
    the script restores either, including the file and the empty directory whose bytes collide."""
    from cermin.repo import repository

    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(repository, "FORMAT_VERSION", version)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    monkeypatch.undo()
    src = tmp_path / "src"
    make_source(src, files=3)
    (src / "x80").write_bytes(b"\x80")  # an empty tree's encoding
    (src / "empty").mkdir()
    backup(repo, src)
    assert repo.config.version == version
    out = tmp_path / "out"
    r = recover(str(tmp_path / "repo"), out)
    assert r.returncode == 0, r.stderr.decode()
    restored = out / str(src).lstrip("/")
    assert (restored / "x80").read_bytes() == b"\x80" and os.listdir(restored / "empty") == []
