"""ops/evidence.py and web/exportdoc.py: the auditors' evidence of a fleet over a period — the numbers for
known histories (gaps against the RPO, share of time within it, verification and drill cycles, alarms,
drills and their signed reports), the period's validation, the digest, the CSV tables, and a fixed number
of SQL statements whatever the fleet's size."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from web_helpers import SNAP, T0, Clock, fleet_toml, populate, store_url  # noqa: F401

from cermin.ops import evidence as evmod
from cermin.ops import evidencedoc
from cermin.ops.config import parse_config
from cermin.ops.evidence import build_evidence
from cermin.ops.evidencedoc import PeriodError, parse_period
from cermin.ops.state import SeenSnapshot, StateStore
from cermin.web import exportdoc

H = timedelta(hours=1)
D = timedelta(days=1)
SINCE = datetime(2026, 2, 1, tzinfo=UTC)
UNTIL = datetime(2026, 2, 4, tzinfo=UTC)  # three whole days


def _store(url: str) -> StateStore:
    return StateStore.open(url, clock=Clock(T0))


def good(store, sid: str, kind: str, copy: str, t: datetime, status: str = "ok", error: str | None = None) -> int:
    run_id = store.start_run(sid, kind, None, "agent-1", copy=copy, now=t)
    store.finish_run(run_id, status, now=t + timedelta(minutes=1), data_time=t, error=error)
    return run_id


# ---- the period --------------------------------------------------------------------------------------------
def test_the_period_defaults_to_the_last_30_days_and_reads_dates_as_whole_days():
    now = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    assert parse_period(None, None, now) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))
    assert parse_period("2026-01-01", "2026-01-31", now) == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )
    since, until = parse_period("2026-01-01T06:00:00+07:00", "2026-01-02T00:00Z", now)
    assert since == datetime(2025, 12, 31, 23, tzinfo=UTC) and until == datetime(2026, 1, 2, tzinfo=UTC)
    assert evidencedoc.period_label(*parse_period("2026-01-01", "2026-01-31", now)) == "2026-01-01 – 2026-01-31"
    assert evidencedoc.period_slug(*parse_period("2026-01-01", "2026-01-31", now)) == "20260101-20260131"


@pytest.mark.parametrize(
    "since,until,words",
    [
        ("yesterday", None, "bad since 'yesterday'"),
        ("2026-02-30", None, "not a date"),
        ("2026-02-10", "2026-02-01", "the period is empty"),
        ("2022-01-01", "2026-01-31", "at most three years"),
        ("2026-04-01", "2026-05-01", "starts in the future"),
        ("1999-01-01", "1999-02-01", "between the years 2000 and 9000"),
    ],
)
def test_a_bad_period_is_one_line(since, until, words):
    with pytest.raises(PeriodError) as e:
        parse_period(since, until, T0)
    assert words in str(e.value) and "\n" not in str(e.value)


# ---- the numbers of a known history ------------------------------------------------------------------------
def test_gaps_against_the_rpo_and_the_cycles(store_url):  # noqa: F811 - the fixture
    """rendah (RPO 1d): a good backup 12 h before the period, then at +10 h and +40 h, and none after: the
    longest gap is the 32 h to the end; outside the RPO 6 h (the 30 h gap) + 8 h (the tail) = 14 h of 72.
    strategis (RPO 1h): hourly backups and mirrors, nothing ever on its immutable copy, never verified or
    drilled."""
    store = _store(store_url)
    try:
        cfg = parse_config(fleet_toml({"acme/app": "rendah", "acme/big": "strategis"}), environ={})
        store.sync_config(cfg, SINCE - 30 * D)
        for t in (SINCE - 12 * H, SINCE + 10 * H, SINCE + 40 * H):
            good(store, "acme/app", "backup", "primary", t)
        good(store, "acme/app", "backup", "primary", SINCE + 50 * H, "failed", "disk full")
        good(store, "acme/app", "verify", "primary", SINCE - D)
        good(store, "acme/app", "verify", "primary", SINCE + 36 * H)
        store.record_drill(
            "acme/app",
            SNAP,
            "primary",
            started_at=SINCE - 10 * D - H,
            rto_measured_s=60,
            rto_target_s=259200,
            verdict="pass",
            now=SINCE - 10 * D,
        )
        for i in range(-1, 72):
            good(store, "acme/big", "backup", "primary", SINCE + i * H)
            good(store, "acme/big", "mirror", "mirror", SINCE + i * H)
        good(store, "acme/big", "mirror", "immutable", SINCE + 5 * H, "failed", "no repository at s3:...")

        ev = build_evidence(store, cfg, since=SINCE, until=UNTIL, now=T0, generated_by="test")
    finally:
        store.close()
    app, big = (next(s for s in ev.systems if s.id == x) for x in ("acme/app", "acme/big"))

    primary = app.copies[0]
    assert primary.kind == "primary" and primary.good_runs == 2 and primary.newest_before == SINCE - 12 * H
    assert primary.longest_gap_s == 32 * 3600 and primary.out_of_rpo_s == 14 * 3600
    assert primary.within_rpo_pct == round(100 * (1 - 14 / 72), 2) and not primary.met
    assert app.evaluated_from == SINCE
    assert app.backups.ok == 2 and app.backups.failed == 1 and app.backups.last_error == "disk full"
    assert app.backups_per_day == round(2 / 3, 2)
    assert app.longest_verify_gap_s == 60 * 3600  # from the verification a day before the period: within 90d
    assert app.drills == [] and app.longest_drill_gap_s == (UNTIL - (SINCE - 10 * D)).total_seconds()
    assert app.reason_codes == ["rpo"] and not app.met_period
    assert app.reasons_period == [
        "the primary went 1d8h without newer data, over the RPO 1d (within it 80.6% of the time)"
    ]
    assert app.retention == {"last": 7, "daily": 7, "weekly": 4, "monthly": 6}
    assert (app.rpo_s, app.rto_s, app.copies_required) == (86400, 259200, ["primary"])

    copies = {c.kind: c for c in big.copies}
    assert copies["primary"].met and copies["primary"].longest_gap_s == 3600 and copies["primary"].within_rpo_pct == 100
    assert copies["mirror"].met and copies["mirror"].good_runs == 72
    assert not copies["immutable"].met and copies["immutable"].good_runs == 0 and copies["immutable"].failed_runs == 1
    assert copies["immutable"].immutable and copies["immutable"].location == "s3:http://127.0.0.1:8333/locked/x"
    assert big.reason_codes == ["copy", "verify", "drill"]
    assert big.reasons_period == [
        "the immutable copy received no good data in the period",
        "the primary was never verified",
        "never drilled",
    ]
    assert ev.summary.sentence() == (
        "0 of 2 systems met their policy over the period; 2 did not, because: 1 backup gap longer than the RPO, "
        "1 copy missing or behind the RPO, 1 verification gap, 1 drill overdue or never done."
    )
    assert ev.evaluated_until == UNTIL and ev.scope == "fleet" and ev.configuration


def test_a_system_put_in_service_during_the_period_is_evaluated_from_its_first_backup(tmp_path):
    store = _store(f"sqlite:///{tmp_path}/s.db")
    try:
        cfg = parse_config(fleet_toml({"acme/new": "rendah", "acme/none": "rendah"}), environ={})
        store.sync_config(cfg, SINCE)
        for t in (SINCE + 50 * H, SINCE + 60 * H):
            good(store, "acme/new", "backup", "primary", t)
        good(store, "acme/new", "verify", "primary", SINCE + 61 * H)
        good(store, "acme/none", "backup", "primary", SINCE + 60 * H, "failed", "source gone")
        ev = build_evidence(store, cfg, since=SINCE, until=UNTIL, now=T0)
    finally:
        store.close()
    new, none = ev.systems[0], ev.systems[1]
    assert new.evaluated_from == SINCE + 50 * H and new.copies[0].within_rpo_pct == 100.0
    assert new.reasons_period == ["never drilled"]
    assert none.evaluated_from is None and none.copies[0].within_rpo_pct == 0.0
    assert none.reasons_period[0] == "no good backup of the primary in the period or before it"
    assert none.reason_codes[0] == "nobackup" and none.backups.failed == 1


def test_alarms_drills_verdicts_and_notifications_of_the_period(tmp_path):
    store = _store(f"sqlite:///{tmp_path}/s.db")
    systems = {"dinas/berkas": "rendah", "dinas/web": "rendah", "lain/x": "rendah"}
    try:
        cfg = populate(store, systems, {"dinas/web": {"slowdrill"}}, now=UNTIL - H)
        # an alarm opened and acknowledged in the period, one left open, one acknowledged before it
        old = store.open_alarm("dinas/berkas", "primary", "01" * 32, "suspicious", ["old"], now=SINCE - 5 * D)
        store.ack_alarm(old, "ana", note="old news", now=SINCE - 4 * D)
        a1 = store.open_alarm("dinas/berkas", "primary", "aa" * 32, "infected", ["ransom notes"], now=SINCE + H)
        store.ack_alarm(a1, "ana", note="restored from the last clean snapshot", now=SINCE + 2 * H)
        store.open_alarm("dinas/berkas", "primary", "bb" * 32, "suspicious", ["many renames"], now=SINCE + 3 * H)
        flagged = SeenSnapshot("aa" * 32, SINCE + H, verdict="infected", score=0.97)
        store.record_snapshots("dinas/berkas", "primary", [flagged], SINCE + H)
        store.record_drill(
            "dinas/berkas",
            SNAP,
            "primary",
            started_at=SINCE + 5 * H,
            rto_measured_s=90,
            rto_target_s=259200,
            verdict="fail",
            error="check rows failed",
            now=SINCE + 6 * H,
        )
        store.record_notification(
            "guard_alarm", "ops-mail", "alarm on dinas/berkas", system_id="dinas/berkas", now=SINCE + H
        )
        store.record_notification("agent_down", "ops-mail", "agent quiet", ok=False, error="smtp down", now=SINCE + H)
        store.record_notification("rpo_breach", "lain-mail", "lain/x", system_id="lain/x", now=SINCE + 2 * H)
        ev = build_evidence(store, cfg, since=SINCE, until=UNTIL, now=T0)
        mine = build_evidence(store, cfg, tenant="dinas", since=SINCE, until=UNTIL, now=T0)
        with pytest.raises(evmod.EvidenceError, match="unknown tenant 'nope'"):
            build_evidence(store, cfg, tenant="nope", since=SINCE, until=UNTIL, now=T0)
    finally:
        store.close()
    berkas = next(s for s in ev.systems if s.id == "dinas/berkas")
    assert [(a.snapshot_id[:2], a.acknowledged_by, a.note, a.open_at_end) for a in berkas.alarms] == [
        ("aa", "ana", "restored from the last clean snapshot", False),
        ("bb", None, None, True),
    ]
    assert [(f.snapshot_id[:2], f.verdict, f.score) for f in berkas.flagged] == [("aa", "infected", 0.97)]
    assert [(d.verdict, d.error, d.signature) for d in berkas.drills] == [
        ("fail", "check rows failed", "missing"),  # no signed report recorded
        ("pass", None, "missing"),  # populate's
    ]
    assert "1 drill failed" in berkas.reasons_period
    assert "1 guard alarm open at the end of the period" in berkas.reasons_period
    web = next(s for s in ev.systems if s.id == "dinas/web")
    assert web.reasons_period == ["1 drill took longer than the RTO 3d"] and not web.drills[0].within_rto
    assert [n.event for n in berkas.notifications] == ["guard_alarm"]
    assert [(n.event, n.ok, n.error) for n in ev.fleet_notifications] == [("agent_down", False, "smtp down")]
    assert ev.summary.alarms == 2 and ev.summary.alarms_acknowledged == 1 and ev.summary.alarms_open_at_end == 1
    assert ev.summary.flagged_snapshots == 1 and ev.summary.drills == 4 and ev.summary.drills_passed == 3
    # one tenant's evidence: its systems, its notifications, none about the fleet
    assert mine.scope == "dinas" and mine.scope_name == "Dinas Agency"
    assert [s.id for s in mine.systems] == ["dinas/berkas", "dinas/web"] and [t.id for t in mine.tenants] == ["dinas"]
    assert mine.fleet_notifications == [] and mine.summary.notifications == 1


# ---- drill reports and their signatures --------------------------------------------------------------------
def _signed_report(key, system: str, started: datetime):
    from cermin.ops.drillreport import DrillReport, sign

    tenant, _ = system.split("/")
    r = DrillReport(
        id=hashlib.sha256(started.isoformat().encode()).hexdigest()[:32],
        system=system,
        tenant=tenant,
        policy="rendah",
        copy="primary",
        repository="p",
        repository_id="ab" * 16,
        location="/srv/p",
        selection="latest",
        snapshots=[],
        checks=[],
        rto_measured_s=12.5,
        rto_target_s=259200,
        met=True,
        verdict="pass",
        errors=[],
        started=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        finished=(started + H).strftime("%Y-%m-%dT%H:%M:%SZ"),
        agent="agent-1",
        host="host",
        cermin_version="0.1.0",
    )
    return sign(r, key)


def test_drill_reports_are_found_by_digest_and_their_signatures_checked(tmp_path):
    from cermin.ops.agentkey import generate_key
    from cermin.ops.drillreport import write_report_files

    workdir = tmp_path / "agent"
    key = generate_key(str(workdir / "agent.key"))
    toml = f"[agent]\nworkdir = '{workdir}'\n".encode() + fleet_toml({"acme/db": "rendah"})
    cfg = parse_config(toml, environ={})
    store = _store(f"sqlite:///{tmp_path}/s.db")
    try:
        store.sync_config(cfg, SINCE - D)
        good(store, "acme/db", "backup", "primary", SINCE - H)
        digests = []
        for i in range(3):
            started = SINCE + (10 + i) * H
            env, digest = _signed_report(key, "acme/db", started)
            json_path, _ = write_report_files(env, str(workdir / "reports"))
            if i == 1:  # changed after signing
                doc = json.loads(open(json_path).read())
                doc["report"]["rto_measured_s"] = 1.0
                open(json_path, "w").write(json.dumps(doc))
            store.record_drill(
                "acme/db",
                SNAP,
                "primary",
                started_at=started,
                rto_measured_s=12.5,
                rto_target_s=259200,
                verdict="pass",
                report_id=env.report.id,
                report_digest=digest if i != 2 else "00" * 32,
                now=started + H,
            )
            digests.append(digest)
        ev = build_evidence(store, cfg, since=SINCE, until=UNTIL, now=T0)
        bare = build_evidence(store, None, since=SINCE, until=UNTIL, now=T0)
        (workdir / "agent.key.pub").unlink()  # no public key: intact, but not pinned to the agent's key
        unpinned = build_evidence(store, cfg, since=SINCE, until=UNTIL, now=T0)
    finally:
        store.close()
    drills = ev.systems[0].drills
    assert [d.signature for d in drills] == ["verified", "missing", "missing"]
    # the changed report no longer has the recorded digest: it is not the report the drill recorded
    assert key.fingerprint in drills[0].signature_note and drills[0].report_digest == digests[0]
    assert "no report with this digest" in drills[2].signature_note
    assert [d.signature for d in bare.systems[0].drills] == ["not_checked"] * 3
    assert bare.systems[0].retention is None and not bare.configuration
    assert unpinned.systems[0].drills[0].signature == "verified_untrusted"


def test_a_report_whose_signature_fails_is_invalid(tmp_path):
    """A report with the recorded digest whose signature does not verify (a forged signature)."""
    import base64

    from cermin.ops.agentkey import generate_key
    from cermin.ops.drillreport import envelope_json, report_basename

    workdir = tmp_path / "agent"
    key = generate_key(str(workdir / "agent.key"))
    cfg = parse_config(f"[agent]\nworkdir = '{workdir}'\n".encode() + fleet_toml({"acme/db": "rendah"}), environ={})
    env, digest = _signed_report(key, "acme/db", SINCE + H)
    doc = envelope_json(env)
    doc["signature"] = base64.b64encode(b"\x01" * 64).decode()
    (workdir / "reports").mkdir()
    (workdir / "reports" / (report_basename(env.report) + ".json")).write_text(json.dumps(doc))
    store = _store(f"sqlite:///{tmp_path}/s.db")
    try:
        store.sync_config(cfg, SINCE - D)
        store.record_drill(
            "acme/db",
            SNAP,
            "primary",
            started_at=SINCE + H,
            rto_measured_s=1,
            rto_target_s=2,
            verdict="pass",
            report_digest=digest,
            now=SINCE + 2 * H,
        )
        d = build_evidence(store, cfg, since=SINCE, until=UNTIL, now=T0).systems[0].drills[0]
    finally:
        store.close()
    assert d.signature == "invalid" and "signature does not match" in d.signature_note


# ---- the digest and the formats ----------------------------------------------------------------------------
@pytest.fixture
def known(tmp_path):
    store = _store(f"sqlite:///{tmp_path}/s.db")
    systems = {"imigrasi/paspor": "strategis", "imigrasi/visa": "rendah", "dukcapil/ktp": "rendah"}
    faults = {"imigrasi/visa": {"stale"}, "dukcapil/ktp": {"nodrill", "alarm"}}
    cfg = populate(store, systems, faults)
    store.record_notification("rpo_breach", "ops", '=HYPERLINK("http://x")', system_id="imigrasi/visa", now=T0)
    since, until = parse_period(None, None, T0)
    yield store, cfg, since, until
    store.close()


def test_the_digest_is_the_sha256_of_the_json_export_and_changes_with_the_document(known):
    store, cfg, since, until = known
    ev = build_evidence(store, cfg, since=since, until=until, now=T0, generated_by="ana")
    again = build_evidence(store, cfg, since=since, until=until, now=T0, generated_by="ana")
    later = build_evidence(store, cfg, since=since, until=until, now=T0 + H, generated_by="ana")
    body = exportdoc.render(ev, "json")
    assert hashlib.sha256(body).hexdigest() == ev.digest == again.digest != later.digest
    doc = json.loads(body)
    assert doc["format"] == "cermin-evidence" and doc["version"] == 1 and "digest" not in doc
    assert doc["generated_by"] == "ana" and doc["summary"]["systems"] == 3
    assert ev.summary.sentence() == (
        "1 of 3 systems met their policy over the period; 2 did not, because: 1 backup gap longer than the RPO, "
        "1 drill overdue or never done, 1 guard alarm left open."
    )
    assert ev.filename("pdf") == "cermin-evidence-fleet-20260201-20260302.pdf"


def test_csv_tables_parse_and_carry_the_digest(known):
    store, cfg, since, until = known
    ev = build_evidence(store, cfg, since=since, until=until, now=T0)
    for table in exportdoc.TABLES:
        raw = exportdoc.render(ev, "csv", table)
        assert raw.startswith("\ufeff".encode())
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
        assert rows[0] == [*exportdoc.COLUMNS[table], "evidence_digest"], table
        assert all(len(r) == len(rows[0]) and r[-1] == ev.digest for r in rows[1:]), table
        for row in exportdoc._ROWS[table](ev):
            assert tuple(row) == exportdoc.COLUMNS[table]
    systems = list(csv.DictReader(io.StringIO(exportdoc.to_csv(ev, "systems").decode("utf-8-sig"))))
    assert [(r["tenant"], r["system"], r["met_policy_over_period"]) for r in systems] == [
        ("dukcapil", "ktp", "no"),
        ("imigrasi", "paspor", "yes"),
        ("imigrasi", "visa", "no"),
    ]
    assert systems[2]["within_rpo_pct"] == "50.0" and systems[2]["longest_backup_gap_s"] == "172800.0"
    assert systems[1]["retention"] == "last 48, daily 30, weekly 12, monthly 24, within 2d"
    notes = list(csv.DictReader(io.StringIO(exportdoc.to_csv(ev, "notifications").decode("utf-8-sig"))))
    assert notes[0]["title"] == '\'=HYPERLINK("http://x")'  # not a formula in a spreadsheet
    alarms = list(csv.DictReader(io.StringIO(exportdoc.to_csv(ev, "alarms").decode("utf-8-sig"))))
    assert [(a["system"], a["open_at_end"], a["reasons"]) for a in alarms] == [
        ("ktp", "yes", "many files became ciphertext")
    ]
    with pytest.raises(ValueError, match="unknown table"):
        exportdoc.to_csv(ev, "secrets")


def test_the_zip_holds_every_table_the_json_and_a_readme(known):
    store, cfg, since, until = known
    ev = build_evidence(store, cfg, since=since, until=until, now=T0)
    z = zipfile.ZipFile(io.BytesIO(exportdoc.render(ev, "zip")))
    names = z.namelist()
    assert names[0] == "README.txt" and len(names) == 2 + len(exportdoc.TABLES)
    assert hashlib.sha256(z.read(ev.filename("json"))).hexdigest() == ev.digest
    assert f"sha256:{ev.digest}" in z.read("README.txt").decode()
    assert exportdoc.render(ev, "zip") == exportdoc.render(ev, "zip")  # the same document, the same bytes


def test_the_html_report_is_self_contained_and_escaped(known):
    store, cfg, since, until = known
    store.open_alarm("imigrasi/visa", "primary", "12" * 32, "suspicious", ["<script>alert(1)</script>"], now=T0)
    ev = build_evidence(store, cfg, since=since, until=until, now=T0, generated_by="<b>eve</b>")
    html = exportdoc.to_html(ev)
    assert "<script" not in html and "&lt;script&gt;alert(1)" in html and "&lt;b&gt;eve" in html
    for fetches in (" src=", "<link", "url(", "@import", "<script", "<img", "<iframe"):
        assert fetches not in html, fetches  # nothing to load: the page is the whole document
    assert html.count(f"sha256:{ev.digest}") >= 4  # meta, header, cite box, page footer and the method
    assert ev.summary.sentence() in html
    for sid in ("dukcapil/ktp", "imigrasi/paspor", "imigrasi/visa"):
        assert f'id="system-{sid.replace("/", "-")}"' in html
    assert html.count('class="tenant"') == 3  # two tenants and the method, each on a new page


def test_the_cli_lists_the_formats_and_tables_of_the_renderers():
    from cermin.cli import cmd_export

    assert cmd_export.FORMATS == exportdoc.FORMATS and cmd_export.TABLES == exportdoc.TABLES


# ---- a fixed number of statements --------------------------------------------------------------------------
def _statements(tmp_path, n: int) -> tuple[int, int]:
    systems = {f"t{i % 5}/s{i}": ("strategis" if i % 3 == 0 else "rendah") for i in range(n)}
    faults = {
        sid: ({"stale"} if i % 4 == 0 else set()) | ({"alarm"} if i % 7 == 0 else set())
        for i, sid in enumerate(systems)
    }
    store = _store(f"sqlite:///{tmp_path}/st{n}.db")
    try:
        cfg = populate(store, systems, faults)
        since, until = parse_period(None, None, T0)
        seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        ev = build_evidence(store, cfg, since=since, until=until, now=T0)
        build_evidence(store, cfg, tenant="t1", since=since, until=until, now=T0)
        return len(seen), len(ev.systems)
    finally:
        store.close()


def test_the_evidence_costs_the_same_statements_for_5_and_50_systems(tmp_path):
    small, n5 = _statements(tmp_path, 5)
    large, n50 = _statements(tmp_path, 50)
    assert (n5, n50) == (5, 50)
    assert small == large, (small, large)
    assert small <= 2 * 22  # per document: 13 reads, the status's seven, two BEGINs (fleet + one tenant)
