"""The tenant mirror (`cermin mirror`, engine/mirror.py): copying snapshots of A into B."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import SMALL, Hostile, backup, do_backup, good_entries, make_source, reopen, restores_identically

from cermin.backend.base import Kind
from cermin.backend.faulty import FaultyBackend
from cermin.backend.local import LocalBackend
from cermin.backend.memory import MemoryBackend
from cermin.engine.check import run_check
from cermin.engine.mirror import AUX_MIRROR_RUN, MirrorOptions, mirror, strip_credentials
from cermin.errors import CerminError
from cermin.format import crypto, pack
from cermin.ops import commands
from cermin.repo.repository import Repository
from cermin.repo.snapshots import aux_records, list_snapshots

PW = PASSWORD.encode()
KINDS = (Kind.DATA, Kind.INDEX, Kind.SNAPSHOT, Kind.KEY, Kind.AUX, Kind.CONFIG)


def new_repo(backend=None, secrets_from=None) -> Repository:
    backend = backend or MemoryBackend()
    return Repository.init(backend, PW, secrets_from=secrets_from, **SMALL)


def history(tmp_path, repo: Repository, steps: int = 2) -> tuple[str, list[tuple[str, str]]]:
    """Back up a source tree `steps` times (one file changed each time); returns (source path,
    [(snapshot id, copy of the tree as backed up)])."""
    src = str(tmp_path / "src")
    make_source(src, files=8)
    out = []
    for i in range(steps):
        if i:
            with open(os.path.join(src, "a", f"step{i}.dat"), "wb") as f:
                f.write(os.urandom(30_000))
            with open(os.path.join(src, "c", "f3.dat"), "ab") as f:
                f.write(b"changed %d\n" % i)
        sid = backup(repo, src)
        copy = str(tmp_path / f"as-of-{i}")
        shutil.copytree(src, copy, symlinks=True)
        out.append((sid, copy))
    return src, out


def listing(backend) -> dict:
    return {k: sorted(backend.list(k)) for k in KINDS}


def assert_mirror_restores(tmp_path, a: Repository, b: Repository, src: str, snaps) -> None:
    """Every snapshot of A is in B once, and restores from B exactly as it was backed up."""
    by_origin = {r.snapshot.extra["origin"]["snapshot"]: r.id for r in list_snapshots(b)}
    assert sorted(by_origin) == sorted(sid for sid, _ in snaps)
    for i, (sid, copy) in enumerate(snaps):
        restores_identically(b, by_origin[sid], src, tmp_path / f"restore-{os.urandom(4).hex()}-{i}", copy)


def test_init_copy_chunker_params_shares_ids_not_keys():
    a = new_repo()
    b = new_repo(secrets_from=a)
    assert b.secrets.id_key == a.secrets.id_key
    assert (b.secrets.chunker_seed, b.secrets.chunker_min, b.secrets.chunker_avg, b.secrets.chunker_max) == (
        a.secrets.chunker_seed,
        a.secrets.chunker_min,
        a.secrets.chunker_avg,
        a.secrets.chunker_max,
    )
    assert b.keys.master != a.keys.master and b.config.id != a.config.id
    # and it survives reopening (the secrets are sealed in B's config)
    assert Repository.open(b.backend, PW).secrets.id_key == a.secrets.id_key


def test_same_key_mirror_copies_trees_unchanged_and_restores(tmp_path):
    a = new_repo()
    b = new_repo(secrets_from=a)
    src, snaps = history(tmp_path, a, 2)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert res.same_ids and len(res.copied) == 2 and not res.skipped and res.exit_code == 0
    b = reopen(b.backend)
    a = reopen(a.backend)
    for asid, bsid in res.copied:
        assert b.load_snapshot(bsid).tree == a.load_snapshot(asid).tree
    assert run_check(b, read_data=True).ok
    assert_mirror_restores(tmp_path, a, b, src, snaps)
    # a second run copies nothing
    again = mirror(a, reopen(b.backend), MirrorOptions())
    assert again.copied == [] and again.present == 2 and again.bytes_copied == 0


def test_incremental_mirror_moves_about_one_files_data(tmp_path):
    a = new_repo()
    b = new_repo(secrets_from=a)
    src = str(tmp_path / "src")
    make_source(src, files=12)
    backup(a, src)
    first = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert first.bytes_copied > 500_000
    with open(os.path.join(src, "c", "one.dat"), "wb") as f:
        f.write(os.urandom(20_000))
    backup(reopen(a.backend), src)
    second = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert len(second.copied) == 1 and second.present == 1
    assert 20_000 <= second.bytes_copied < 40_000  # the new file and a few trees


def test_different_key_rechunks_and_still_restores(tmp_path):
    a = new_repo()
    b = Repository.init(MemoryBackend(), PW, kdf=FAST_KDF, chunker_params=(8 * 1024, 32 * 1024, 128 * 1024))
    src, snaps = history(tmp_path, a, 2)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert not res.same_ids and len(res.copied) == 2
    assert any("re-chunked" in w for w in res._notes())
    b = reopen(b.backend)
    for asid, bsid in res.copied:
        assert b.load_snapshot(bsid).tree != a.load_snapshot(asid).tree
    assert run_check(b, read_data=True).ok
    assert_mirror_restores(tmp_path, a, b, src, snaps)
    assert mirror(reopen(a.backend), b, MirrorOptions()).copied == []


def test_origin_and_every_field_travel(tmp_path):
    a = new_repo()
    b = new_repo(secrets_from=a)
    src = tmp_path / "src"
    make_source(str(src), files=3)
    extra = {"protected_until": "2099-01-01T00:00:00Z", "guard": {"verdict": "clean", "score": 0.1}, "drill": [1, 2]}
    s = do_backup(a, str(src), tags=["db", "nightly"], hostname="web-1", extra=extra, workers=2)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    ((asid, bsid),) = res.copied
    orig = a.load_snapshot(asid)
    copy = reopen(b.backend).load_snapshot(bsid)
    assert copy.extra.pop("origin") == {"repository": a.config.id, "snapshot": s.snapshot_id}
    assert copy == orig  # time, host, paths, tags, parent, summary, extra: all of it


def test_snapshots_listing_shows_the_origin(tmp_path):
    """`cermin snapshots` on B marks mirrored snapshots with the origin's short id (`-v`: and the
    source repository id); JSON carries a top-level `origin` (null for a snapshot of B's own)."""
    from cermin.ops.browse import snapshots

    a = new_repo()
    b = new_repo(secrets_from=a)
    src = tmp_path / "src"
    make_source(str(src), files=2)
    asid = backup(a, src)
    ((_, bsid),) = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions()).copied
    own = backup(reopen(b.backend), src)
    listing_ = snapshots(reopen(b.backend))
    (js,) = [d for d in listing_.to_json() if d["message_type"] == "snapshots"]
    by_id = {d["id"]: d for d in js["snapshots"]}
    assert by_id[bsid]["origin"] == {"repository": a.config.id, "snapshot": asid}
    assert by_id[own]["origin"] is None
    text = [ln.text for ln in listing_.to_text()]
    (mirrored,) = [t for t in text if t.startswith(bsid[:8])]
    (mine,) = [t for t in text if t.startswith(own[:8])]
    assert mirrored.endswith(f"<- {asid[:8]}") and "<-" not in mine
    (mirrored_v,) = [ln.text for ln in listing_.to_text(verbose=1) if ln.text.startswith(bsid[:8])]
    assert f"<- {asid[:8]} (from repository {a.config.id})" in mirrored_v


