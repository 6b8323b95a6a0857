"""The agent's state store (cermin.ops.state) on SQLite and on a real PostgreSQL: migrations, claims and
exactly-once slots across processes, run records, the fleet status and its fixed number of statements."""

from __future__ import annotations

import multiprocessing
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from cermin.ops import state as st
from cermin.ops import stateschema, statevalues
from cermin.ops.config import parse_config
from cermin.ops.state import HEAD, SeenSnapshot, StateError, StateStore

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
SNAP = "ab" * 32


def fleet_toml(n: int, tenants: int = 5) -> bytes:
    """n systems spread over `tenants` tenants; every third one strategis (three copies), the others tinggi."""
    out = [
        "[repositories.p]\nurl = '/srv/p'\npassword_env = 'PW'\nkind = 'primary'\n",
        "[repositories.i]\nurl = 's3:http://127.0.0.1:8333/locked/x?region=x'\npassword_env = 'PW'\n"
        "kind = 'immutable'\n",
        "[repositories.m]\nurl = '/mnt/mirror'\npassword_env = 'PW'\nkind = 'mirror'\n",
    ]
    for k in range(tenants):
        out.append(f"[tenants.t{k}]\nname = 'Tenant {k}'\n")
    for i in range(n):
        cls = "strategis" if i % 3 == 0 else "tinggi"
        mirror = "mirror = 'm'\n" if cls == "strategis" else ""
        out.append(
            f"[tenants.t{i % tenants}.systems.s{i}]\nclass = '{cls}'\nprimary = 'p'\nimmutable = 'i'\n{mirror}"
            f"[[tenants.t{i % tenants}.systems.s{i}.sources]]\ntype = 'paths'\npaths = ['/srv/s{i}']\n"
        )
    return "\n".join(out).encode()


def fleet(n: int, tenants: int = 5):
    return parse_config(fleet_toml(n, tenants), "fleet.toml", environ={})


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    pg = request.getfixturevalue("postgres")
    return pg.url_for(pg.new_database(f"st_{uuid.uuid4().hex[:12]}"))


@pytest.fixture
def store(url):
    s = StateStore.open(url)
    yield s
    s.close()


def synced(store, n=3, tenants=1, now=T0):
    cfg = fleet(n, tenants)
    store.sync_config(cfg, now)
    return cfg


