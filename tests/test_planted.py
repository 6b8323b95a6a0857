"""One planted object blocks nothing: objects put into a repository by someone holding a storage
credential or a backup token (not the key), key slots with hostile parameters, decompression bombs,
future-dated records, and forget/protection policy enforced by the engine (issue 14)."""

from __future__ import annotations

import os
import struct
import time
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import backup, make_source, mutate_source, restores_identically, small_repo

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.backend.memory import MemoryBackend
from cermin.engine.check import run_check
from cermin.engine.forget import KeepPolicy, forget, plan_forget, remove_snapshots, write_tombstones
from cermin.engine.objectlock import needed_objects
from cermin.engine.protect import protect
from cermin.engine.prune import PruneAborted, execute_prune, plan_prune
from cermin.engine.repair import repair_index, repair_snapshots
from cermin.errors import CorruptObject, ObjectLocked, UsageError
from cermin.format import crypto, pack, records
from cermin.format.records import AuxRecord, Lock
from cermin.repo import keys as keyslots
from cermin.repo.lock import RepoLock, remove_stale_locks
from cermin.repo.repository import Repository
from cermin.repo.snapshots import TOMBSTONE_GRACE, list_snapshots, resolve, retained_snapshot_names

PW = PASSWORD.encode()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))


def plant(backend, kind: Kind, data: bytes) -> str:
    """What a storage credential or backup token can do: any bytes, under their own content hash."""
    name = crypto.file_id(data)
    backend.save(kind, name, data)
    return name


def open_repo(backend) -> Repository:
    repo = Repository.open(backend, PW)
    repo.load_index()
    return repo


@pytest.fixture
def history(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=8)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    first = backup(repo, src)
    mutate_source(src, 1)
    second = backup(repo, src)
    return repo, src, first, second


def test_planted_index_snapshot_and_aux_block_nothing(history, tmp_path):
    repo, src, first, second = history
    be = repo.backend
    planted = {
        (Kind.INDEX, plant(be, Kind.INDEX, os.urandom(300))),
        (Kind.SNAPSHOT, plant(be, Kind.SNAPSHOT, os.urandom(300))),
        (Kind.AUX, plant(be, Kind.AUX, os.urandom(300))),
    }
    # Records that authenticate but are garbage once decoded (written by someone with the key).
    planted.add((Kind.INDEX, repo.save_object(Kind.INDEX, b"\x93not an index")))
    planted.add((Kind.SNAPSHOT, repo.save_object(Kind.SNAPSHOT, msgspec.msgpack.encode({"time": 5}))))

    repo = open_repo(be)  # used to raise: every command stopped here
    skipped = [w for w in repo.warnings if w.startswith("index file")]
    assert len(skipped) == 2 and len(repo.skipped_index_files) == 2
    assert {r.id for r in list_snapshots(repo)} == {first, second}

    restores_identically(repo, second, src, tmp_path / "restore")
    mutate_source(src, 2)
    third = backup(repo, src)
    restores_identically(open_repo(be), third, src, tmp_path / "restore3")

    res = forget(repo, policy=KeepPolicy(last=2))
    assert res.removed == [first]
    plan = plan_prune(repo)  # used to refuse: "snapshot files cannot be read" / "index files are damaged"
    assert sorted(plan.foreign) == sorted(f"{k.value}/{n}" for k, n in planted if k is not Kind.AUX)
    execute_prune(repo, plan)
    for kind, name in planted:  # reported, not deleted blindly
        assert be.exists(kind, name)

    report = run_check(open_repo(be), read_data=True)
    assert report.ok, [p.message for p in report.errors]
    named = {p.object for p in report.notices if p.kind == "foreign_object"}
    assert named == {f"{k.value}/{n}" for k, n in planted}

    r = repair_index(open_repo(be))
    assert len(r.foreign) == 2
    rs = repair_snapshots(open_repo(be))
    assert len(rs.foreign) == 2 and not rs.unreadable_removed
    for kind, name in planted:
        assert be.exists(kind, name)
    restores_identically(open_repo(be), third, src, tmp_path / "restore4")


def test_damaged_snapshot_still_stops_prune(history):
    """Only objects that prove they are foreign are ignored: a damaged file of ours may hold data."""
    repo, _src, first, _second = history
    path = os.path.join(repo.backend.root, "snapshots", first)
    os.chmod(path, 0o600)
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(PruneAborted, match="cannot be read"):
        plan_prune(open_repo(repo.backend))


