"""The immutable tier on a real SeaweedFS cluster (issue 20): a master, three volume servers, a filer
and an S3 gateway on loopback, replication 001. Backups and restores go through it, and a volume
server killed in the middle of a backup loses nothing acknowledged."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import PASSWORD, Cli, cermin_exe
from helpers import assert_same_tree, make_source
from seaweed import ACCESS_KEY, SECRET_KEY
from seaweedcluster import Cluster

pytestmark = pytest.mark.timeout(300)
BUCKET = "immutable"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("cluster"))).start()
    c.boto().create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    yield c
    c.stop()


def _cli(cluster: Cluster, tmp_path, name: str) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CERMIN_", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, CERMIN_CACHE_DIR=str(tmp_path / "cache"))
    return Cli(f"s3:{cluster.endpoint}/{BUCKET}/{name}", env)


def _json(r) -> list[dict]:
    return [json.loads(line) for line in r.stdout.decode().splitlines() if line.strip()]


def _snapshots(cli: Cli) -> list[str]:
    return [s["id"] for s in _json(cli("--json", "snapshots"))[0]["snapshots"]]


def _check_clean(cli: Cli) -> dict:
    summary = _json(cli("--json", "check", "--read-data"))[-1]
    assert summary["ok"] is True and summary["errors"] == 0, summary
    return summary


def test_cluster_is_loopback_only_with_every_port_explicit_and_two_copies_per_volume(cluster, tmp_path):
    listening = cluster.listening()
    assert listening and all(a.startswith("127.0.0.1:") for a in listening), listening
    ports = {int(a.rsplit(":", 1)[1]) for a in listening}
    assert ports == set(cluster.ports.values()), "every port the cluster opens must be one it was told to use"
    assert len(cluster.alive_volume_servers()) == 3

    cli = _cli(cluster, tmp_path, "layout")
    cli("init", "--object-lock", "14", "--maintenance-interval", "7")
    src = tmp_path / "src"
    make_source(src, files=8)
    cli("backup", str(src))
    placements = cluster.placements(BUCKET)
    assert placements, "the bucket's data must live in volumes of its collection"
    for vid, copies in placements.items():
        servers = {node for _, _, node in copies}
        assert len(copies) == 2 and len(servers) == 2, f"volume {vid}: {copies}"
        assert len({(dc, rack) for dc, rack, _ in copies}) == 1, f"volume {vid} must stay in one rack: {copies}"
    out = tmp_path / "out"
    cli("restore", "latest", "--target", str(out), "--verify")
    assert_same_tree(src, out / str(src).lstrip("/"))


def test_a_volume_server_killed_mid_backup_loses_nothing_acknowledged(cluster, tmp_path):
    s3 = cluster.boto()
    cli = _cli(cluster, tmp_path, "kill")
    cli("init", "--object-lock", "14", "--maintenance-interval", "7")
    src = tmp_path / "src"
    make_source(src, files=8)
    cli("backup", str(src))
    [first] = _snapshots(cli)

    def packs() -> int:
        n, token = 0, None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            r = s3.list_objects_v2(Bucket=BUCKET, Prefix="kill/data/", **kw)
            n += r.get("KeyCount", 0)
            token = r.get("NextContinuationToken")
            if not token:
                return n

    before = packs()
    for i in range(8):  # 128 MiB of incompressible data: eight 16 MiB packs
        (src / f"big{i}.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    # The victim: the server holding copies of the most volumes of the bucket.
    counts: dict[str, int] = {}
    for copies in cluster.placements(BUCKET).values():
        for _, _, node in copies:
            counts[node] = counts.get(node, 0) + 1
    victim_url = max(counts, key=counts.get)
    victim = next(i for i in range(cluster.n_volumes) if cluster.volume_url(i) == victim_url)

    p = subprocess.Popen(
        [*cermin_exe(), "-r", cli.repo, "backup", str(src)],
        env=dict(cli.env, CERMIN_PASSWORD=PASSWORD),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while packs() < before + 2 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the backup must still be uploading when the volume server dies"
    at_kill = packs()
    cluster.kill_volume(victim)
    rc = p.wait(timeout=180)
    err = p.stderr.read().decode()
    p.stderr.close()
    assert "Traceback" not in err, err
    snaps = _snapshots(cli)
    assert first in snaps, "an acknowledged snapshot was lost"
    if rc == 0:
        assert len(snaps) == 2
        assert packs() > at_kill, "the backup must have written packs after the volume server died"
    else:  # allowed: a clear one-line error, and no snapshot of the failed backup
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
        assert len(lines) == 1 and lines[0].startswith("cermin: "), err
        assert snaps == [first]
    _check_clean(cli)  # every pack readable from the surviving copy
    out = tmp_path / "out1"
    cli("restore", first, "--target", str(out), "--verify")

    # With the volume server still down: a second backup succeeds and restores.
    (src / "after-kill.txt").write_text("written while a volume server is down\n" * 1000)
    cli("backup", str(src))
    assert len(_snapshots(cli)) == len(snaps) + 1

    # The server comes back on its data: another backup, and everything checks and restores.
    cluster.start_volume(victim)
    (src / "after-restart.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    cli("backup", str(src))
    all_snaps = _snapshots(cli)
    assert first in all_snaps and len(all_snaps) == len(snaps) + 2
    summary = _check_clean(cli)
    assert summary["packs_read"] == summary["packs"] > before
    out = tmp_path / "out2"
    cli("restore", "latest", "--target", str(out), "--verify")
    assert_same_tree(src, out / str(src).lstrip("/"))


def test_small_range_reads_of_packs_are_served_by_few_requests(cluster, monkeypatch):
    """backend/s3.py fetches the aligned block around a small range read of a pack and keeps it:
    every range reads the right bytes (across block boundaries, at and past the end), and a walk
    over many small blobs of one pack (what reading trees does) costs a request per block, not two
    per blob."""
    import obstore

    from cermin.backend.base import Kind
    from cermin.backend.s3 import RANGE_BLOCK, S3Backend
    from cermin.format.crypto import file_id

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    backend = S3Backend(f"s3:{cluster.endpoint}/{BUCKET}/ranges")
    objects = {}
    for size in (RANGE_BLOCK * 2 + 12_345, RANGE_BLOCK * 2, 1000):
        data = os.urandom(size)
        backend.save(Kind.DATA, file_id(data), data)
        objects[file_id(data)] = data
    calls = []
    real_get = obstore.get
    monkeypatch.setattr(obstore, "get", lambda *a, **kw: calls.append(kw.get("options")) or real_get(*a, **kw))
    for name, data in objects.items():
        size = len(data)
        for offset, length in [
            (0, 40),
            (RANGE_BLOCK - 10, 20),
            (RANGE_BLOCK * 2 - 5, 10),
            (size - 7, 7),
            (size - 7, 100),
            (5, RANGE_BLOCK // 4),
            (RANGE_BLOCK - 1000, RANGE_BLOCK // 2),  # a larger range: read directly
            (size + 10, 10),
        ]:
            got = backend.load(Kind.DATA, name, offset, length)
            assert got == data[offset : offset + length], (size, offset, length)
    big = next(iter(objects))
    before = len(calls)
    for i in range(400):  # 400 small blobs in the first block of a fresh backend's cache
        off = i * 600
        assert backend.load(Kind.DATA, big, off, 500) == objects[big][off : off + 500]
    assert len(calls) - before == 0, "blocks already read are served from memory"
    fresh = S3Backend(f"s3:{cluster.endpoint}/{BUCKET}/ranges")
    before = len(calls)
    for i in range(800):
        off = i * 600
        assert fresh.load(Kind.DATA, big, off, 500) == objects[big][off : off + 500]
    assert len(calls) - before == 2, f"{len(calls) - before} requests for 800 reads in two blocks"