# ---- schema and migrations ------------------------------------------------------------------------------
def test_upgrade_empty_database_to_head_and_models_match_migrations(url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    s = StateStore(url)
    assert s.schema_version() is None
    with pytest.raises(StateError, match="schema"):
        s.check_schema()
    s.upgrade()
    assert s.schema_version() == HEAD
    s.upgrade()  # at head: nothing to do
    with s.engine.connect() as c:
        ctx = MigrationContext.configure(c, opts={"compare_type": True, "version_table": stateschema.VERSION_TABLE})
        assert compare_metadata(ctx, stateschema.metadata) == []
        assert set(sa.inspect(c).get_table_names()) == set(stateschema.metadata.tables) | {stateschema.VERSION_TABLE}
    s.close()
    StateStore.open(url, upgrade=False).close()


def test_head_is_the_newest_revision():
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(st.MIGRATIONS).get_heads() == [HEAD]


def test_guard_verdicts_are_the_guards():
    from cermin.guard import verdict

    assert set(st.GUARD_VERDICTS) == {*verdict.VERDICTS, verdict.UNKNOWN}


def _open_worker(url: str, barrier) -> str:
    barrier.wait(timeout=60)
    with StateStore.open(url) as s:
        return s.schema_version()


def test_agents_starting_together_upgrade_once(url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(3)
    with ctx.Pool(3) as pool:
        versions = pool.starmap(_open_worker, [(url, barrier)] * 3, chunksize=1)
    assert versions == [HEAD] * 3


def test_unknown_schema_revision_is_refused(store):
    with store.engine.begin() as c:
        c.execute(sa.text(f"UPDATE {stateschema.VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(StateError, match="newer cermin"):
        StateStore.open(store.url.render_as_string(hide_password=False))


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://x/y", "unsupported state store URL"),
        ("postgresql+psycopg2://u:secret@h/db", "unsupported"),
        ("not a url", "bad state store URL"),
    ],
)
def test_bad_urls(url, message):
    with pytest.raises(StateError, match=message) as e:
        StateStore(url)
    assert "secret" not in str(e.value)


def test_postgres_urls_use_psycopg_and_hide_passwords():
    s = StateStore("postgresql://agent:hunter2@127.0.0.1:1/cermin")
    assert s.url.drivername == "postgresql+psycopg"
    assert "hunter2" not in repr(s) and "hunter2" not in s.display_url
    with pytest.raises(StateError) as e:
        s.schema_version()  # nothing listens on port 1
    assert "hunter2" not in str(e.value) and "\n" not in str(e.value)
    s.close()


def test_sqlite_store_is_wal_with_foreign_keys(tmp_path):
    with StateStore.open(f"sqlite:///{tmp_path}/sub/dir/state.db") as s, s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


# ---- configuration ------------------------------------------------------------------------------------------
def test_sync_config_adds_changes_and_retires(store):
    cfg = fleet(4, tenants=2)
    r = store.sync_config(cfg, T0)
    assert sorted(r.added) == ["t0/s0", "t0/s2", "t1/s1", "t1/s3"] and not r.changed and not r.retired
    assert store.sync_config(cfg, T0 + H) == st.SyncResult()  # nothing changed: nothing written

    rows = {s.id: s for s in store.systems()}
    s0 = rows["t0/s0"]
    assert (s0.policy, s0.rpo_s, s0.rto_s, s0.drill_every_s, s0.priority) == (
        "strategis",
        3600,
        4 * 3600,
        7 * 86400,
        10,
    )
    assert s0.required == ("primary", "immutable", "mirror")
    assert s0.copies == {"primary": "p", "immutable": "i", "mirror": "m"}
    assert rows["t1/s1"].required == ("primary", "immutable") and rows["t1/s1"].interval_s == 2 * 3600
    assert s0.updated_at == T0 and s0.retired_at is None
    assert store.tenants() == {"t0": "Tenant 0", "t1": "Tenant 1"}

    changed = parse_config(fleet_toml(3, 2).replace(b"paths = ['/srv/s1']", b"paths = ['/srv/other']"), environ={})
    r = store.sync_config(changed, T0 + 2 * H)
    assert r.changed == ["t1/s1"] and r.retired == ["t1/s3"] and not r.added
    assert {s.id for s in store.systems()} == {"t0/s0", "t1/s1", "t0/s2"}
    retired = [s for s in store.systems(include_retired=True) if s.id == "t1/s3"]
    assert retired[0].retired_at == T0 + 2 * H
    assert store.sync_config(cfg, T0 + 3 * H).added == ["t1/s3"]  # back in the configuration


def test_repository_urls_are_stored_without_credentials_or_query(store):
    synced(store)
    with store.engine.connect() as c:
        urls = dict(c.execute(sa.select(stateschema.repositories.c.name, stateschema.repositories.c.url)).all())
    assert urls == {"p": "/srv/p", "i": "s3:http://127.0.0.1:8333/locked/x", "m": "/mnt/mirror"}
    assert st._safe_url("s3:https://key:secret@host/b/p?token=1") == "s3:https://host/b/p"


# ---- claims and exactly-once slots ---------------------------------------------------------------------------
def test_claims_exclude_until_they_expire(store):
    synced(store)
    sid = "t0/s0"
    assert store.claim(sid, "a1", "backup", 600, T0)
    assert not store.claim(sid, "a2", "backup", 600, T0 + timedelta(minutes=5))  # live: refused
    assert not store.claim(sid, "a1", "backup", 600, T0 + timedelta(minutes=5))  # claims do not nest
    assert store.renew(sid, "a1", 600, T0 + timedelta(minutes=9))  # now lives until 19 min
    assert not store.claim(sid, "a2", "backup", 600, T0 + timedelta(minutes=15))
    assert not store.renew(sid, "a2", 600, T0)
    assert [c.agent for c in store.claims(T0 + timedelta(minutes=15))] == ["a1"]

    run = store.start_run(sid, "backup", T0, "a1", "primary", T0)
    assert store.claim(sid, "a2", "backup", 600, T0 + timedelta(minutes=19))  # expired: taken over
    abandoned = store.run(run)
    assert abandoned.status == "failed" and "a1 stopped" in abandoned.error
    assert not store.renew(sid, "a1", 600, T0 + timedelta(minutes=20))  # a1 learns it lost the claim
    assert not store.release(sid, "a1")
    assert store.release(sid, "a2")
    assert store.claim(sid, "a1", "verify", 60, T0 + timedelta(minutes=21))
    assert store.claims(T0 + timedelta(minutes=30)) == []  # expired claims are not listed

    with pytest.raises(StateError, match="unknown system"):
        store.claim("t9/nope", "a1", "backup", 60, T0)


def test_a_slot_runs_once(store):
    synced(store)
    sid, slot = "t0/s0", T0
    assert not store.slot_done(sid, "backup", slot, "primary")
    first = store.start_run(sid, "backup", slot, "a1", "primary", T0)
    assert first is not None and store.slot_done(sid, "backup", slot, "primary")
    assert store.start_run(sid, "backup", slot, "a2", "primary", T0) is None  # any agent
    store.finish_run(first, "failed", T0 + timedelta(minutes=1), error="boom")
    assert store.start_run(sid, "backup", slot, "a1", "primary", T0 + H) is None  # even after a failure
    assert store.start_run(sid, "backup", slot, "a1", "immutable", T0) is not None  # another copy
    assert store.start_run(sid, "verify", slot, "a1", "primary", T0) is not None  # another kind
    assert store.start_run(sid, "hook", slot, "a1") is not None  # no copy
    assert store.start_run(sid, "hook", slot, "a1") is None
    manual = [store.start_run(sid, "drill", None, "cli", "primary", T0) for _ in range(2)]
    assert None not in manual and manual[0] != manual[1]  # manual runs have no slot: never refused
    with pytest.raises(StateError, match="unknown system"):
        store.start_run("t9/nope", "backup", slot, "a1", "primary", T0)


def _race_worker(url: str, agent: str, barrier, slots: int) -> tuple[list[int], list[int], list[int]]:
    started, claimed, stolen = [], [], []
    with StateStore.open(url) as s:
        for i in range(slots):
            slot = T0 + i * H
            barrier.wait(timeout=60)
            if s.start_run("t0/s0", "backup", slot, agent, "primary", slot) is not None:
                started.append(i)
            barrier.wait(timeout=60)
            # s1 and s2 in turn: the claim from two rounds ago has expired, so exactly one agent takes it over
            if s.claim(f"t0/s{1 + i % 2}", agent, "backup", 1800, slot):
                claimed.append(i)
            barrier.wait(timeout=60)
            if s.claim(f"t0/s{1 + i % 2}", agent, "backup", 1800, slot + timedelta(minutes=29)):  # still live
                stolen.append(i)
    return started, claimed, stolen


def test_three_processes_race_for_each_slot(store):
    synced(store)
    url = store.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("spawn")
    barrier, slots = ctx.Manager().Barrier(3), 20
    with ctx.Pool(3) as pool:
        results = pool.starmap(_race_worker, [(url, f"agent{k}", barrier, slots) for k in range(3)], chunksize=1)
    starts = sorted(i for started, _, _ in results for i in started)
    claims = sorted(i for _, claimed, _ in results for i in claimed)
    assert starts == list(range(slots)), results  # exactly one winner per slot
    assert claims == list(range(slots)), results  # exactly one takes over each expired claim
    assert [stolen for _, _, stolen in results] == [[], [], []]  # nobody takes a live claim
    assert len(store.runs("t0/s0", limit=100)) == slots


# ---- run records --------------------------------------------------------------------------------------------
def test_finish_run_records_the_outcome(store):
    synced(store)
    rid = store.start_run("t0/s0", "backup", T0, "a1", "primary", T0, details={"attempt": 1})
    run = store.finish_run(
        rid,
        "warning",
        T0 + timedelta(minutes=3),
        bytes=123,
        files=4,
        snapshot_id=SNAP,
        data_time=T0 + timedelta(seconds=5),
        error="x" * 20000,
        attempts=2,
    )
    assert (run.status, run.duration_s, run.bytes, run.files, run.attempts) == ("warning", 180.0, 123, 4, 2)
    assert run.snapshot_id == SNAP and run.data_time == T0 + timedelta(seconds=5) and run.copy == "primary"
    assert len(run.error) == statevalues.MAX_TEXT and run.details == {"attempt": 1} and run.slot == T0
    assert store.runs("t0/s0") == [run]
    assert store.runs(tenant="t0", kind="backup", since=T0, until=T0 + H) == [run]
    assert store.runs(tenant="t1") == [] and store.runs(since=T0 + H) == []
    with pytest.raises(StateError, match="no run"):
        store.finish_run(999999, "ok", T0)
    with pytest.raises(StateError, match="run status"):
        store.finish_run(rid, "running", T0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.start_run("t0/s0", "backup", T0.replace(tzinfo=None), "a", "primary", T0), "aware"),
        (lambda s: s.start_run("t0/s0", "backup", T0, "a", "primary", datetime(2025, 1, 1)), "aware"),
        (lambda s: s.start_run("T0/S0", "backup", T0, "a", "primary", T0), "system id"),
        (lambda s: s.start_run("t0/s0", "rm -rf", T0, "a", "primary", T0), "run kind"),
        (lambda s: s.start_run("t0/s0", "backup", T0, "a", "tape", T0), "copy"),
        (lambda s: s.start_run("t0/s0", "backup", T0, "", "primary", T0), "agent name"),
        (lambda s: s.start_run("t0/s0", "backup", T0, "a", details={"x": object()}), "JSON"),
        (lambda s: s.start_run("t0/s0", "backup", T0, "a", details={"x": "y" * 70000}), "at most"),
        (lambda s: s.record_snapshot("t0/s0", "primary", "../etc", T0, T0), "snapshot id"),
        (lambda s: s.record_snapshot("t0/s0", "primary", SNAP, T0, T0, verdict="fine"), "guard verdict"),
        (lambda s: s.record_snapshot("t0/s0", "primary", SNAP, T0, T0, size=-1), "size"),
        (lambda s: s.record_notification("run_failed", "https://hooks/secret", "t", now=T0), "never by its URL"),
        (lambda s: s.record_notification("run_failed", "json://u:pw@host", "t", now=T0), "never by its URL"),
        (lambda s: s.record_notification("Bad Event", "ops", "t", now=T0), "event"),
    ],
)
def test_bad_values_are_refused_in_one_line(store, call, message):
    synced(store)
    with pytest.raises(StateError, match=message) as e:
        call(store)
    assert "\n" not in str(e.value)