def test_mirror_of_a_mirror_is_not_copied_back_and_keeps_its_upstream(tmp_path):
    a = new_repo()
    b = new_repo(secrets_from=a)
    c = new_repo(secrets_from=a)
    src = tmp_path / "src"
    make_source(str(src), files=3)
    backup(a, src)
    mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    # C from A, then C from B: B's copy is the same snapshot of A, so it is not copied again
    mirror(reopen(a.backend), reopen(c.backend), MirrorOptions())
    res = mirror(reopen(b.backend), reopen(c.backend), MirrorOptions())
    assert res.copied == [] and res.present == 1
    # D from B: the origin is B, and A's origin travels along as upstream
    d = new_repo(secrets_from=a)
    res = mirror(reopen(b.backend), reopen(d.backend), MirrorOptions())
    origin = reopen(d.backend).load_snapshot(res.copied[0][1]).extra["origin"]
    assert origin["repository"] == b.config.id and origin["upstream"]["repository"] == a.config.id
    # and mirroring D back into A copies nothing (its upstream is A's own snapshot)
    assert mirror(reopen(d.backend), reopen(a.backend), MirrorOptions()).copied == []


def test_mirror_alone_restores_after_source_is_deleted(tmp_path):
    a = new_repo(LocalBackend(str(tmp_path / "A")))
    b = new_repo(LocalBackend(str(tmp_path / "B")), secrets_from=a)
    src, snaps = history(tmp_path, a, 2)
    mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    ids = {sid for sid, _ in snaps}
    a_id = a.config.id
    shutil.rmtree(tmp_path / "A")
    b = reopen(LocalBackend(str(tmp_path / "B")))
    assert {r.snapshot.extra["origin"]["snapshot"] for r in list_snapshots(b)} == ids
    assert all(r.snapshot.extra["origin"]["repository"] == a_id for r in list_snapshots(b))
    assert run_check(b, read_data=True).ok
    by_origin = {r.snapshot.extra["origin"]["snapshot"]: r.id for r in list_snapshots(b)}
    for i, (sid, copy) in enumerate(snaps):
        restores_identically(b, by_origin[sid], src, tmp_path / f"r{i}", copy)