def test_index_naming_missing_packs_is_not_trusted_for_dedup(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=8)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    backup(repo, src)
    data_dir = os.path.join(repo.backend.root, "data")
    victim = sorted(os.path.join(d, f) for d, _, fs in os.walk(data_dir) for f in fs)[0]
    os.unlink(victim)  # the index still names it
    repo = open_repo(repo.backend)
    snap = backup(repo, src)  # must store again what the lost pack held, not refer to it
    restores_identically(open_repo(repo.backend), snap, src, tmp_path / "restore")
    assert any("missing" in w for w in repo.warnings)


# ---- key slots --------------------------------------------------------------------------------
def _slot(master: bytes, password: bytes, **fields) -> bytes:
    kf = keyslots.make_keyfile(master, password, FAST_KDF)
    for k, v in fields.items():
        setattr(kf, k, v)
    return keyslots.encode_keyfile(kf)


def test_key_slot_with_hostile_kdf_parameters_is_skipped(mem_repo):
    be = mem_repo.backend
    for fields in (
        {"memory_kib": 1 << 40},
        {"iterations": 1 << 32},
        {"lanes": 1 << 20},
        {"memory_kib": 0},
    ):
        plant(be, Kind.KEY, _slot(os.urandom(32), PW, **fields))
    t = time.monotonic()
    repo = Repository.open(be, PW)
    assert time.monotonic() - t < 10
    assert repo.key_name == mem_repo.key_name
    assert sum("outside" in w for w in repo.warnings) == 4


def test_key_slot_not_named_by_its_content_is_skipped(mem_repo):
    be = mem_repo.backend
    good = be.load(Kind.KEY, mem_repo.key_name)
    be.save(Kind.KEY, "0" * 64, good)  # a copy under a name that is not its hash
    repo = Repository.open(be, PW)
    assert repo.key_name == mem_repo.key_name
    assert any("does not match its name" in w for w in repo.warnings)


def test_slot_wrapping_another_key_under_the_same_password_is_skipped(mem_repo):
    """Someone with the password plants a cheap slot around a different master key: opening must
    go on to the real slot instead of failing on the config."""
    be = mem_repo.backend
    cheap = crypto.KdfParams(1024, 1, 1)
    while True:
        data = keyslots.encode_keyfile(keyslots.make_keyfile(os.urandom(32), PW, cheap))
        if crypto.file_id(data) < mem_repo.key_name:  # tried first by name order too
            break
    plant(be, Kind.KEY, data)
    repo = Repository.open(be, PW)
    assert repo.key_name == mem_repo.key_name
    assert any("does not fit" in w for w in repo.warnings)


def test_last_used_slot_is_tried_first(mem_repo, monkeypatch):
    from cermin.repo.keyops import add_key

    second = add_key(mem_repo, b"other password", FAST_KDF)
    assert Repository.open(mem_repo.backend, b"other password").key_name == second
    calls = []
    real = keyslots.unwrap
    monkeypatch.setattr(keyslots, "unwrap", lambda kf, pw: calls.append(kf) or real(kf, pw))
    assert Repository.open(mem_repo.backend, b"other password").key_name == second
    assert len(calls) == 1, "the remembered slot opens with one derivation"
    cached = os.listdir(keyslots.cache_dir())
    assert cached == [mem_repo.config.id]
    assert open(os.path.join(keyslots.cache_dir(), cached[0])).read().strip() == second  # a name, no secret


def test_make_keyfile_refuses_out_of_bounds_parameters():
    with pytest.raises(UsageError):
        keyslots.make_keyfile(os.urandom(32), PW, crypto.KdfParams(1024, 65, 1))
    assert crypto.KdfParams(1024, 1, 1).problem() is None  # the tests' FAST_KDF stays valid


# ---- decompression bombs ----------------------------------------------------------------------
def _bomb(declared: int) -> bytes:
    """A zstd frame whose header declares `declared` bytes of content (8-byte size field)."""
    payload = b"x" * 100
    return (
        b"\x28\xb5\x2f\xfd"
        + bytes([0xE0])
        + struct.pack("<Q", declared)
        + struct.pack("<I", 1 | (len(payload) << 3))[:3]
        + payload
    )