def test_times_come_back_aware_utc(store):
    synced(store)
    wib = timezone(timedelta(hours=7))
    rid = store.start_run("t0/s0", "backup", T0.astimezone(wib), "a1", "primary", T0.astimezone(wib))
    run = store.run(rid)
    assert run.started_at == T0 and run.started_at.tzinfo == UTC and run.slot.utcoffset() == timedelta(0)
    assert store.start_run("t0/s0", "backup", T0, "a2", "primary", T0) is None  # the same slot in another zone


def test_injected_clock(url):
    now = [T0]
    with StateStore.open(url, clock=lambda: now[0]) as s:
        s.sync_config(fleet(1, 1))
        rid = s.start_run("t0/s0", "backup", T0, "a1", "primary")
        now[0] = T0 + timedelta(minutes=2)
        assert s.finish_run(rid, "ok").duration_s == 120
        assert s.systems()[0].updated_at == T0


def test_abandon_runs_of_a_restarted_agent(store):
    synced(store)
    store.heartbeat("a1", T0, host="h1", pid=42, started=True)
    rid = store.start_run("t0/s0", "backup", T0, "a1", "primary", T0)
    store.claim("t0/s0", "a1", "backup", 600, T0)
    store.heartbeat("a1", T0 + timedelta(minutes=1))
    (agent,) = store.agents()
    assert (agent.host, agent.pid, agent.started_at, agent.last_seen) == ("h1", 42, T0, T0 + timedelta(minutes=1))
    store.heartbeat("a1", T0 + H, host="h1", pid=43, started=True)
    assert store.abandon_runs("a1", T0 + H) == 1
    assert store.run(rid).status == "failed" and store.claims(T0 + H) == []
    assert store.agents()[0].pid == 43 and store.agents()[0].started_at == T0 + H


