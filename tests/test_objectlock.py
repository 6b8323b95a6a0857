"""engine/objectlock.py and the immutable tier on real SeaweedFS: with the very credentials cermin uses,
deleting, overwriting, hiding or shortening the retention of locked objects is refused or harmless."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FAST_KDF, PASSWORD, Cli, cermin_exe, s3_location
from helpers import assert_same_tree, make_source, two_backups

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.backend.s3 import S3Backend
from cermin.engine.objectlock import extend_locks, needed_objects
from cermin.format import records
from cermin.format.records import AuxRecord, Snapshot
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.snapshots import retained_snapshot_names
from cermin.util import now_rfc3339


@pytest.fixture
def redteam_history(tmp_path):
    repo, _src, first, second = two_backups(tmp_path, files=4)
    return repo, first, second


def s3cli(seaweed, tmp_path, bucket="locked") -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    return Cli(s3_location(seaweed, bucket, "imm"), env)


def jl(r):
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def key_of(cli: Cli, kind: str, name: str) -> str:
    prefix = cli.repo.split("/", 4)[4]
    sub = f"{kind}/{name[:2]}/{name}" if kind == "data" else f"{kind}/{name}"
    return f"{prefix}/{sub}"


@pytest.fixture
def locked_repo(seaweed, tmp_path):
    cli = s3cli(seaweed, tmp_path)
    cli("init", "--object-lock", "30", "--maintenance-interval", "7")
    src = tmp_path / "src"
    make_source(src, files=6)
    cli("backup", str(src))
    return cli, src


def restore_ok(cli, src, tmp_path, tag):
    out = tmp_path / f"out-{tag}"
    cli("restore", "latest", "--target", str(out), "--verify")
    assert_same_tree(src, out / str(src).lstrip("/"))


def test_policy_shorter_than_maintenance_is_refused(seaweed, tmp_path):
    cli = s3cli(seaweed, tmp_path)
    r = cli("init", "--object-lock", "10", "--maintenance-interval", "7", ok=False)
    assert r.returncode == 2 and b"too short" in r.stderr and b"at least 14 days" in r.stderr
    r = s3cli(seaweed, tmp_path, bucket="plain")("init", "--object-lock", "30", ok=False)
    assert r.returncode == 1 and b"Object Lock" in r.stderr


def test_attacks_with_the_clients_own_credentials(locked_repo, seaweed, tmp_path):
    cli, src = locked_repo
    s3 = seaweed.boto()
    snap = jl(cli("--json", "snapshots"))[0]["snapshots"][0]["id"]
    listing = s3.list_objects_v2(Bucket="locked", Prefix=cli.repo.split("/", 4)[4] + "/data/")
    packs = [k["Key"] for k in listing["Contents"]]
    snap_key = key_of(cli, "snapshots", snap)

    # 1. deleting a locked version for real is refused
    for key in [snap_key, packs[0]]:
        versions = s3.list_object_versions(Bucket="locked", Prefix=key)["Versions"]
        with pytest.raises(Exception, match="AccessDenied|locked|Locked|retention"):
            s3.delete_object(Bucket="locked", Key=key, VersionId=versions[0]["VersionId"])

    # 2. shortening the retention is refused
    with pytest.raises(Exception, match="AccessDenied|Invalid|retention|Retention"):
        s3.put_object_retention(
            Bucket="locked",
            Key=snap_key,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(days=1)},
        )

    # 3. overwriting plants a new version: cermin reads the version it wrote
    for key in packs:
        s3.put_object(Bucket="locked", Key=key, Body=b"ransomware was here")
    s3.put_object(Bucket="locked", Key=snap_key, Body=b"garbage")
    restore_ok(cli, src, tmp_path, "overwritten")

    # 4. a plain DELETE only adds delete markers: still listed, still restorable
    for key in packs + [snap_key]:
        s3.delete_object(Bucket="locked", Key=key)
    assert [s["id"] for s in jl(cli("--json", "snapshots"))[0]["snapshots"]] == [snap]
    restore_ok(cli, src, tmp_path, "hidden")
    status = jl(cli("--json", "lock", "status"))[0]
    assert len(status["hidden"]) == len(packs) + 1
    cli("lock", "unhide")
    assert jl(cli("--json", "lock", "status"))[0]["hidden"] == []
    r = cli("--json", "check", "--read-data", ok=False)
    assert r.returncode == 0, r.stdout.decode()

    # 5. forget and prune through cermin cannot remove what is locked either
    r = cli("forget", snap)
    assert b"Object Lock" in r.stderr
    out = jl(cli("--json", "prune", "--max-unused", "0%", "--extend-locks"))
    assert out[-2]["packs_deleted"] == 0 and out[-1]["message_type"] == "lock"
    restore_ok(cli, src, tmp_path, "after-prune")


def test_lock_extend_touches_only_what_needs_it(locked_repo, seaweed, tmp_path):
    cli, src = locked_repo

    from cermin.repo.repository import Repository

    backend = S3Backend(cli.repo)
    repo = Repository.open(backend, PASSWORD.encode())
    now = datetime.now(UTC)
    assert extend_locks(repo, now=now).extended == 0, "fresh objects are locked long enough"
    later = now + timedelta(days=20)  # 20 days on, 30-day locks lapse before the next run + margin
    rep = extend_locks(repo, now=later)
    assert rep.extended == rep.checked > 5
    assert extend_locks(repo, now=later).extended == 0, "a second run finds nothing to do"
    snap = jl(cli("--json", "snapshots"))[0]["snapshots"][0]["id"]
    from cermin.backend.base import Kind

    assert backend.retention(Kind.SNAPSHOT, snap) > later + timedelta(days=29)


def test_protect_extends_object_lock_to_the_date(locked_repo):
    cli, src = locked_repo
    snap = jl(cli("--json", "snapshots"))[0]["snapshots"][0]["id"]
    out = jl(cli("--json", "protect", snap[:8], "--until", "2027-06-01"))[0]
    assert out["objects_locked"] >= 2
    backend = S3Backend(cli.repo)
    from cermin.backend.base import Kind

    Repository.read_config(backend)  # applies the lock policy to the backend
    assert backend.retention(Kind.SNAPSHOT, snap) >= datetime(2027, 6, 1, tzinfo=UTC)
    assert b"protected" in cli("forget", snap[:8], ok=False).stderr


def test_server_dying_mid_upload_breaks_no_acknowledged_snapshot(tmp_path):
    """A private SeaweedFS is killed while a backup uploads, and comes back 3 s later on the same
    data: the client retries with backoff and finishes; nothing acknowledged is lost."""
    import time

    from conftest import PASSWORD
    from seaweed import ACCESS_KEY, SECRET_KEY, Weed

    w = Weed(str(tmp_path / "weed")).start()
    try:
        s3 = w.boto()
        s3.create_bucket(Bucket="crash-test")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        cli = Cli(f"s3:{w.endpoint}/crash-test/repo", env)
        cli("init")
        src = tmp_path / "src"
        make_source(src, files=8)
        cli("backup", str(src))
        first = jl(cli("--json", "snapshots"))[0]["snapshots"][0]["id"]

        def packs() -> int:
            r = s3.list_objects_v2(Bucket="crash-test", Prefix="repo/data/")
            return r.get("KeyCount", 0)

        before = packs()
        for i in range(12):
            (src / f"big{i}.bin").write_bytes(os.urandom(16 * 1024 * 1024))
        p = subprocess.Popen(
            [*cermin_exe(), "-r", cli.repo, "backup", str(src)],
            env=dict(env, CERMIN_PASSWORD=PASSWORD),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while packs() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, "the backup must still be uploading when the server dies"
        w.kill()
        time.sleep(3)
        w.start()
        rc = p.wait(timeout=300)
        err = p.stderr.read().decode()
        assert rc == 0 and "Traceback" not in err, err
        snaps = [s["id"] for s in jl(cli("--json", "snapshots"))[0]["snapshots"]]
        assert first in snaps and len(snaps) == 2
        assert jl(cli("--json", "check", "--read-data"))[-1]["ok"] is True
        for sid in snaps:
            out = tmp_path / f"out-{sid[:8]}"
            cli("restore", sid, "--target", str(out), "--verify")
        assert_same_tree(src, out / str(src).lstrip("/"))
    finally:
        w.stop()


# ---- attacks on the lock itself (issue 14) -------------------------------------------------------


def _s3_key_prefix(cli: Cli) -> str:
    return cli.repo.split("/", 4)[4]


def _open(cli: Cli):

    from cermin.repo.repository import Repository

    backend = S3Backend(cli.repo)
    return Repository.open(backend, PASSWORD.encode())


def _versions(s3, key: str) -> list[dict]:
    return [v for v in s3.list_object_versions(Bucket="locked", Prefix=key).get("Versions", []) if v["Key"] == key]


def test_planted_config_version_without_the_policy_is_ignored(locked_repo, seaweed, tmp_path):
    """With the password and the storage credential, an attacker uploads a config (authentic, even)
    without the lock policy: later snapshots must still be locked, and the owner is told."""
    import msgspec

    from cermin.backend.base import Kind
    from cermin.format import crypto, pack, records
    from cermin.repo.repository import config_aad

    cli, src = locked_repo
    repo = _open(cli)
    forged = msgspec.structs.replace(repo.config, extra={})
    sealed = crypto.seal(repo.keys, pack.compress(records.encode(repo.secrets), 3), config_aad(forged))
    forged = msgspec.structs.replace(forged, secrets=sealed)
    s3 = seaweed.boto()
    config_key = f"{_s3_key_prefix(cli)}/config"
    s3.put_object(Bucket="locked", Key=config_key, Body=msgspec.json.encode(forged))

    (src / "after-attack.txt").write_text("written after the config was replaced")
    cli("backup", str(src))
    snaps = jl(cli("--json", "snapshots"))[0]["snapshots"]
    newest = max(snaps, key=lambda s: s["time"])["id"]
    backend = S3Backend(cli.repo)

    Repository.read_config(backend)
    assert backend.lock is not None and backend.lock.days == 30
    assert backend.retention(Kind.SNAPSHOT, newest) is not None, "a snapshot written after the attack is unlocked"
    status = jl(cli("--json", "lock", "status"))[0]
    assert any("config" in w for w in status["warnings"]), status
    cli("lock", "extend")


def test_lock_extend_extends_the_originals_not_planted_versions(locked_repo, seaweed, tmp_path):
    """Newer versions and delete markers planted over every key must not divert `lock extend`:
    the versions cermin wrote are the ones whose retention is extended."""
    cli, src = locked_repo
    s3 = seaweed.boto()
    prefix = _s3_key_prefix(cli)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="locked", Prefix=prefix + "/")["Contents"]]
    keys = [k for k in keys if "/locks/" not in k]
    originals = {k: _versions(s3, k)[-1]["VersionId"] for k in keys}
    for i, k in enumerate(keys):
        s3.put_object(Bucket="locked", Key=k, Body=b"planted")
        if i % 2:
            s3.delete_object(Bucket="locked", Key=k)

    repo = _open(cli)
    later = datetime.now(UTC) + timedelta(days=20)
    rep = extend_locks(repo, now=later)
    assert rep.extended == rep.checked == len(keys)
    assert len(rep.planted) == len(keys) and len(rep.hidden) == len(keys) // 2
    for k, vid in originals.items():
        until = s3.get_object_retention(Bucket="locked", Key=k, VersionId=vid)["Retention"]["RetainUntilDate"]
        assert until > later + timedelta(days=29), f"{k}: the original's lock was not extended"
    restore_ok(cli, src, tmp_path, "planted")


def test_delete_marker_on_config_and_keys_does_not_lock_the_owner_out(locked_repo, seaweed, tmp_path):
    cli, src = locked_repo
    s3 = seaweed.boto()
    prefix = _s3_key_prefix(cli)
    s3.delete_object(Bucket="locked", Key=f"{prefix}/config")
    for o in s3.list_objects_v2(Bucket="locked", Prefix=f"{prefix}/keys/")["Contents"]:
        s3.delete_object(Bucket="locked", Key=o["Key"])
    assert len(jl(cli("--json", "snapshots"))[0]["snapshots"]) == 1
    restore_ok(cli, src, tmp_path, "config-hidden")
    out = jl(cli("--json", "lock", "unhide", password=None))[0]
    assert f"{prefix}/config" in out["keys"]
    assert jl(cli("--json", "lock", "status"))[0]["hidden"] == []


def test_lock_policy_is_validated_wherever_it_is_loaded(seaweed, tmp_path):
    from cermin.errors import CorruptObject, UsageError

    backend = S3Backend("s3:http://127.0.0.1:1/nowhere/x")
    for bad in ({"days": 0}, {"days": 1}, {"days": "30"}, {"days": 30, "mode": "none"}, [], {"days": 10**9}):
        with pytest.raises(CorruptObject, match="Object Lock policy"):
            backend.configure({"object_lock": bad})
    cli = s3cli(seaweed, tmp_path)
    r = cli("init", "--object-lock", "30", "--lock-mode", "governance", ok=False)
    assert r.returncode == 2 and b"governance" in r.stderr and b"compliance" in r.stderr
    with pytest.raises(CorruptObject):  # the engine refuses too, not only the command
        Repository.init(S3Backend(cli.repo), b"pw", extra={"object_lock": {"days": 0, "mode": "compliance"}})

    with pytest.raises(UsageError):
        Repository.init(LocalBackend(str(tmp_path / "l")), b"pw", extra={"object_lock": {"days": 30}})


def test_config_fields_are_authenticated(tmp_path):
    """Editing a plaintext config field (say, removing the lock policy) makes the repository refuse."""

    from cermin.errors import CorruptObject
    from cermin.repo.repository import Repository

    backend = LocalBackend(str(tmp_path / "repo"))
    Repository.init(backend, PASSWORD.encode(), kdf=FAST_KDF)
    path = tmp_path / "repo" / "config"
    doc = json.loads(path.read_text())
    for field, value in (("extra", {"object_lock": {"days": 30}}), ("created", "2020-01-01T00:00:00Z")):
        tampered = dict(doc, **{field: value})
        os.chmod(path, 0o600)
        path.write_text(json.dumps(tampered))
        with pytest.raises(CorruptObject, match="failed authentication"):
            Repository.open(backend, PASSWORD.encode())
    path.write_text(json.dumps(doc))
    Repository.open(backend, PASSWORD.encode())


def test_deployment_exposes_only_authenticated_s3(tmp_path):
    """docs/immutable.md's deployment: the storage's own ports (filer, master, volume — whose HTTP
    APIs delete without credentials) listen on 127.0.0.1 only; clients reach one authenticated S3
    gateway. From the client's address nothing else answers and anonymous S3 requests are refused."""
    import socket
    import urllib.error
    import urllib.request

    from seaweed import ACCESS_KEY, SECRET_KEY, Weed

    w = Weed(str(tmp_path / "weed")).start()
    try:
        endpoint = w.start_public_s3("127.0.0.2")
        for port in w.ports[:6] + w.ports[8:10]:  # master, volume, filer (+gRPC), admin
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.connect(("127.0.0.2", port))
        for method in ("GET", "DELETE"):
            req = urllib.request.Request(f"{endpoint}/backups/?recursive=true", method=method)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=5)
            assert e.value.code == 403
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket="backups", ObjectLockEnabledForBucket=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        cli = Cli(f"s3:{endpoint}/backups/db1", env)
        r = cli("init", "--object-lock", "30")
        assert b"loopback" in r.stderr and b"docs/immutable.md" in r.stderr
        src = tmp_path / "src"
        make_source(src, files=3)
        cli("backup", str(src))
        restore_ok(cli, src, tmp_path, "gateway")
    finally:
        w.stop()