def test_nothing_is_written_to_the_source_and_a_run_record_is_kept(tmp_path):
    a = new_repo()
    b = new_repo(secrets_from=a)
    history(tmp_path, a, 1)
    before = listing(a.backend)
    res = commands.mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert len(res.copied) == 1
    assert listing(a.backend) == before
    assert list(a.backend.list(Kind.LOCK)) == [] and list(b.backend.list(Kind.LOCK)) == []
    ((name, rec),) = [(n, r) for n, r in aux_records(reopen(b.backend)) if r.type == AUX_MIRROR_RUN]
    assert rec.target == a.config.id
    assert rec.data == {
        "ok": True,
        "snapshots_copied": 1,
        "bytes_copied": res.bytes_copied,
        "error": "",
        "source": a.backend.location,
    }


def test_dry_run_writes_nothing(tmp_path):
    a = new_repo()
    b = new_repo(secrets_from=a)
    history(tmp_path, a, 2)
    before = listing(b.backend)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions(dry_run=True))
    assert len(res.to_copy) == 2 and res.copied == [] and res.bytes_copied > 0
    assert listing(b.backend) == before


def test_selection_by_host_tag_and_id(tmp_path):
    a = new_repo()
    src = tmp_path / "src"
    make_source(str(src), files=2)
    s1 = do_backup(a, str(src), hostname="h1", tags=["x"], workers=2).snapshot_id
    s2 = do_backup(a, str(src), hostname="h2", workers=2).snapshot_id
    s3 = do_backup(a, str(src), hostname="h2", tags=["x"], workers=2).snapshot_id

    def copied(**kw):
        b = new_repo(secrets_from=a)
        return {x for x, _ in mirror(reopen(a.backend), b, MirrorOptions(**kw)).copied}

    assert copied(hosts=("h1",)) == {s1}
    assert copied(tags=("x",)) == {s1, s3}
    assert copied(snapshot_ids=[s2[:10]]) == {s2}
    assert copied() == {s1, s2, s3}


def assert_only_name_problems(report) -> None:
    """The hostile names travel as they are (a mirror is faithful); check names them in B as it does
    in A, and finds nothing else: every blob is there and reads back."""
    assert report.errors and all(p.kind == "tree_damaged" and "name" in p.message for p in report.errors), (
        report.to_json()
    )
    assert not report.damaged_packs


def test_hostile_source_does_not_break_the_mirror(tmp_path):
    a = new_repo()
    b = new_repo(secrets_from=a)
    src, snaps = history(tmp_path, a, 1)
    h = Hostile(a)
    bad = [h.file(b"..", b"escape\n"), h.file(b"x/y", b"slash\n"), h.file(b"dup", b"1"), h.file(b"dup", b"2")]
    hostile = h.snapshot(good_entries(h) + bad)
    # a planted snapshot file (no key) and a snapshot whose data is gone
    junk = os.urandom(200)
    a.backend.save(Kind.SNAPSHOT, crypto.file_id(junk), junk)
    h2 = Hostile(a)
    lost_data = os.urandom(5000)
    broken = h2.snapshot([h2.file(b"lost", lost_data)])
    lost_blob = a.blob_id(lost_data)
    # drop the pack holding the lost blob from A's storage
    a2 = reopen(a.backend)
    a.backend.remove(Kind.DATA, a2.index.lookup(lost_blob).pack_id.hex())
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert {x for x, _ in res.copied} == {snaps[0][0], hostile}
    assert set(res.skipped) == {broken} and res.exit_code == 3
    assert any("planted" in w for w in res.warnings)
    b = reopen(b.backend)
    assert_only_name_problems(run_check(b, read_data=True))
    target = tmp_path / "hostile-restore"
    from helpers import assert_good_restored, do_restore

    bsid = dict(res.copied)[hostile]
    do_restore(b, bsid, target)
    assert_good_restored(target)
    assert not (tmp_path / "escape").exists()
    ((_, rec),) = [(n, r) for n, r in aux_records(b) if r.type == AUX_MIRROR_RUN]
    assert rec.data["ok"] is False and broken[:8] in rec.data["error"]