# ---- snapshots, drills, alarms, notifications ----------------------------------------------------------------
def test_snapshot_timeline_gone_and_last_clean(store):
    synced(store)
    snaps = [
        SeenSnapshot(f"{i:02x}" * 32, T0 + i * H, size=100 * i, verdict=v, retain_until=T0 + 30 * 24 * H)
        for i, v in enumerate(["clean", "clean", "suspicious", None])
    ]
    assert store.record_snapshots("t0/s0", "primary", snaps, T0 + 4 * H, complete=True) == 4
    store.record_snapshot("t0/s0", "immutable", snaps[0].snapshot_id, snaps[0].time, T0 + 4 * H, verdict="clean")
    timeline = store.snapshots("t0/s0", copy="primary")
    assert [s.snapshot_id for s in timeline] == [s.snapshot_id for s in reversed(snaps)]
    assert timeline[1].verdict == "suspicious" and timeline[0].retain_until == T0 + 30 * 24 * H
    assert [s.verdict for s in store.snapshots(since=T0 + H, until=T0 + 3 * H)] == ["suspicious", "clean"]
    assert [s.snapshot_id for s in store.snapshots(verdicts=["suspicious"])] == [snaps[2].snapshot_id]

    clean = store.last_clean(T0 + 10 * H)
    assert [(s.copy, s.snapshot_id) for s in clean] == [
        ("immutable", snaps[0].snapshot_id),
        ("primary", snaps[1].snapshot_id),
    ]
    assert [s.snapshot_id for s in store.last_clean(T0 + H)] == [snaps[0].snapshot_id] * 2

    # the next listing no longer holds snapshot 1 (forgotten): it is marked gone, not deleted
    store.record_snapshots("t0/s0", "primary", [snaps[0], snaps[2], snaps[3]], T0 + 5 * H, complete=True)
    assert snaps[1].snapshot_id not in [s.snapshot_id for s in store.snapshots("t0/s0")]
    gone = [s for s in store.snapshots("t0/s0", include_gone=True) if s.snapshot_id == snaps[1].snapshot_id]
    assert gone[0].gone_at == T0 + 5 * H
    assert [s.snapshot_id for s in store.last_clean(T0 + 10 * H) if s.copy == "primary"] == [snaps[0].snapshot_id]