def test_backdated_tombstones_and_a_superseding_index_unlock_nothing(locked_repo, seaweed, tmp_path):
    """With the password: a tombstone dated two months ago for every real snapshot, a fresh fake
    "newest" snapshot, and an index file that supersedes every real one and names no pack. Lock
    maintenance must still keep every real snapshot and pack locked, and say why."""
    from cermin.backend.base import Kind
    from cermin.engine.objectlock import find_needed
    from cermin.format import records
    from cermin.format.records import AuxRecord, IndexFile, Snapshot
    from cermin.repo.indexfiles import read_index_view

    cli, src = locked_repo
    (src / "more.txt").write_text("second snapshot")
    cli("backup", str(src))
    repo = _open(cli)
    real = sorted(n for n, _ in repo.backend.list(Kind.SNAPSHOT))
    honest = find_needed(repo)
    packs = {n for k, n in honest.objects if k is Kind.DATA}
    newest = repo.load_snapshot(max(real, key=lambda n: repo.load_snapshot(n).time))
    repo.save_snapshot(Snapshot(time=now_rfc3339(), tree=newest.tree, paths=newest.paths, hostname=newest.hostname))
    old = (datetime.now(UTC) - timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for sid in real:
        repo.save_object(Kind.AUX, records.encode(AuxRecord(type="forgotten", time=old, target=sid)))
    view = read_index_view(repo)
    repo.save_object(Kind.INDEX, records.encode(IndexFile(packs=[], supersedes=[bytes.fromhex(n) for n in view.files])))

    needed = find_needed(repo)
    assert set(real) <= {n for k, n in needed.objects if k is Kind.SNAPSHOT}
    assert packs <= {n for k, n in needed.objects if k is Kind.DATA}
    assert sorted(needed.pending_forgets) == real and set(needed.hidden_by_index) == packs
    rep = extend_locks(repo, dry_run=True)
    assert any("tombstones" in w for w in rep.warnings) and any("no index file in force" in w for w in rep.warnings)


@pytest.mark.usefixtures("own_cache")
def test_superseding_index_does_not_drop_packs_from_lock_maintenance(redteam_history):
    """Red-team reproduction (issue 14 review)."""
    repo, _, _ = redteam_history
    before = {name for kind, name in needed_objects(repo) if kind is Kind.DATA}
    view = read_index_view(repo)
    # the attacker holds the password: an index file that names no pack and supersedes every real one
    repo.save_object(
        Kind.INDEX, records.encode(records.IndexFile(packs=[], supersedes=[bytes.fromhex(n) for n in view.files]))
    )
    after = {name for kind, name in needed_objects(repo) if kind is Kind.DATA}
    assert before <= after, f"{len(before - after)} packs the snapshots need would no longer be re-locked"


@pytest.mark.usefixtures("own_cache")
def test_tombstones_cannot_hide_the_real_newest_behind_a_fake_newer_snapshot(redteam_history):
    """Red-team reproduction (issue 14 review)."""
    repo, first, second = redteam_history
    real = repo.load_snapshot(second)
    repo.save_snapshot(Snapshot(time=now_rfc3339(), tree=real.tree, paths=real.paths, hostname=real.hostname))
    for sid in (first, second):
        repo.save_object(Kind.AUX, records.encode(AuxRecord(type="forgotten", time=now_rfc3339(), target=sid)))
    assert second in retained_snapshot_names(repo), "the newest real snapshot is no longer kept locked"


def test_packs_planted_over_empty_or_with_garbage_restore_from_their_first_version(seaweed, tmp_path, monkeypatch):
    """An empty newer version over a pack (a ranged read of it is refused with 416) and a garbage
    one: the restore reads what cermin wrote, and lists each pack's versions once, not per blob."""
    from cermin.backend import open_backend
    from cermin.engine.restore import RestoreOptions, run_restore

    cli = s3cli(seaweed, tmp_path)
    cli("init", "--object-lock", "30", "--maintenance-interval", "7")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(120):  # many small files: many blobs per pack
        (src / f"f{i}").write_bytes(os.urandom(3000 + i))
    cli("backup", str(src))
    s3 = seaweed.boto()
    packs = [
        k["Key"] for k in s3.list_objects_v2(Bucket="locked", Prefix=cli.repo.split("/", 4)[4] + "/data/")["Contents"]
    ]
    for i, key in enumerate(packs):
        s3.put_object(Bucket="locked", Key=key, Body=b"" if i % 2 == 0 else b"ransomware was here" * 100)
    repo = Repository.open(open_backend(cli.repo), PASSWORD.encode())
    repo.load_index()
    listings: list[str] = []
    real = S3Backend._versions
    monkeypatch.setattr(
        S3Backend, "_versions", lambda self, key, *a, **kw: listings.append(key) or real(self, key, *a, **kw)
    )
    out = tmp_path / "out"
    snap = repo.load_snapshot(next(iter(repo.backend.list(Kind.SNAPSHOT)))[0])
    r = run_restore(repo, snap, RestoreOptions(target=str(out), verify=True, workers=2))
    assert not r.errors, r.errors[:3]
    assert_same_tree(src, out / str(src).lstrip("/"))
    assert len([k for k in listings if "/data/" in k]) <= len(packs), "each pack's versions listed once"