def test_different_key_hostile_source(tmp_path):
    a = new_repo()
    b = new_repo()
    h = Hostile(a)
    sid = h.snapshot(good_entries(h) + [h.file(b"..", b"escape\n"), h.file(b"a\x00b", b"nul\n")])
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert [x for x, _ in res.copied] == [sid]
    b = reopen(b.backend)
    assert_only_name_problems(run_check(b, read_data=True))
    from helpers import assert_good_restored, do_restore

    do_restore(b, res.copied[0][1], tmp_path / "t")
    assert_good_restored(tmp_path / "t")


def test_strip_credentials():
    assert strip_credentials("s3:http://key:secret@127.0.0.1:9000/bkt/p?x=1") == "s3:http://127.0.0.1:9000/bkt/p"
    assert strip_credentials("https://u:tok@host/repo/a") == "https://host/repo/a"
    assert strip_credentials("/srv/backup/repo") == "/srv/backup/repo"


# ---- resumable: a fault at every Nth call of a run, then a resumed run ---------------------------
def _sweep_source(tmp_path):
    a = new_repo()
    src, snaps = history(tmp_path, a, 2)
    return a, src, snaps


def _faulty_run(a: Repository, inner, mode: str, at: int, crash_after: bool = False) -> bool:
    fb = FaultyBackend(inner, mode=mode, at=at, crash_after=crash_after)
    try:
        b = Repository.open(fb, PW)
        commands.mirror(reopen(a.backend), b, MirrorOptions())
    except CerminError:
        return True
    return fb.fired