def test_bomb_in_blob_is_refused_by_its_declared_length(mem_repo):
    repo = mem_repo
    data = b"hello"
    bid = repo.blob_id(data)
    b = pack.PackBuilder(repo.keys)
    b.add(pack.DATA, bid, b"\x01" + _bomb(1 << 40), len(data))
    entries = list(b.entries)
    pack_bytes = b.finish()
    pid = crypto.file_id(pack_bytes)
    repo.backend.save(Kind.DATA, pid, pack_bytes)
    from cermin.format import index as fmt_index

    repo.save_index([records.IndexPack(bytes.fromhex(pid), fmt_index.pack_entries(entries))])
    repo = open_repo(repo.backend)
    with pytest.raises(CorruptObject, match="declares"):
        repo.load_blob(bid)


def test_bomb_in_index_and_snapshot_objects_is_skipped(history):
    repo, _src, first, second = history
    for kind in (Kind.INDEX, Kind.SNAPSHOT):
        data = crypto.seal(repo.keys, b"\x01" + _bomb(1 << 40), b"cermin/" + kind.value.encode())
        plant(repo.backend, kind, data)
    repo = open_repo(repo.backend)
    assert any("declares" in w for w in repo.warnings)
    assert {r.id for r in list_snapshots(repo)} == {first, second}


def test_decompress_caps_frames_without_a_size():
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (4 << 20))
    with pytest.raises(CorruptObject):
        pack.decompress(b"\x01" + frame, "x", 1 << 20)
    assert len(pack.decompress(b"\x01" + frame, "x", 4 << 20)) == 4 << 20
    with pytest.raises(CorruptObject):
        pack.decompress(b"\x00" + b"a" * 10, "x", 9)


# ---- future-dated records ---------------------------------------------------------------------
def _future_copy(repo: Repository, sid: str, when: str = "2999-01-01T00:00:00.000000000Z") -> str:
    snap = repo.load_snapshot(sid)
    snap.time = when
    return repo.save_snapshot(snap)


def test_future_snapshot_is_never_a_parent_nor_latest(history):
    repo, src, _first, second = history
    planted = _future_copy(repo, second)
    repo = open_repo(repo.backend)
    refs = {r.id: r for r in list_snapshots(repo)}
    assert refs[planted].future and not refs[second].future
    assert resolve(repo, "latest").id == second
    from cermin.engine.backup import BackupOptions, run_backup

    s = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2))
    assert s.parent == second
    report = run_check(open_repo(repo.backend))
    assert [p.object for p in report.notices if p.kind == "snapshot_future"] == [planted]


def test_future_snapshot_does_not_move_keep_within(history):
    repo, _src, first, second = history
    planted = _future_copy(repo, second)
    groups = plan_forget(list_snapshots(repo), KeepPolicy(within="1d"))
    assert [d.ref.id for g in groups for d in g.remove] == []
    assert forget(repo, policy=KeepPolicy(within="1d"), dry_run=True).ids == []
    res = forget(repo, policy=KeepPolicy(last=1))
    assert sorted(res.removed) == [first]  # the real newest is "last", not the one from 2999
    assert {r.id for r in list_snapshots(repo)} == {second, planted}


def test_future_lock_blocks_nothing_and_plain_unlock_removes_it(mem_repo):
    lock = Lock(time="2999-01-01T00:00:00Z", exclusive=True, hostname="elsewhere", pid=1, operation="prune")
    name = mem_repo.save_object(Kind.LOCK, records.encode(lock))
    with RepoLock(mem_repo, False, "backup"):
        pass
    assert remove_stale_locks(mem_repo) == [name]
    # A lock only slightly ahead (within the allowance) is honoured.
    now = datetime.now(UTC) + timedelta(minutes=5)
    near = Lock(time=now.strftime("%Y-%m-%dT%H:%M:%SZ"), exclusive=True, hostname="elsewhere", pid=1)
    mem_repo.save_object(Kind.LOCK, records.encode(near))
    from cermin.errors import RepositoryLocked

    with pytest.raises(RepositoryLocked):
        RepoLock(mem_repo, False, "backup").acquire()


# ---- protection in the engine -----------------------------------------------------------------
def test_library_callers_cannot_forget_a_protected_snapshot(history):
    repo, _src, first, second = history
    protect(repo, resolve(repo, first), datetime.now(UTC) + timedelta(days=30))
    with pytest.raises(UsageError, match="protected until"):
        remove_snapshots(repo, [first, second])
    assert repo.backend.exists(Kind.SNAPSHOT, first) and repo.backend.exists(Kind.SNAPSHOT, second)
    with pytest.raises(UsageError, match="protected until"):
        forget(repo, [first[:8]])
    res = forget(repo, policy=KeepPolicy(last=1))  # protections loaded by the engine itself
    assert res.removed == [] and repo.backend.exists(Kind.SNAPSHOT, first)