def test_drills_alarms_and_notifications(store):
    synced(store)
    rid = store.start_run("t0/s0", "drill", None, "a1", "immutable", T0)
    did = store.record_drill(
        "t0/s0",
        SNAP,
        "immutable",
        run_id=rid,
        started_at=T0,
        rto_measured_s=600,
        rto_target_s=4 * 3600,
        verdict="pass",
        bytes=6_000_000,
        files=10,
        report_id="drill-report-1",
        report_digest="c0ffee",
        signature_ok=True,
        now=T0 + timedelta(minutes=10),
    )
    (d,) = store.drills("t0/s0")
    assert d.id == did and d.bytes_per_s == 10_000 and d.finished_at == T0 + timedelta(minutes=10)
    assert d.to_json()["finished_at"] == "2025-03-01T12:10:00.000000Z"
    assert store.drills(tenant="t0", since=T0) == [d] and store.drills(until=T0) == []

    a1 = store.open_alarm("t0/s0", "primary", SNAP, "suspicious", ["many files became random"], score=0.9, now=T0)
    assert store.open_alarm("t0/s0", "primary", SNAP, "suspicious", ["again"], now=T0 + H) == a1  # one per snapshot
    assert [a.reasons for a in store.alarms()] == [["many files became random"]]
    assert store.ack_alarm(a1, "operator@dc", note="a package upgrade", now=T0 + 2 * H)
    assert not store.ack_alarm(a1, "someone", now=T0 + 3 * H)
    assert store.alarms() == []
    (acked,) = store.alarms(open_only=False, tenant="t0")
    assert (acked.acknowledged_by, acked.acknowledged_at, acked.note) == (
        "operator@dc",
        T0 + 2 * H,
        "a package upgrade",
    )

    store.record_notification("rpo_breach", "mailtos://smtp.example.org", "t0/s0 missed", system_id="t0/s0", now=T0)
    store.record_notification("rpo_breach", "ops-chat", "again", system_id="t0/s0", ok=False, error="503", now=T0 + H)
    assert store.last_notified("t0/s0", "rpo_breach") == T0
    assert store.last_notified("t0/s0", "rpo_breach", ok_only=False) == T0 + H
    assert store.last_notified(None, "rpo_breach") is None
    assert [n.target for n in store.notifications(system_id="t0/s0")] == ["ops-chat", "mailtos://smtp.example.org"]