@pytest.mark.parametrize("same_key", [True, False], ids=["same-key", "rechunk"])
@pytest.mark.parametrize(("mode", "crash_after"), [("fail", False), ("crash", False), ("crash", True)])
def test_fault_sweep_then_resume(tmp_path, same_key, mode, crash_after):
    a, src, snaps = _sweep_source(tmp_path)
    # how many backend calls a clean run makes
    probe_inner = MemoryBackend()
    new_repo(probe_inner, secrets_from=a if same_key else None)
    probe = FaultyBackend(probe_inner)
    commands.mirror(reopen(a.backend), Repository.open(probe, PW), MirrorOptions())
    calls = probe.calls
    clean_bytes = sum(size for _, size in probe_inner.list(Kind.DATA))
    assert calls > 10
    step = max(1, calls // 12)
    restored = False
    for at in range(1, calls + 1, step):
        inner = MemoryBackend()
        new_repo(inner, secrets_from=a if same_key else None)
        _faulty_run(a, inner, mode, at, crash_after)
        uploaded_before = sum(size for _, size in inner.list(Kind.DATA))
        res = commands.mirror(reopen(a.backend), reopen(inner), MirrorOptions())
        assert not res.skipped
        b = reopen(inner)
        report = run_check(b, read_data=True)
        assert report.ok, (at, report.to_json())
        by_origin = {r.snapshot.extra["origin"]["snapshot"]: r for r in list_snapshots(b)}
        assert sorted(by_origin) == sorted(sid for sid, _ in snaps), at
        if same_key:
            for sid, _ in snaps:
                assert by_origin[sid].snapshot.tree == a.load_snapshot(sid).tree
        # the resumed run did not send again what was durable: both runs together uploaded about
        # what one clean run does (pack headers of a different split aside)
        assert uploaded_before + res.bytes_uploaded <= clean_bytes + 16 * 1024, at
        if not restored or at + step > calls:  # full restores: the first and the last point
            assert_mirror_restores(tmp_path, a, b, src, snaps)
            restored = True
        runs = [r for _, r in aux_records(b) if r.type == AUX_MIRROR_RUN]
        assert runs and any(r.data["ok"] for r in runs)


def _damaged_objects(backend) -> set[str]:
    """Names of content-addressed objects whose bytes no longer match their name."""
    return {
        n
        for k in (Kind.DATA, Kind.INDEX, Kind.SNAPSHOT, Kind.AUX)
        for n, _ in backend.list(k)
        if crypto.file_id(backend.load(k, n)) != n
    }


@pytest.mark.parametrize("same_key", [True, False], ids=["same-key", "rechunk"])
@pytest.mark.parametrize("mode", ["truncate", "flip"])
def test_damaging_save_sweep_then_resume(tmp_path, same_key, mode):
    """B silently stores one object damaged (truncated, or a bit flipped) and reports success: at
    every save of a run, then a resumed run. B checks clean or names exactly the damaged object,
    and every snapshot in B restores exactly."""
    a, src, snaps = _sweep_source(tmp_path)
    probe_inner = MemoryBackend()
    new_repo(probe_inner, secrets_from=a if same_key else None)
    probe = FaultyBackend(probe_inner, only="save")
    commands.mirror(reopen(a.backend), Repository.open(probe, PW), MirrorOptions())
    saves = probe.calls
    assert saves >= 5
    for at in range(1, saves + 1):
        inner = MemoryBackend()
        new_repo(inner, secrets_from=a if same_key else None)
        fb = FaultyBackend(inner, mode=mode, at=at, only="save")
        try:
            commands.mirror(reopen(a.backend), Repository.open(fb, PW), MirrorOptions())
        except CerminError:
            pass
        assert fb.fired, at
        res = commands.mirror(reopen(a.backend), reopen(inner), MirrorOptions())
        assert not res.skipped, at
        damaged = _damaged_objects(inner)
        assert len(damaged) <= 1, at
        b = reopen(inner)
        report = run_check(b, read_data=True)
        if not report.ok:
            assert damaged, (at, report.to_json())
            (name,) = damaged
            for p in report.errors:
                assert name[:12] in f"{p.pack} {p.object} {p.message}", (at, report.to_json())
        assert_mirror_restores(tmp_path, a, b, src, snaps)


def test_resume_does_not_adopt_a_damaged_unindexed_pack(tmp_path):
    """A pack an interrupted run left unindexed, whose header is intact but whose data was damaged in
    storage, is not adopted by the next run (its blobs are sent again) and is reported."""
    a, src, snaps = _sweep_source(tmp_path)
    inner = MemoryBackend()
    new_repo(inner, secrets_from=a)

    class CrashAfterFirstPack(FaultyBackend):
        def save(self, kind, name, data):
            if kind is Kind.DATA and list(self.inner.list(Kind.DATA)):
                raise OSError(5, "the process died")
            return self.inner.save(kind, name, data)

    with pytest.raises(OSError):
        commands.mirror(reopen(a.backend), Repository.open(CrashAfterFirstPack(inner), PW), MirrorOptions())
    ((name, _),) = inner.list(Kind.DATA)
    data = bytearray(inner.load(Kind.DATA, name))
    data[pack.PREFIX_LEN + 10] ^= 0x01  # inside the first blob: the header still authenticates
    inner.remove(Kind.DATA, name)
    inner.save(Kind.DATA, name, bytes(data))
    res = commands.mirror(reopen(a.backend), reopen(inner), MirrorOptions())
    assert res.adopted_packs == 0 and res.damaged_in_target == [f"data/{name}"]
    assert any(name[:12] in w for w in res._notes())
    b = reopen(inner)
    report = run_check(b, read_data=True)
    assert all(name[:12] in f"{p.pack} {p.object} {p.message}" for p in report.errors), report.to_json()
    assert_mirror_restores(tmp_path, a, b, src, snaps)


def test_full_disk_during_upload_then_resume(tmp_path):
    """A backend error on a pack upload (ENOSPC) stops the run; the rerun finishes it."""
    a, src, snaps = _sweep_source(tmp_path)
    inner = MemoryBackend()
    new_repo(inner, secrets_from=a)

    class Full(FaultyBackend):
        def save(self, kind, name, data):
            if kind is Kind.DATA:
                if self.packs >= 1:
                    raise OSError(28, "No space left on device")
                self.packs += 1
            return self.inner.save(kind, name, data)

    full = Full(inner)
    full.packs = 0

    with pytest.raises(OSError):
        commands.mirror(reopen(a.backend), Repository.open(full, PW), MirrorOptions())
    runs = [r for _, r in aux_records(reopen(inner)) if r.type == AUX_MIRROR_RUN]
    assert runs[0].data["ok"] is False and "No space" in runs[0].data["error"]
    res = commands.mirror(reopen(a.backend), reopen(inner), MirrorOptions())
    assert len(res.copied) == 2 and res.adopted_packs == 1
    b = reopen(inner)
    assert run_check(b, read_data=True).ok
    assert_mirror_restores(tmp_path, a, b, src, snaps)


def test_pack_blob_payloads_are_reencrypted(tmp_path):
    """Same ids, different keys: no pack of A is byte-identical to a pack of B (encrypted anew)."""
    a = new_repo()
    b = new_repo(secrets_from=a)
    history(tmp_path, a, 1)
    mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    pa = {a.backend.load(Kind.DATA, n)[: pack.PREFIX_LEN] for n, _ in a.backend.list(Kind.DATA)}
    pb = {b.backend.load(Kind.DATA, n)[: pack.PREFIX_LEN] for n, _ in b.backend.list(Kind.DATA)}
    assert pa and pb and not pa & pb


# ---- the command ---------------------------------------------------------------------------------
def _json_lines(r) -> list[dict]:
    import json

    return [json.loads(ln) for ln in r.stdout.decode().splitlines() if ln.strip()]


def test_cli_init_copy_params_and_mirror(cli, tmp_path):
    src = tmp_path / "src"
    make_source(str(src), files=4)
    a = cli.repo
    cli("init")
    cli("backup", str(src), "--tag", "t1")
    cli("backup", str(src), "--host", "other")
    b = str(tmp_path / "B")
    env = {"CERMIN_FROM_PASSWORD": PASSWORD}
    r = cli("-r", b, "init", "--copy-chunker-params-from", a, "--json", password="b-pass", env=env)
    assert _json_lines(r)[0]["copied_chunker_params"] is True
    r = cli("mirror", "--from", a, "--to", b, "--dry-run", "--json", password="b-pass", env=env)
    (summary,) = [d for d in _json_lines(r) if d["message_type"] == "mirror_summary"]
    assert summary["dry_run"] and len(summary["snapshots_to_copy"]) == 2 and summary["same_ids"]
    # one snapshot by id, then the rest by filter
    first = summary["snapshots_to_copy"][0]
    r = cli("mirror", "--from", a, "--to", b, "--json", first[:10], password="b-pass", env=env)
    (summary,) = [d for d in _json_lines(r) if d["message_type"] == "mirror_summary"]
    assert summary["snapshots_copied"] == 1 and summary["copied"][0]["source"] == first
    r = cli("mirror", "--from", a, "--to", b, "--host", "other", password="b-pass", env=env)
    assert "copied 1 snapshot of 1 selected" in r.stdout.decode()
    r = cli("-r", b, "snapshots", "--json", password="b-pass")
    (listed,) = [d for d in _json_lines(r) if d["message_type"] == "snapshots"]
    assert {d["origin"]["snapshot"] for d in listed["snapshots"]} >= {first}
    assert all(d["origin"]["repository"] == summary["source_id"] for d in listed["snapshots"])
    r = cli("-r", b, "snapshots", password="b-pass")
    assert f"<- {first[:8]}" in r.stdout.decode()
    bb = Repository.open(LocalBackend(b), b"b-pass")
    assert len(list_snapshots(bb)) == 2
    # no source password: a usage error, nothing tried with the target's password
    r = cli("mirror", "--from", a, "--to", b, password="b-pass", ok=False)
    assert r.returncode == 2 and b"CERMIN_FROM_PASSWORD" in r.stderr
    # a wrong source password: exit 12
    r = cli("mirror", "--from", a, "--to", b, password="b-pass", ok=False, env={"CERMIN_FROM_PASSWORD": "nope"})
    assert r.returncode == 12


def test_cli_mirror_status_and_verify(cli, tmp_path):
    """`mirror status` shows the lag (with --from, or from the target alone) and `mirror verify`
    proves the copies; group options may come before or after the subcommand name."""
    src = tmp_path / "src"
    make_source(str(src), files=3)
    a, b = cli.repo, str(tmp_path / "B")
    env = {"CERMIN_FROM_PASSWORD": PASSWORD}
    cli("init")
    cli("backup", str(src))
    cli("-r", b, "init", "--copy-chunker-params-from", a, password="b-pass", env=env)
    cli("mirror", "--from", a, "--to", b, password="b-pass", env=env)
    (src / "new.txt").write_text("after the mirror")
    cli("backup", str(src))
    r = cli("mirror", "status", "--from", a, "--to", b, "--json", password="b-pass", env=env)
    lines = _json_lines(r)
    (group,) = [d for d in lines if d["message_type"] == "mirror_status"]
    assert group["lag_snapshots"] == 1 and group["bytes_to_copy"] > 0
    (runs,) = [d for d in lines if d["message_type"] == "mirror_runs"]
    assert runs["last_success"] and not runs["failing"]
    r = cli("mirror", "--to", b, "status", "--json", password="b-pass")  # from B alone
    assert [d for d in _json_lines(r) if d["message_type"] == "mirror_status"][0]["lag_snapshots"] is None
    cli("mirror", "--from", a, "--to", b, password="b-pass", env=env)
    r = cli("mirror", "--from", a, "--to", b, "status", password="b-pass", env=env)
    assert r.returncode == 0
    r = cli("mirror", "verify", "--from", a, "--to", b, "--read-data", "--json", password="b-pass", env=env)
    verdicts = [d for d in _json_lines(r) if d["message_type"] == "mirror_verify"]
    assert len(verdicts) == 2 and all(v["status"] == "ok" for v in verdicts)


def test_cli_global_options_anywhere_in_mirror(cli, tmp_path):
    """Global options (`--json`, `-q`, `--password-file`) work after snapshot ids and in every
    position of `mirror`, `mirror status` and `mirror verify`."""
    src = tmp_path / "src"
    make_source(str(src), files=2)
    a, b = cli.repo, str(tmp_path / "B")
    env = {"CERMIN_FROM_PASSWORD": PASSWORD}
    pw = tmp_path / "b-pass"
    pw.write_text("b-pass\n")
    cli("init")
    cli("backup", str(src))
    cli("backup", str(src), "--host", "other")
    cli("-r", b, "init", "--copy-chunker-params-from", a, password="b-pass", env=env)
    r = cli("mirror", "--from", a, "--to", b, "--dry-run", "--json", password="b-pass", env=env)
    first, second = [d for d in _json_lines(r) if d["message_type"] == "mirror_summary"][0]["snapshots_to_copy"]

    def summary(r):
        (s,) = [d for d in _json_lines(r) if d["message_type"] == "mirror_summary"]
        return s

    # after a snapshot id: a flag and a global option with a value
    r = cli("mirror", "--from", a, "--to", b, first[:10], "--json", "--password-file", str(pw), password=None, env=env)
    assert summary(r)["copied"][0]["source"] == first
    # the id first, options around it
    r = cli("mirror", second[:10], "--from", a, "-q", "--to", b, "--json", password="b-pass", env=env)
    assert summary(r)["copied"][0]["source"] == second
    for args in (
        ("mirror", "status", "--from", a, "--to", b, "--json"),
        ("mirror", "--json", "--from", a, "status", "--to", b),
        ("mirror", "--from", a, "--to", b, "status", "--password-file", str(pw), "--json"),
    ):
        r = cli(*args, password=None if str(pw) in args else "b-pass", env=env)
        assert [d for d in _json_lines(r) if d["message_type"] == "mirror_status"], args
    for args in (
        ("mirror", "verify", "--from", a, "--json", "--to", b, "--read-data"),
        ("mirror", "--from", a, "--to", b, "verify", "--read-data", "--json"),
    ):
        r = cli(*args, password="b-pass", env=env)
        verdicts = [d for d in _json_lines(r) if d["message_type"] == "mirror_verify"]
        assert len(verdicts) == 2 and all(v["status"] == "ok" for v in verdicts), args


def test_read_only_source_goes_on_without_a_lock(tmp_path):
    from cermin.backend.base import BackendWrapper
    from cermin.errors import AccessDenied

    a = new_repo()
    b = new_repo(secrets_from=a)
    history(tmp_path, a, 1)

    class ReadOnly(BackendWrapper):
        def __getattr__(self, name):
            return getattr(self.inner, name)

        def save(self, kind, name, data):
            raise AccessDenied("read-only (403)")

        def remove(self, kind, name):
            raise AccessDenied("read-only (403)")

    before = listing(a.backend)
    src = Repository.open(ReadOnly(a.backend), PW)
    res = commands.mirror(src, reopen(b.backend), MirrorOptions())
    assert len(res.copied) == 1
    assert any("read-only" in w and "without a lock" in w for w in src.warnings)
    assert listing(a.backend) == before
    # the target must be writable: a read-only target is refused, not skipped
    with pytest.raises(AccessDenied):
        commands.mirror(
            reopen(a.backend), Repository.open(ReadOnly(new_repo(secrets_from=a).backend), PW), MirrorOptions()
        )


# ---- real services -------------------------------------------------------------------------------
def test_local_to_s3_object_lock_then_pull_over_serve_with_a_read_token(seaweed, served, cli, tmp_path):
    """local A -> SeaweedFS S3 B with Object Lock; then C at the tenant pulls from A served by
    `cermin serve` with a read token (which cannot write into A)."""
    from conftest import s3_location

    src = tmp_path / "src"
    make_source(str(src), files=5)
    a = cli.repo
    cli("init")
    cli("backup", str(src))
    env = {"CERMIN_FROM_PASSWORD": PASSWORD}
    b = s3_location(seaweed, "locked", "mirror")
    cli("-r", b, "init", "--object-lock", "30", "--copy-chunker-params-from", a, password="b-pass", env=env)
    r = cli("mirror", "--from", a, "--to", b, "--json", password="b-pass", env=env)
    (summary,) = [d for d in _json_lines(r) if d["message_type"] == "mirror_summary"]
    assert summary["snapshots_copied"] == 1 and summary["same_ids"]
    with open(src / "c" / "new.dat", "wb") as f:
        f.write(os.urandom(10_000))
    cli("backup", str(src))
    r = cli("mirror", "--from", a, "--to", b, "--json", password="b-pass", env=env)
    (summary,) = [d for d in _json_lines(r) if d["message_type"] == "mirror_summary"]
    assert summary["snapshots_copied"] == 1 and summary["bytes_copied"] < 40_000
    cli("-r", b, "check", "--read-data", password="b-pass")
    out = tmp_path / "out-b"
    cli("-r", b, "restore", "latest", "--target", str(out), "--verify", password="b-pass")
    from helpers import assert_same_tree

    assert_same_tree(src, out / str(src).lstrip("/"))

    # pull mode: A behind `cermin serve`, the tenant holds only a read token
    tenant = f"t{os.urandom(4).hex()}"
    admin = served.token(tenant, "admin")
    read = served.token(tenant, "read")
    url = served.url(tenant)
    cli("-r", url, "init", env={"CERMIN_TOKEN": admin})
    cli("-r", url, "backup", str(src), env={"CERMIN_TOKEN": admin})
    token_file = tmp_path / "read-token"
    token_file.write_text(read + "\n")
    c = str(tmp_path / "C")
    cli(
        "-r",
        c,
        "init",
        "--copy-chunker-params-from",
        url,
        "--from-token-file",
        str(token_file),
        password="c-pass",
        env=env,
    )
    r = cli("mirror", "--from", url, "--from-token-file", str(token_file), "--to", c, password="c-pass", env=env)
    assert b"copied 1 snapshot" in r.stdout
    # the read token cannot write into A
    r = cli("-r", url, "backup", str(src), env={"CERMIN_TOKEN": read}, ok=False)
    assert r.returncode != 0
    out = tmp_path / "out-c"
    cli("-r", c, "restore", "latest", "--target", str(out), "--verify", password="c-pass")
    assert_same_tree(src, out / str(src).lstrip("/"))


def test_a_hundred_snapshots_mirrored_incrementally():
    import io

    from cermin.engine.backup import BackupOptions, run_backup

    a = new_repo()
    b = new_repo(secrets_from=a)
    seen = 0
    for batch in range(4):
        for i in range(25):
            n = batch * 25 + i
            data = (b"line %d\n" % n) * 200 + os.urandom(64)
            opts = BackupOptions(stdin=io.BytesIO(data), stdin_filename=f"f{n % 7}", hostname=f"h{n % 3}", workers=2)
            run_backup(a, opts)
        res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
        assert len(res.copied) == 25 and res.present == seen
        seen += 25
    b = reopen(b.backend)
    assert len(list_snapshots(b)) == 100
    assert run_check(b, read_data=True).ok
    runs = [r for _, r in aux_records(b) if r.type == AUX_MIRROR_RUN]
    assert len(runs) == 4 and all(r.data["ok"] and r.data["snapshots_copied"] == 25 for r in runs)