# ---- tombstones under Object Lock -------------------------------------------------------------
class LockedSnapshots(MemoryBackend):
    """Storage that refuses to delete snapshot files, as S3 does under a compliance lock."""

    def remove(self, kind: Kind, name: str) -> None:
        if kind is Kind.SNAPSHOT:
            raise ObjectLocked(f"{kind.value}/{name} is locked")
        super().remove(kind, name)


def test_forgotten_snapshots_under_lock_are_tombstoned(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=4)
    repo = small_repo(LockedSnapshots())
    ids = []
    for step in range(3):
        mutate_source(src, step)
        ids.append(backup(repo, src))
    res = forget(repo, policy=KeepPolicy(last=1))
    assert sorted(res.locked) == sorted(ids[:2]) and not res.removed
    assert [r.id for r in list_snapshots(repo)] == [ids[2]]
    shown = list_snapshots(repo, include_forgotten=True)
    assert [(r.id, r.forgotten) for r in shown] == [(ids[0], True), (ids[1], True), (ids[2], False)]
    # A tombstone unlocks nothing until it has stood for the grace (a stolen password must not
    # unlock every snapshot at once); then the forgotten snapshots are no longer re-locked.
    assert retained_snapshot_names(repo) == sorted(ids)
    later = datetime.now(UTC) + timedelta(seconds=TOMBSTONE_GRACE + 60)
    assert retained_snapshot_names(repo, now=later.timestamp()) == [ids[2]]
    snaps_locked = [n for k, n in needed_objects(repo, now=later) if k is Kind.SNAPSHOT]
    assert snaps_locked == [ids[2]]
    forget(repo, policy=KeepPolicy(last=1))  # again: no second tombstone
    assert sum(1 for _ in repo.backend.list(Kind.AUX)) == 2
    plan = plan_prune(repo)
    assert plan.used_blobs > 0
    execute_prune(repo, plan)
    restores_identically(open_repo(repo.backend), ids[2], src, tmp_path / "r")

    # "revived" cancels a tombstone
    rec = AuxRecord(type="revived", time=records_now(), target=ids[1])
    repo.save_object(Kind.AUX, records.encode(rec))
    assert [r.id for r in list_snapshots(repo)] == [ids[1], ids[2]]


def records_now() -> str:
    from cermin.util import now_rfc3339

    return now_rfc3339()


def test_tombstones_never_hide_the_newest_or_a_protected_snapshot(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=4)
    repo = small_repo(LockedSnapshots())
    ids = []
    for step in range(3):
        mutate_source(src, step)
        ids.append(backup(repo, src))
    repo.load_index()
    protect(repo, resolve(repo, ids[0]), datetime.now(UTC) + timedelta(days=30))
    write_tombstones(repo, ids)  # what anyone with the password could do
    assert [r.id for r in list_snapshots(repo)] == [ids[0], ids[2]]
    future = AuxRecord(type="forgotten", time="2999-01-01T00:00:00Z", target=ids[1])
    repo.save_object(Kind.AUX, records.encode(future))
    rec = AuxRecord(type="revived", time=records_now(), target=ids[1])
    repo.save_object(Kind.AUX, records.encode(rec))
    assert [r.id for r in list_snapshots(repo)] == ids, "a tombstone dated in the future cannot outlast revival"


def test_cli_reports_planted_objects_and_keeps_working(initialized_cli, tmp_path):
    import json

    cli = initialized_cli
    src = tmp_path / "src"
    make_source(src, files=4)
    cli("backup", str(src))
    be = LocalBackend(cli.repo)
    idx = plant(be, Kind.INDEX, os.urandom(200))
    snap = plant(be, Kind.SNAPSHOT, os.urandom(200))
    r = cli("backup", str(src))
    assert f"index file {idx[:12]} skipped" in r.stderr.decode()
    r = cli("snapshots")
    assert snap[:8] in r.stderr.decode() and b"2 snapshots" in r.stdout
    cli("restore", "latest", "--target", str(tmp_path / "out"))
    cli("forget", "--keep-last", "1", "--prune")
    out = [json.loads(x) for x in cli("--json", "check").stdout.splitlines()]
    assert out[-1]["ok"] is True
    assert {o["object"] for o in out if o.get("kind") == "foreign_object"} == {f"index/{idx}", f"snapshots/{snap}"}
    assert be.exists(Kind.INDEX, idx) and be.exists(Kind.SNAPSHOT, snap)