# ---- the fleet status ------------------------------------------------------------------------------------------
def _good_history(store, sid, now, copies=("primary", "immutable", "mirror"), drill_rto=600.0):
    """Everything a system's class asks for, done just before `now`."""
    for copy in copies:
        kind = "backup" if copy == "primary" else "mirror"
        rid = store.start_run(sid, kind, None, "a1", copy, now - timedelta(minutes=30))
        store.finish_run(rid, "ok", now - timedelta(minutes=20), data_time=now - timedelta(minutes=30))
    rid = store.start_run(sid, "verify", None, "a1", "primary", now - timedelta(minutes=15))
    store.finish_run(rid, "ok", now - timedelta(minutes=10))
    store.record_drill(
        sid,
        SNAP,
        "immutable",
        started_at=now - timedelta(minutes=10),
        rto_measured_s=drill_rto,
        rto_target_s=4 * 3600,
        verdict="pass",
        now=now - timedelta(minutes=5),
    )
    retain = now + 30 * 24 * H
    store.record_snapshot(sid, "primary", SNAP, now - timedelta(minutes=30), now, verdict="clean")
    store.record_snapshot(sid, "immutable", SNAP, now - timedelta(minutes=30), now, retain_until=retain)


def test_status_says_whether_each_system_meets_its_class_and_why_not(store):
    synced(store, n=2, tenants=1)  # s0 strategis (1h RPO, 3 copies), s1 tinggi (4h RPO, 2 copies)
    now = T0 + 24 * H
    _good_history(store, "t0/s0", now)
    _good_history(store, "t0/s1", now, copies=("primary", "immutable"))
    by = {s.id: s for s in store.status(now)}
    s0 = by["t0/s0"]
    assert s0.meets_class and s0.reasons == [], s0.reasons
    assert by["t0/s1"].meets_class, by["t0/s1"].reasons
    assert s0.last_backup == now - timedelta(minutes=30) and s0.backup_age_s == 1800
    assert s0.last_mirror == now - timedelta(minutes=20) and s0.last_verify == now - timedelta(minutes=10)
    assert s0.last_drill.rto_measured_s == 600 and s0.verdict == "clean"
    imm = s0.copies["immutable"]
    assert imm.fresh and imm.immutable and imm.lock_until == now + 30 * 24 * H and imm.repository == "i"
    assert imm.lag_s == 0 and s0.copies["primary"].lag_s is None
    assert s0.last_runs[("backup", "primary")].status == "ok"
    json = s0.to_json()
    assert json["meets_class"] and json["copies"]["mirror"]["fresh"] and json["system"]["id"] == "t0/s0"

    # two hours later the strategis system is past its 1h RPO on every copy; the tinggi one is not
    later = store.status(now + 2 * H)
    s0, s1 = later
    assert not s0.meets_class and s1.meets_class
    assert s0.reasons == [
        "backup is 2h30min old, older than the RPO 1h",
        "immutable copy is 2h30min old, older than the RPO 1h",
        "mirror copy is 2h30min old, older than the RPO 1h",
    ]

    # a new backup of the primary: the copies not mirrored since trail it
    rid = store.start_run("t0/s0", "backup", now + H, "a1", "primary", now + H)
    store.finish_run(rid, "ok", now + H + timedelta(minutes=2))
    s0 = store.system_status("t0/s0", now + H + timedelta(minutes=5))
    assert s0.copies["mirror"].lag_s == s0.copies["immutable"].lag_s == 90 * 60 and s0.backup_age_s == 300
    assert s0.reasons == [
        "immutable copy is 1h35min old, older than the RPO 1h",
        "mirror copy is 1h35min old, older than the RPO 1h",
    ]

    # a failed backup does not make old data fresh; it shows as the last run
    rid = store.start_run("t0/s1", "backup", now + H, "a1", "primary", now + H)
    store.finish_run(rid, "failed", now + H + timedelta(minutes=1), error="repository unreachable\nmore")
    s1 = store.system_status("t0/s1", now + 2 * H)
    assert s1.meets_class and s1.last_runs[("backup", "primary")].status == "failed"
    assert s1.last_backup == now - timedelta(minutes=30)

    # a slow drill, a failed drill, an open alarm, an old verify
    store.record_drill(
        "t0/s1", SNAP, "primary", started_at=now, rto_measured_s=30 * 3600, rto_target_s=86400, verdict="pass", now=now
    )
    assert store.system_status("t0/s1", now).reasons == ["last drill took 1d6h, over the RTO 1d"]
    store.record_drill(
        "t0/s1",
        SNAP,
        "primary",
        started_at=now,
        rto_measured_s=60,
        rto_target_s=86400,
        verdict="fail",
        error="check 'sqlite' returned no rows",
        now=now + timedelta(seconds=1),
    )
    assert store.system_status("t0/s1", now + H).reasons == ["last drill failed: check 'sqlite' returned no rows"]
    aid = store.open_alarm("t0/s0", "primary", SNAP, "infected", ["ransom note"], now=now)
    s0 = store.system_status("t0/s0", now)
    assert s0.reasons == [f"1 open guard alarm (snapshot {SNAP[:8]})"] and s0.open_alarms[0].id == aid
    store.ack_alarm(aid, "op", now=now)
    assert store.system_status("t0/s0", now).meets_class
    much_later = now + 61 * 24 * H
    reasons = store.system_status("t0/s0", much_later).reasons
    assert reasons[3:] == ["last verify 61d10min ago, due every 30d", "last drill 61d5min ago, due every 1w"]


