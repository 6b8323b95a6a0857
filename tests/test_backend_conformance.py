"""Cross-cutting (every backend/ driver): one conformance suite for every backend: memory, local directory, S3
on real SeaweedFS (plain and with Object Lock). Then a whole backup / check / restore / prune cycle on each."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import s3_location
from helpers import backup, make_source, mutate_source, reopen, restores_identically, small_repo

from cermin.backend.base import CONFIG_NAME, Kind
from cermin.backend.http import HttpBackend
from cermin.backend.local import LocalBackend
from cermin.backend.memory import MemoryBackend
from cermin.backend.s3 import LockPolicy, S3Backend
from cermin.engine.check import run_check
from cermin.engine.forget import remove_snapshots
from cermin.engine.prune import execute_prune, plan_prune
from cermin.errors import ApprovalRequired, CerminError, ObjectExists, ObjectLocked, ObjectNotFound
from cermin.format.crypto import file_id

KINDS = ["memory", "local", "s3", "s3-locked", "http"]


@pytest.fixture(params=KINDS)
def backend(request, tmp_path):
    kind = request.param
    if kind == "memory":
        return MemoryBackend()
    if kind == "local":
        return LocalBackend(str(tmp_path / "repo"))
    if kind == "http":
        import uuid

        from cermin.backend.http import HttpBackend

        served = request.getfixturevalue("served")
        tenant = f"conf-{uuid.uuid4().hex[:8]}"
        return HttpBackend(served.url(tenant), token=served.token(tenant, "admin"))
    seaweed = request.getfixturevalue("seaweed")
    if kind == "s3":
        return S3Backend(s3_location(seaweed, "plain", "conf"))
    return S3Backend(s3_location(seaweed, "locked", "conf"), lock=LockPolicy(1))


def name(i: int) -> str:
    return file_id(blob(i))


def blob(i: int) -> bytes:
    return bytes([i]) * (i + 1)


def test_roundtrip_and_write_once(backend):
    backend.create()
    data = os.urandom(100_000)
    n = file_id(data)
    backend.save(Kind.DATA, n, data)
    assert backend.load(Kind.DATA, n) == data
    assert backend.load(Kind.DATA, n, 10, 20) == data[10:30]
    assert backend.load(Kind.DATA, n, 99_990, 10) == data[-10:]
    assert backend.size(Kind.DATA, n) == len(data)
    assert backend.exists(Kind.DATA, n) and not backend.exists(Kind.DATA, name(2))
    with pytest.raises(ObjectExists):
        backend.save(Kind.DATA, n, data)
    # The name is taken; the server checks first that the content matches the name.
    refusal = (CerminError, "does not match its name") if isinstance(backend, HttpBackend) else (ObjectExists, None)
    with pytest.raises(refusal[0], match=refusal[1]):
        backend.save(Kind.DATA, n, b"replacement")
    assert backend.load(Kind.DATA, n) == data, "a refused overwrite leaves the object intact"
    with pytest.raises(ObjectNotFound):
        backend.load(Kind.DATA, name(2))
    with pytest.raises(ObjectNotFound):
        backend.size(Kind.INDEX, name(2))


def test_list_per_kind_and_config(backend):
    backend.create()
    backend.save(Kind.CONFIG, CONFIG_NAME, b"{}")
    for i in range(5):
        backend.save(Kind.DATA, name(i), blob(i))
    backend.save(Kind.SNAPSHOT, name(9), blob(9))
    backend.save(Kind.LOCK, name(7), blob(7))
    assert sorted(backend.list(Kind.DATA)) == sorted((name(i), i + 1) for i in range(5))
    assert list(backend.list(Kind.SNAPSHOT)) == [(name(9), 10)]
    assert list(backend.list(Kind.INDEX)) == []
    assert [n for n, _ in backend.list(Kind.CONFIG)] == [CONFIG_NAME]
    backend.remove(Kind.LOCK, name(7))  # locks are removable on every backend, locked or not
    assert list(backend.list(Kind.LOCK)) == []


def test_concurrent_and_large_writes(backend):
    backend.create()
    big = os.urandom(20 * 1024 * 1024)
    errors = []

    def put(i):
        try:
            backend.save(Kind.DATA, name(i), blob(i))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    backend.save(Kind.DATA, file_id(big), big)
    for t in threads:
        t.join()
    assert not errors
    assert len(list(backend.list(Kind.DATA))) == 17
    assert backend.load(Kind.DATA, file_id(big)) == big


def test_engine_cycle(backend, tmp_path):
    src = tmp_path / "src"
    make_source(src, files=8)
    repo = small_repo(backend)
    s1 = backup(repo, src)
    mutate_source(src, 3)
    s2 = backup(repo, src)
    repo = reopen(backend)
    assert run_check(repo, read_data=True).ok
    restores_identically(repo, s2, src, tmp_path / "out")
    immutable = (isinstance(backend, S3Backend) and backend.lock is not None) or isinstance(backend, HttpBackend)
    if isinstance(backend, HttpBackend):  # the server's two-person rule: queued, one request
        with pytest.raises(ApprovalRequired):
            remove_snapshots(repo, [s1])
    else:
        removed, locked = remove_snapshots(repo, [s1])
    if isinstance(backend, HttpBackend):
        pass
    elif immutable:  # Object Lock
        assert locked == [s1] and removed == [], "a locked snapshot cannot be forgotten"
    else:
        assert removed == [s1]
    res = execute_prune(repo, plan_prune(repo, max_unused=0.0))
    repo = reopen(backend)
    report = run_check(repo, read_data=True)
    assert report.ok, [p.message for p in report.errors]
    restores_identically(repo, s2, src, tmp_path / "out2")
    if immutable:
        assert res.packs_deleted == 0
    if isinstance(backend, HttpBackend):
        assert res.approval is None or res.packs_queued + res.index_files_queued > 0


def test_capabilities_match_behaviour(backend, request):
    """Every backend declares its capabilities (no probing), has every method of the protocol, and
    does what its caps say: versions, retention, batch removal, configuration, pack size."""
    from datetime import UTC, datetime, timedelta

    from cermin.backend.base import Backend, Capabilities
    from cermin.errors import UsageError

    caps = backend.caps
    assert isinstance(caps, Capabilities) and isinstance(backend, Backend)
    s3 = Capabilities(versions=True, retention=True, takes_config=True, default_pack_size=16 << 20)
    assert (
        caps
        == {
            "memory": Capabilities(default_pack_size=8 << 20),
            "local": Capabilities(default_pack_size=8 << 20),
            "http": Capabilities(batch_remove=True, default_pack_size=16 << 20),
            "s3": s3,
            "s3-locked": s3,
        }[request.node.callspec.params["backend"]]
    )
    backend.create()
    data = os.urandom(5000)
    n = file_id(data)
    backend.save(Kind.DATA, n, data)
    assert backend.load_original(Kind.DATA, n) == data
    assert backend.load_original(Kind.DATA, n, 10, 5) == data[10:15]
    version = backend.original_version(Kind.DATA, n)
    assert (version != "") == caps.versions
    assert backend.original_versions(Kind.DATA)[n] == (version, 1)
    with pytest.raises(ObjectNotFound):
        backend.original_version(Kind.DATA, name(3))
    assert backend.hidden() == [] and backend.unhide() == []
    later = datetime.now(UTC) + timedelta(days=30)
    if caps.retention and backend.lock is not None:
        assert backend.retention(Kind.DATA, n) > datetime.now(UTC)
        backend.extend_retention(Kind.DATA, n, later)
        assert backend.retention(Kind.DATA, n) >= later - timedelta(seconds=1)
    elif not caps.retention:
        assert backend.lock is None and backend.retention(Kind.DATA, n) is None
        with pytest.raises(UsageError):
            backend.extend_retention(Kind.DATA, n, later)
    other = blob(4)
    backend.save(Kind.INDEX, file_id(other), other)
    items = [(Kind.INDEX, file_id(other)), (Kind.INDEX, name(5))]  # the second one is missing
    if caps.batch_remove:  # one request, queued for a second admin: an approval request id
        assert isinstance(backend.remove_many(items), str)
    elif backend.lock is not None:
        with pytest.raises(ObjectLocked):
            backend.remove_many(items)
    else:
        assert backend.remove_many(items) is None and not backend.exists(Kind.INDEX, file_id(other))
    if caps.takes_config:  # last: on the plain bucket, locked puts would now fail
        backend.configure({"object_lock": {"days": 30, "mode": "compliance", "maintenance_days": 7}})
        assert backend.lock is not None and backend.lock.days == 30
    else:
        backend.configure({"object_lock": {"days": 30}})  # a copy of a locked repository still opens
        assert backend.lock is None
