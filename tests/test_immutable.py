"""The immutable tier on real SeaweedFS: with the very credentials cermin uses, deleting, overwriting,
hiding or shortening the retention of locked objects is refused or harmless."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Cli, s3_location
from repoutil import make_source
from treeutil import assert_same_tree

from cermin.backend.s3 import S3Backend
from cermin.engine.objectlock import extend_locks


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
    from conftest import PASSWORD

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
    from cermin.repo.repository import Repository

    Repository.read_config(backend)  # applies the lock policy to the backend
    assert backend.retention(Kind.SNAPSHOT, snap) >= datetime(2027, 6, 1, tzinfo=UTC)
    assert b"protected" in cli("forget", snap[:8], ok=False).stderr


def test_server_dying_mid_upload_breaks_no_acknowledged_snapshot(tmp_path):
    """A private SeaweedFS is killed while a backup uploads, and comes back 3 s later on the same
    data: the client retries with backoff and finishes; nothing acknowledged is lost."""
    import subprocess
    import time

    from conftest import PASSWORD, cermin_exe
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