def test_status_of_a_new_system_lists_everything_missing(store):
    synced(store, n=1, tenants=1)
    (s,) = store.status(T0)
    assert not s.meets_class
    assert s.reasons == [
        "no backup yet",
        "no immutable copy yet",
        "no mirror copy yet",
        "never verified",
        "never drilled",
    ]
    assert s.last_backup is None and s.last_drill is None and s.running is None
    store.claim("t0/s0", "a1", "backup", 60, T0)
    assert store.status(T0)[0].running.agent == "a1"
    assert store.status(T0 + H)[0].running is None  # expired


def test_status_of_one_tenant_and_without_retired_systems(store):
    store.sync_config(fleet(6, tenants=3), T0)
    assert [s.id for s in store.status(T0, tenant="t1")] == ["t1/s1", "t1/s4"]
    store.sync_config(fleet(4, tenants=3), T0 + H)
    assert [s.id for s in store.status(T0)] == ["t0/s0", "t0/s3", "t1/s1", "t2/s2"]


def _populate(store, n: int) -> None:
    store.sync_config(fleet(n, tenants=5), T0)
    now = T0 + 24 * H
    for i, s in enumerate(store.systems()):
        rid = store.start_run(s.id, "backup", now - H, "a1", "primary", now - H)
        store.finish_run(rid, "ok", now - H + timedelta(minutes=5), snapshot_id=SNAP)
        if i % 2:
            rid = store.start_run(s.id, "mirror", now - H, "a1", "immutable", now - H)
            store.finish_run(rid, "failed", now - H + timedelta(minutes=5), error="unreachable")
        if i % 3 == 0:
            store.record_drill(s.id, SNAP, "primary", started_at=now, rto_measured_s=9, rto_target_s=9, verdict="pass")
        if i % 4 == 0:
            store.record_snapshot(s.id, "primary", SNAP, now - H, now, verdict="clean")
        if i % 5 == 0:
            store.open_alarm(s.id, "primary", SNAP, "suspicious", ["x"], now=now)


def test_fleet_queries_cost_the_same_statements_for_5_and_500_systems(url, tmp_path):
    counts = {}
    for n in (5, 500):
        u = url if n == 5 else _second_store(url, tmp_path)
        with StateStore.open(u) as store:
            _populate(store, n)
            statements: list[str] = []
            sa.event.listen(store.engine, "before_cursor_execute", lambda *a, seen=statements: seen.append(a[2]))
            fleet_status = store.status(T0 + 25 * H)
            store.status(T0 + 25 * H, tenant="t1")
            store.last_clean(T0 + 25 * H)
            store.alarms()
            store.claims(T0)
            counts[n] = len(statements)
            assert len(fleet_status) == n
            assert sum(not s.meets_class for s in fleet_status) == n
            assert sum(bool(s.open_alarms) for s in fleet_status) == len(range(0, n, 5))
    assert counts[5] == counts[500], counts


def _second_store(url: str, tmp_path) -> str:
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/state500.db"
    return url.rsplit("/", 1)[0] + "/" + _new_pg_database(url)


def _new_pg_database(url: str) -> str:
    name = f"st_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return name


def test_a_drill_that_restored_nothing_is_a_failed_drill_not_a_missing_one(store):
    """Such a drill leaves no drills row (no snapshot), only its failed run: the reason must say it failed."""
    synced(store, n=1, tenants=1)
    run = store.start_run("t0/s0", "drill", T0, "a1", copy="primary", now=T0)
    store.finish_run(run, "failed", T0 + H, error="no snapshot of source db in the primary copy\nmore")
    (s,) = store.status(T0 + H)
    assert "last drill failed: no snapshot of source db in the primary copy" in s.reasons
    assert "never drilled" not in s.reasons
