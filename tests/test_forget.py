"""engine/forget.py: which snapshots each --keep-* option keeps and why; protection, tombstones under
Object Lock, future-dated snapshots."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from helpers import (
    LockedSnapshots,
    backup,
    future_copy,
    make_source,
    mutate_source,
    records_now,
    reopen,
    restores_identically,
    small_repo,
    two_backups,
)

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.engine.forget import (
    KeepPolicy,
    apply_policy,
    forget,
    plan_forget,
    remove_snapshots,
    subtract_duration,
    write_tombstones,
)
from cermin.engine.objectlock import needed_objects
from cermin.engine.protect import protect
from cermin.engine.prune import execute_prune, plan_prune
from cermin.errors import UsageError
from cermin.format import records
from cermin.format.records import AuxRecord, Snapshot
from cermin.repo.repository import Repository
from cermin.repo.snapshots import TOMBSTONE_GRACE, SnapshotRef, list_snapshots, resolve, retained_snapshot_names
from cermin.util import ns_to_rfc3339


@pytest.fixture
def redteam_history(tmp_path):
    repo, _src, first, second = two_backups(tmp_path, files=4)
    return repo, first, second


@pytest.fixture
def history(tmp_path):
    return two_backups(tmp_path, files=8)


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def ref(i: int, t: datetime, host="h", paths=(b"/data",), tags=(), extra=None) -> SnapshotRef:
    ns = int(t.timestamp() * 1e9)
    return SnapshotRef(
        f"{i:064x}",
        Snapshot(
            time=ns_to_rfc3339(ns),
            tree=b"\0" * 32,
            paths=list(paths),
            hostname=host,
            tags=list(tags),
            extra=extra or {},
        ),
    )


def daily_refs(days: int, per_day: int = 1) -> list[SnapshotRef]:
    out = []
    for d in range(days):
        for k in range(per_day):
            out.append(ref(d * 10 + k, NOW - timedelta(days=d, hours=k)))
    return out


def kept(decisions) -> list[str]:
    return sorted(d.ref.id for d in decisions if d.keep)


def test_keep_last_and_daily():
    refs = daily_refs(10, per_day=3)
    assert len(kept(apply_policy(refs, KeepPolicy(last=4), NOW))) == 4
    d = apply_policy(refs, KeepPolicy(daily=7), NOW)
    keep = [x for x in d if x.keep]
    assert len(keep) == 7
    assert len({x.ref.snapshot.time[:10] for x in keep}) == 7, "one per day, the newest of each day"
    newest_per_day = {}
    for r in refs:
        newest_per_day.setdefault(
            r.snapshot.time[:10],
            max((x for x in refs if x.snapshot.time[:10] == r.snapshot.time[:10]), key=lambda x: x.snapshot.time),
        )
    assert all(x.ref is newest_per_day[x.ref.snapshot.time[:10]] for x in keep)


def test_weekly_monthly_yearly_buckets():
    refs = [ref(i, NOW - timedelta(days=7 * i)) for i in range(120)]  # ~2.3 years of weeklies
    assert len(kept(apply_policy(refs, KeepPolicy(weekly=4), NOW))) == 4
    monthly = [x for x in apply_policy(refs, KeepPolicy(monthly=6), NOW) if x.keep]
    assert len(monthly) == 6 and len({x.ref.snapshot.time[:7] for x in monthly}) == 6
    yearly = [x for x in apply_policy(refs, KeepPolicy(yearly=5), NOW) if x.keep]
    assert len(yearly) == 3  # only three distinct years exist
    combined = apply_policy(refs, KeepPolicy(last=2, monthly=3), NOW)
    assert combined[0].reasons == ["within last 2", "monthly snapshot"]


def test_keep_within_tags_and_protection():
    refs = daily_refs(60)
    assert len(kept(apply_policy(refs, KeepPolicy(within="30d"), NOW))) == 31
    assert len(kept(apply_policy(refs, KeepPolicy(within="1m"), NOW))) == 32  # Oct 25 .. Nov 25
    refs.append(ref(999, NOW - timedelta(days=400), tags=("keep", "yearly")))
    refs.append(ref(998, NOW - timedelta(days=500), extra={"protected_until": "2099-01-01T00:00:00Z"}))
    refs.append(ref(997, NOW - timedelta(days=600), extra={"protected_until": "2020-01-01T00:00:00Z"}))
    d = {x.ref.id: x for x in apply_policy(refs, KeepPolicy(last=1, tags=["keep,yearly"]), NOW)}
    assert d[f"{999:064x}"].keep and d[f"{999:064x}"].reasons == ["has a kept tag"]
    assert d[f"{998:064x}"].keep and "protected until" in d[f"{998:064x}"].reasons[0]
    assert not d[f"{997:064x}"].keep, "an expired protection protects nothing"


def test_groups_and_empty_policy():
    refs = [ref(1, NOW, host="a"), ref(2, NOW - timedelta(days=1), host="a"), ref(3, NOW, host="b")]
    groups = plan_forget(refs, KeepPolicy(last=1))
    assert [(g.key["host"], len(g.keep), len(g.remove)) for g in groups] == [("a", 1, 1), ("b", 1, 0)]
    with pytest.raises(UsageError):
        plan_forget(refs, KeepPolicy())


def test_durations():
    t = datetime(2026, 3, 31, tzinfo=UTC)
    assert subtract_duration(t, "1m") == datetime(2026, 2, 28, tzinfo=UTC)
    assert subtract_duration(t, "1y2m3d4h") == datetime(2025, 1, 27, 20, tzinfo=UTC)
    with pytest.raises(UsageError):
        subtract_duration(t, "3 weeks")


def test_protect_command_blocks_forget_and_cannot_be_shortened(initialized_cli, tmp_path):
    import json

    cli = initialized_cli
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "f").write_bytes(b"1")
    cli("backup", str(src))
    (src / "f").write_bytes(b"2")
    cli("backup", str(src))
    snaps = json.loads(cli("--json", "snapshots").stdout)["snapshots"]
    old = snaps[0]["id"]
    cli("protect", old[:8], "--until", "2099-01-01")
    r = cli("forget", old[:8], ok=False)
    assert r.returncode == 2 and b"protected until 2099-01-01" in r.stderr
    cli("forget", "--keep-last", "1")
    left = [s["id"] for s in json.loads(cli("--json", "snapshots").stdout)["snapshots"]]
    assert old in left, "a protected snapshot survives a policy that would remove it"
    cli("protect", old[:8], "--until", "2098-01-01")  # an earlier date adds nothing
    r = cli("forget", old[:8], ok=False)
    assert b"protected until 2099-01-01" in r.stderr
    assert cli("protect", old[:8], "--until", "2001-01-01", ok=False).returncode == 2
    assert json.loads(cli("--json", "check").stdout.splitlines()[-1])["ok"] is True


def test_future_dated_snapshot_counts_for_nothing():
    """A planted snapshot dated 2999 neither is "last" nor moves the keep-within window (fake clock)."""
    refs = daily_refs(10)
    refs.append(ref(777, datetime(2999, 1, 1, tzinfo=UTC)))
    d = {x.ref.id: x for x in apply_policy(refs, KeepPolicy(last=1), NOW)}
    assert d[f"{0:064x}"].keep and d[f"{0:064x}"].reasons == ["last snapshot"]
    assert d[f"{777:064x}"].keep and "future" in d[f"{777:064x}"].reasons[0]
    assert len(kept(apply_policy(refs, KeepPolicy(within="3d"), NOW))) == 5  # 4 real + the future one
    # Within the 10-minute allowance a snapshot is trusted.
    near = [ref(1, NOW + timedelta(minutes=5)), ref(2, NOW - timedelta(days=2))]
    assert kept(apply_policy(near, KeepPolicy(last=1), NOW)) == [f"{1:064x}"]
    late = [ref(3, NOW - timedelta(days=2)), ref(4, NOW - timedelta(days=5))]
    assert kept(apply_policy(late, KeepPolicy(within="2d"), NOW)) == [f"{3:064x}"]  # back from the newest


def test_cli_snapshots_counts_forgotten(initialized_cli, tmp_path):
    import json

    from cermin.backend.local import LocalBackend
    from cermin.engine.forget import write_tombstones

    cli = initialized_cli
    src = tmp_path / "src"
    os.makedirs(src)
    for i in range(3):
        (src / "f").write_bytes(str(i).encode())
        cli("backup", str(src))
    ids = [s["id"] for s in json.loads(cli("--json", "snapshots").stdout)["snapshots"]]
    repo = Repository.open(LocalBackend(cli.repo), b"correct horse battery staple")
    write_tombstones(repo, ids)  # as forget does when storage refuses the deletion
    out = cli("snapshots").stdout.decode()
    assert "1 snapshot\n" in out and "2 snapshots marked forgotten" in out  # the newest stays
    js = json.loads(cli("--json", "snapshots", "--forgotten").stdout)
    assert js["forgotten"] == 2 and [s.get("forgotten", False) for s in js["snapshots"]] == [True, True, False]


def test_protection_date_is_bounded(tmp_path):
    """`protect --until 9999-12-31` on Object Lock storage would pin the data for ever: refused."""
    from datetime import UTC, datetime

    import pytest
    from helpers import backup, make_source, small_repo

    from cermin.engine.protect import protect
    from cermin.errors import UsageError
    from cermin.repo.snapshots import resolve

    src = tmp_path / "src"
    make_source(src, files=2)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    sid = backup(repo, src)
    with pytest.raises(UsageError, match="at most"):
        protect(repo, resolve(repo, sid), datetime(9999, 12, 31, tzinfo=UTC))
    assert protect(repo, resolve(repo, sid), datetime(2099, 1, 1, tzinfo=UTC)).until.startswith("2099")


@pytest.mark.usefixtures("own_cache")
def test_future_snapshot_does_not_move_keep_within(history):
    repo, _src, first, second = history
    planted = future_copy(repo, second)
    groups = plan_forget(list_snapshots(repo), KeepPolicy(within="1d"))
    assert [d.ref.id for g in groups for d in g.remove] == []
    assert forget(repo, policy=KeepPolicy(within="1d"), dry_run=True).ids == []
    res = forget(repo, policy=KeepPolicy(last=1))
    assert sorted(res.removed) == [first]  # the real newest is "last", not the one from 2999
    assert {r.id for r in list_snapshots(repo)} == {second, planted}


# ---- protection in the engine -----------------------------------------------------------------
@pytest.mark.usefixtures("own_cache")
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


def _locked_history(tmp_path):
    """Three snapshots of a changing tree in a store whose snapshot files cannot be deleted."""
    src = tmp_path / "src"
    make_source(src, files=4)
    repo = small_repo(LockedSnapshots())
    ids = []
    for step in range(3):
        mutate_source(src, step)
        ids.append(backup(repo, src))
    return src, repo, ids


@pytest.mark.usefixtures("own_cache")
def test_forgotten_snapshots_under_lock_are_tombstoned(tmp_path):
    src, repo, ids = _locked_history(tmp_path)
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
    restores_identically(reopen(repo.backend), ids[2], src, tmp_path / "r")

    # "revived" cancels a tombstone
    rec = AuxRecord(type="revived", time=records_now(), target=ids[1])
    repo.save_object(Kind.AUX, records.encode(rec))
    assert [r.id for r in list_snapshots(repo)] == [ids[1], ids[2]]


@pytest.mark.usefixtures("own_cache")
def test_tombstones_never_hide_the_newest_or_a_protected_snapshot(tmp_path):
    _src, repo, ids = _locked_history(tmp_path)
    repo.load_index()
    protect(repo, resolve(repo, ids[0]), datetime.now(UTC) + timedelta(days=30))
    write_tombstones(repo, ids)  # what anyone with the password could do
    assert [r.id for r in list_snapshots(repo)] == [ids[0], ids[2]]
    future = AuxRecord(type="forgotten", time="2999-01-01T00:00:00Z", target=ids[1])
    repo.save_object(Kind.AUX, records.encode(future))
    rec = AuxRecord(type="revived", time=records_now(), target=ids[1])
    repo.save_object(Kind.AUX, records.encode(rec))
    assert [r.id for r in list_snapshots(repo)] == ids, "a tombstone dated in the future cannot outlast revival"


@pytest.mark.usefixtures("own_cache")
def test_library_caller_cannot_forget_protected_snapshot_by_passing_now(redteam_history):
    """Red-team reproduction (issue 14 review)."""
    repo, first, _ = redteam_history
    protect(repo, resolve(repo, first), datetime.now(UTC) + timedelta(days=365))
    try:
        forget(repo, [first], now=datetime(2999, 1, 1, tzinfo=UTC))
    except Exception:
        pass
    assert first in {n for n, _ in repo.backend.list(Kind.SNAPSHOT)}, "protected snapshot was forgotten"
