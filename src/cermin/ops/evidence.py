"""Evidence for auditors: what the fleet (or one tenant) promised and what it did over a period
(docs/dashboard.md "Evidence export").

`build_evidence(store, cfg, tenant=None, since=..., until=..., now=...)` reads the state store and returns an
`Evidence`: plain data, the same for every format (CSV, HTML, PDF, JSON: web/exportdoc.py). Per system:

- the class's terms (RPO, RTO, copies required, drill and verify cycles, retention when the configuration
  is given — the state store does not keep it);
- whether it met its policy *over the period* and whether it meets it *now* (the fleet page's answer);
- its copies: where (repository and location), immutable or not, the Object Lock retention seen, good
  backups or mirrors into each, the longest time without good data and the share of the time within the RPO;
- backups, verifications and failures in the period; guard verdicts, flagged snapshots and alarms (who
  acknowledged them, when, why); every drill (copy, snapshot, measured RTO against the target, verdict, the
  signed report's id and digest, and whether its signature verifies); notifications sent.

Over the period, a system met its policy when each required copy always held data no older than the RPO,
its primary was verified at least every `verify_every`, it was drilled at least every `drill_every` and every
drill passed within the RTO, and no guard alarm was left open at the end. Time is measured on the data's own
time (the snapshot's), as the fleet page measures it. A system that had no good backup before the period is
evaluated from its first good backup in it; one with none is not covered.

The document's digest is the SHA-256 of its canonical JSON (`canonical()`: keys sorted, no whitespace,
UTF-8): the JSON export is exactly those bytes, so `sha256sum` of it gives the digest every format prints.

The store is read in one consistent transaction of a fixed number of grouped statements (plus the seven of
`StateStore.status()` for "now"), whatever the number of systems: never one query per system.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cermin import __version__
from cermin.ops import stateschema as t
from cermin.ops.config import COPY_KINDS, Config, fmt_duration
from cermin.ops.evidencedoc import (
    REASONS,
    AlarmEvidence,
    CopyEvidence,
    DrillEvidence,
    Evidence,
    EvidenceError,
    FlaggedSnapshot,
    NotificationEvidence,
    RunCounts,
    Summary,
    SystemEvidence,
    TenantEvidence,
)

GOOD = ("ok", "warning")
FLAGGED = ("suspicious", "infected")
_DAY = timedelta(days=1)
_EPS = 0.01  # seconds: SQLite's time arithmetic is a float of days


# ---- coverage over time ------------------------------------------------------------------------------------
def _s(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


@dataclass
class _Track:
    """Good events of one kind in the period (from the grouped query), and the newest one before it."""

    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    inner_max: float | None = None  # the longest gap between two of them
    inner_out: float = 0.0  # time past the limit within those gaps
    prev: datetime | None = None


def _coverage(tr: _Track, start: datetime, end: datetime, limit: float) -> tuple[float | None, float, bool]:
    """(longest time without a newer event, time past the limit, had any data) over [start, end]: at each
    moment the age is the time since the newest event; before the first event of a track without one before
    the period, the age counts from `start` (a system put in service in the period)."""
    span = max(0.0, _s(start, end))
    if tr.count == 0:
        if tr.prev is None:
            return None, span, False
        gap = _s(tr.prev, end)
        return gap, max(0.0, _s(max(start, tr.prev + timedelta(seconds=limit)), end)), True
    assert tr.first is not None and tr.last is not None
    lead_from = tr.prev if tr.prev is not None else start
    lead = max(0.0, _s(lead_from, tr.first))
    lead_out = max(0.0, _s(max(start, lead_from + timedelta(seconds=limit)), tr.first))
    trail = max(0.0, _s(tr.last, end))
    trail_out = max(0.0, _s(max(start, tr.last + timedelta(seconds=limit)), end))
    longest = max(lead, tr.inner_max or 0.0, trail)
    return longest, min(span, lead_out + tr.inner_out + trail_out), True


def _events_gaps(times: list[datetime], prev: datetime | None, limit: float) -> _Track:
    tr = _Track(prev=prev)
    for x in sorted(times):
        if tr.last is not None:
            gap = _s(tr.last, x)
            tr.inner_max = gap if tr.inner_max is None else max(tr.inner_max, gap)
            tr.inner_out += max(0.0, gap - limit)
        tr.first = tr.first or x
        tr.last = x
        tr.count += 1
    return tr


# ---- reading the store -------------------------------------------------------------------------------------
def _seconds(dialect: str, a, b):
    """SQL: b - a in seconds (a, b timestamps)."""
    if dialect == "sqlite":
        return (sa.func.julianday(b) - sa.func.julianday(a)) * 86400.0
    return sa.cast(sa.extract("epoch", b - a), sa.Float)


def _utc(expr):
    return sa.type_coerce(expr, t.UTCDateTime())


@dataclass
class _Read:
    tenants: dict[str, str]
    systems: list[Any]
    repos: dict[str, Any]
    tracks: dict[tuple[str, str, str], _Track]  # (system, 'data'|'verify', copy)
    counts: dict[tuple[str, str, str], RunCounts]  # (system, kind, copy)
    snaps: dict[tuple[str, str], dict]  # (system, copy) -> aggregates
    flagged: list[FlaggedSnapshot]
    alarms: list[AlarmEvidence]
    drills: list[Any]
    drill_prev: dict[str, datetime]
    notifications: list[NotificationEvidence]


def _read(store, tenant: str | None, since: datetime, end: datetime) -> _Read:
    """Everything the document needs from the store, in one consistent transaction of a fixed number of
    statements (each over the whole scope, grouped in SQL)."""
    s, r, sn, a, d, n = (x.c for x in (t.systems, t.runs, t.snapshots, t.alarms, t.drills, t.notifications))
    scope = sa.select(s.id).where(sa.or_(s.retired_at.is_(None), s.retired_at >= since))
    if tenant is not None:
        scope = scope.where(s.tenant == tenant)
    dialect = store.dialect

    is_verify = r.kind == "verify"
    grp = sa.case((is_verify, sa.literal("verify")), else_=sa.literal("data")).label("grp")
    when = _utc(
        sa.case(
            (is_verify, sa.func.coalesce(r.finished_at, r.started_at)),
            else_=sa.func.coalesce(r.data_time, r.started_at),
        )
    )
    good = (r.kind.in_(("backup", "mirror", "verify")), r.status.in_(GOOD), r.copy != "", r.system_id.in_(scope))

    with store._tx(consistent=True) as c:
        tq = sa.select(t.tenants.c.id, t.tenants.c.name).order_by(t.tenants.c.id)
        if tenant is not None:
            tq = tq.where(t.tenants.c.id == tenant)
        tenants = {x.id: x.name for x in c.execute(tq)}
        systems = c.execute(sa.select(t.systems).where(s.id.in_(scope)).order_by(s.tenant, s.name)).all()
        repos = {x.name: x for x in c.execute(sa.select(t.repositories))}

        # good data (backups, mirrors) and verifications per copy: gaps between them, in SQL
        ev = (
            sa.select(r.system_id, r.copy, grp, when.label("t"))
            .where(*good, r.started_at >= since - _DAY, r.started_at < end, when >= since, when < end)
            .subquery()
        )
        lag = sa.func.lag(ev.c.t).over(partition_by=(ev.c.system_id, ev.c.grp, ev.c.copy), order_by=ev.c.t)
        lagged = sa.select(ev, _utc(lag).label("prev")).subquery()
        gap = _seconds(dialect, lagged.c.prev, lagged.c.t)
        limit = sa.case((lagged.c.grp == "verify", s.verify_every_s), else_=s.rpo_s)
        q = (
            sa.select(
                lagged.c.system_id,
                lagged.c.grp,
                lagged.c.copy,
                sa.func.count(),
                sa.func.min(lagged.c.t),
                sa.func.max(lagged.c.t),
                sa.func.max(gap),
                sa.func.sum(sa.case((gap > limit + _EPS, gap - limit), else_=0.0)),
            )
            .join(t.systems, s.id == lagged.c.system_id)
            .group_by(lagged.c.system_id, lagged.c.grp, lagged.c.copy)
        )
        tracks: dict[tuple[str, str, str], _Track] = {}
        for sid, g, cp, cnt, first, last, mx, out in c.execute(q):
            # julianday() arithmetic is a float of days: gaps to the millisecond
            inner = None if mx is None else round(float(mx), 3)
            tracks[(sid, g, cp)] = _Track(cnt, first, last, inner, round(float(out or 0.0), 3))
        q = sa.select(r.system_id, grp, r.copy, sa.func.max(when)).where(*good, when < since)
        for sid, g, cp, prev in c.execute(q.group_by(r.system_id, grp, r.copy)):
            tracks.setdefault((sid, g, cp), _Track()).prev = prev

        # runs in the period: counts per (system, kind, copy, status), and the last failure's error
        in_period = (r.system_id.in_(scope), r.started_at >= since, r.started_at < end)
        q = sa.select(r.system_id, r.kind, r.copy, r.status, sa.func.count(), sa.func.max(r.started_at)).where(
            *in_period
        )
        counts: dict[tuple[str, str, str], RunCounts] = {}
        for sid, kind, cp, status, cnt, last in c.execute(q.group_by(r.system_id, r.kind, r.copy, r.status)):
            rc = counts.setdefault((sid, kind, cp), RunCounts(kind, cp))
            if status in ("ok", "warning", "failed", "skipped", "running"):
                setattr(rc, status, cnt)
            if status in GOOD:
                rc.last_good_at = max(filter(None, (rc.last_good_at, last)))
            elif status == "failed":
                rc.last_failed_at = last
        rank = sa.func.row_number().over(
            partition_by=(r.system_id, r.kind, r.copy), order_by=(r.started_at.desc(), r.id.desc())
        )
        sub = sa.select(r.system_id, r.kind, r.copy, r.error, rank.label("rank")).where(
            *in_period, r.status == "failed"
        )
        sub = sub.subquery()
        for sid, kind, cp, error, _ in c.execute(sa.select(sub).where(sub.c.rank == 1)):
            if (sid, kind, cp) in counts:
                counts[(sid, kind, cp)].last_error = error

        # snapshots taken in the period: per copy and verdict, with the Object Lock retention seen
        snap_in = (sn.system_id.in_(scope), sn.time >= since, sn.time < end)
        q = sa.select(
            sn.system_id,
            sn.copy,
            sn.verdict,
            sa.func.count(),
            sa.func.count(sn.retain_until),
            sa.func.min(sn.retain_until),
            sa.func.max(sn.retain_until),
        ).where(*snap_in)
        snaps: dict[tuple[str, str], dict] = {}
        for sid, cp, verdict, cnt, locked, lmin, lmax in c.execute(q.group_by(sn.system_id, sn.copy, sn.verdict)):
            agg = snaps.setdefault((sid, cp), {"count": 0, "locked": 0, "min": None, "max": None, "verdicts": {}})
            agg["count"] += cnt
            agg["locked"] += locked
            agg["min"] = min(filter(None, (agg["min"], lmin)), default=None)
            agg["max"] = max(filter(None, (agg["max"], lmax)), default=None)
            key = verdict or "not scanned"
            agg["verdicts"][key] = agg["verdicts"].get(key, 0) + cnt
        q = sa.select(t.snapshots).where(*snap_in, sn.verdict.in_(FLAGGED)).order_by(sn.time, sn.id)
        flagged = [
            FlaggedSnapshot(x.system_id, x.copy, x.snapshot_id, x.time, x.verdict, x.score, x.gone_at)
            for x in c.execute(q)
        ]

        # alarms: opened before the end and not acknowledged before the start
        q = (
            sa.select(t.alarms)
            .where(
                a.system_id.in_(scope),
                a.opened_at < end,
                sa.or_(a.acknowledged_at.is_(None), a.acknowledged_at >= since),
            )
            .order_by(a.opened_at, a.id)
        )
        alarms = [
            AlarmEvidence(
                x.id,
                x.system_id,
                x.copy,
                x.snapshot_id,
                x.verdict,
                x.score,
                [str(y) for y in (x.reasons or [])],
                x.opened_at,
                x.acknowledged_by,
                x.acknowledged_at,
                x.note,
                x.acknowledged_at is None or x.acknowledged_at >= end,
            )
            for x in c.execute(q)
        ]

        # drills finished in the period, and each system's last passing drill before it
        q = sa.select(t.drills).where(d.system_id.in_(scope), d.finished_at >= since, d.finished_at < end)
        drills = c.execute(q.order_by(d.finished_at, d.id)).all()
        q = sa.select(d.system_id, sa.func.max(d.finished_at)).where(
            d.system_id.in_(scope), d.verdict == "pass", d.finished_at < since
        )
        drill_prev = {sid: x for sid, x in c.execute(q.group_by(d.system_id))}

        # notifications sent in the period
        who = n.system_id.in_(scope)
        if tenant is None:
            who = sa.or_(who, n.system_id.is_(None))
        q = sa.select(t.notifications).where(who, n.sent_at >= since, n.sent_at < end).order_by(n.sent_at, n.id)
        notes = [
            NotificationEvidence(x.sent_at, x.system_id, x.event, x.target, x.title, x.ok, x.error)
            for x in c.execute(q)
        ]
    return _Read(tenants, systems, repos, tracks, counts, snaps, flagged, alarms, drills, drill_prev, notes)


# ---- drill report signatures -------------------------------------------------------------------------------
def _report_checker(cfg: Config | None):
    """A function (drill row) -> (state, words): the signed report file in the agent's reports directory,
    found by its digest, verified against the agent's public key (<key>.pub) when there is one."""
    if cfg is None:
        return None
    from cermin.ops.drillreport import MAX_REPORT_BYTES, signed_bytes, verify_report

    workdir = cfg.agent.workdir
    reports = os.path.join(workdir, "reports")
    key_path = cfg.agent.key_file or os.path.join(workdir, "agent.key")
    trusted: list[bytes] = []
    try:
        from cryptography.hazmat.primitives import serialization

        with open(key_path + ".pub", "rb") as f:
            pub = serialization.load_pem_public_key(f.read())
        trusted = [pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)]
    except (OSError, ValueError, TypeError, AttributeError):
        trusted = []
    try:
        names = sorted(x for x in os.listdir(reports) if x.endswith(".json"))
    except OSError:
        names = []
    cache: dict[str, tuple[str, Any]] = {}

    def verified(name: str):
        if name not in cache:
            path = os.path.join(reports, name)
            try:
                with open(path, "rb") as f:
                    raw = f.read(MAX_REPORT_BYTES + 1)
            except OSError:
                cache[name] = ("", None)
                return cache[name]
            v = verify_report(raw, trusted, source=name)
            digest = ""
            try:
                obj = json.loads(raw)
                digest = hashlib.sha256(signed_bytes(obj["report"])).hexdigest()
            except (ValueError, KeyError, TypeError, RecursionError):
                pass
            cache[name] = (digest, v)
        return cache[name]

    def check(row) -> tuple[str, str]:
        if not row.report_digest:
            return "missing", "no signed report was recorded for this drill"
        tenant, _, name = row.system_id.partition("/")
        for fname in names:
            if f"-{tenant}-{name}-" not in fname:
                continue
            digest, v = verified(fname)
            if digest != row.report_digest or v is None:
                continue
            if not v.ok:
                return "invalid", f"{fname}: NOT VALID: {v.why}"
            if v.trusted:
                return "verified", f"{fname}: signature valid, by the agent's key {v.key_fingerprint}"
            return (
                "verified_untrusted",
                f"{fname}: intact and signed by {v.key_fingerprint} (no agent public key at {key_path}.pub to trust)",
            )
        return "missing", f"no report with this digest in {reports}"

    return check


# ---- building ----------------------------------------------------------------------------------------------
def build_evidence(
    store,
    cfg: Config | None = None,
    *,
    tenant: str | None = None,
    since: datetime,
    until: datetime,
    now: datetime | None = None,
    generated_by: str = "",
) -> Evidence:
    """The evidence of the fleet (tenant=None) or one tenant over [since, until). `cfg`: the agent's
    configuration, for retention rules and drill report signatures (None: the store alone)."""
    now = (now or store.clock()).astimezone(UTC)
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    if since >= until:
        raise EvidenceError("the period is empty")
    end = min(until, now)
    if end <= since:
        raise EvidenceError("the period starts after the document's time")
    # the store is read up to the document's time included (an event at `now` belongs to it)
    rd = _read(store, tenant, since, end if until <= now else now + timedelta(microseconds=1))
    if tenant is not None and tenant not in rd.tenants:
        raise EvidenceError(f"unknown tenant {tenant!r}")
    status = {st.id: st for st in store.status(now, tenant=tenant)}
    classes = {}
    if cfg is not None:
        import msgspec

        classes = {k: msgspec.structs.asdict(v.retention) for k, v in cfg.classes.items()}
        classes = {k: {x: y for x, y in v.items() if y} for k, v in classes.items()}
    check_report = _report_checker(cfg)

    drills_by: dict[str, list[Any]] = {}
    for x in rd.drills:
        drills_by.setdefault(x.system_id, []).append(x)
    by_system: dict[str, dict[str, list]] = {}
    for key, items in (("alarms", rd.alarms), ("flagged", rd.flagged), ("notifications", rd.notifications)):
        for item in items:
            if item.system_id is not None:
                by_system.setdefault(item.system_id, {}).setdefault(key, []).append(item)

    systems: list[SystemEvidence] = []
    for row in rd.systems:
        sid = row.id
        mine = by_system.get(sid, {})
        systems.append(
            _system(row, rd, status.get(sid), classes, drills_by.get(sid, []), mine, since, end, check_report)
        )

    tenants = []
    for tid, tname in rd.tenants.items():
        ts = [x for x in systems if x.tenant == tid]
        if ts or tenant is not None:
            tenants.append(TenantEvidence(tid, tname, ts))
    summary = _summary(systems)
    fleet_notes = [x for x in rd.notifications if x.system_id is None]
    scope_name = rd.tenants.get(tenant, tenant) if tenant is not None else "the whole fleet"
    return Evidence(
        scope=tenant or "fleet",
        scope_name=scope_name or "",
        since=since,
        until=until,
        evaluated_until=end,
        generated_at=now,
        generated_by=generated_by,
        cermin_version=__version__,
        configuration=cfg is not None,
        summary=summary,
        tenants=tenants,
        fleet_notifications=fleet_notes,
    )


def evidence_of_config(cfg: Config, tenant: str | None, since: datetime, until: datetime, now: datetime, who: str):
    """build_evidence over the state store the configuration names (opened read-only: no migration)."""
    from cermin.ops.agentview import state_url
    from cermin.ops.state import StateStore

    store = StateStore.open(state_url(cfg), upgrade=False)
    try:
        return build_evidence(store, cfg, tenant=tenant, since=since, until=until, now=now, generated_by=who)
    finally:
        store.close()


def _system(row, rd: _Read, st, classes, drills, mine, since, end, check_report) -> SystemEvidence:
    sid = row.id
    required = [x for x in (row.required or []) if isinstance(x, str)]
    copies_cfg = {k: v for k, v in (row.copies or {}).items() if isinstance(k, str) and isinstance(v, str)}
    reasons: list[str] = []
    codes: list[str] = []

    def fail(code: str, words: str) -> None:
        reasons.append(words)
        if code not in codes:
            codes.append(code)

    # the period is evaluated from its start, or from the system's first good backup in it
    primary = rd.tracks.get((sid, "data", "primary"), _Track())
    start = since if primary.prev is not None else primary.first
    if row.retired_at is not None and row.retired_at < end:
        end = max(since, row.retired_at)
    if start is None:
        fail("nobackup", "no good backup of the primary in the period or before it")
        start_eval = since
    else:
        start_eval = min(start, end)
    span = max(1.0, _s(start_eval, end))

    copies: list[CopyEvidence] = []
    for kind in COPY_KINDS:
        repo = copies_cfg.get(kind)
        if repo is None and kind not in required:
            continue
        tr = rd.tracks.get((sid, "data", kind), _Track())
        longest, out, had = _coverage(tr, start_eval, end, row.rpo_s)
        is_req = kind in required
        met = True
        what = "the primary" if kind == "primary" else f"the {kind} copy"
        if is_req and start is not None:
            if not had:
                met = False
                fail("rpo" if kind == "primary" else "copy", f"{what} received no good data in the period")
            elif longest is not None and longest > row.rpo_s:
                met = False
                pct = 100.0 * (1 - out / span)
                fail(
                    "rpo" if kind == "primary" else "copy",
                    f"{what} went {fmt_duration(longest, 2)} without newer data, over the RPO "
                    f"{fmt_duration(row.rpo_s)} (within it {pct:.1f}% of the time)",
                )
        runs = rd.counts.get((sid, "backup" if kind == "primary" else "mirror", kind), RunCounts())
        ver = rd.counts.get((sid, "verify", kind), RunCounts())
        vtr = rd.tracks.get((sid, "verify", kind), _Track())
        agg = rd.snaps.get((sid, kind), {"count": 0, "locked": 0, "min": None, "max": None, "verdicts": {}})
        now_copy = st.copies.get(kind) if st is not None else None
        repo_row = rd.repos.get(repo or "")
        copies.append(
            CopyEvidence(
                kind=kind,
                repository=repo or "",
                location=repo_row.url if repo_row is not None else "",
                required=is_req,
                immutable=kind == "immutable",
                good_runs=tr.count,
                failed_runs=runs.failed,
                first_good=tr.first,
                last_good=tr.last,
                newest_before=tr.prev,
                longest_gap_s=longest if had else None,
                out_of_rpo_s=out,
                within_rpo_pct=round(100.0 * (1 - min(out, span) / span), 2) if start is not None else 0.0,
                met=met,
                snapshots=agg["count"],
                snapshots_locked=agg["locked"],
                lock_until_min=agg["min"],
                lock_until_max=agg["max"],
                lock_until_newest=now_copy.lock_until if now_copy is not None else None,
                verdicts=dict(sorted(agg["verdicts"].items())),
                verifies_ok=ver.ok + ver.warning,
                verifies_failed=ver.failed,
                last_verify=vtr.last,
            )
        )

    # verification of the primary
    vtr = rd.tracks.get((sid, "verify", "primary"), _Track())
    vlong, _vout, vhad = _coverage(vtr, start_eval, end, row.verify_every_s)
    if not vhad:
        fail("verify", "the primary was never verified")
    elif vlong is not None and vlong > row.verify_every_s:
        fail(
            "verify",
            f"{fmt_duration(vlong, 2)} without a verification of the primary, over the cycle "
            f"{fmt_duration(row.verify_every_s)}",
        )

    # drills
    passed = [x.finished_at for x in drills if x.verdict == "pass"]
    dtr = _events_gaps(passed, rd.drill_prev.get(sid), row.drill_every_s)
    dlong, _dout, dhad = _coverage(dtr, start_eval, end, row.drill_every_s)
    if not dhad:
        fail("drill", "never drilled")
    elif dlong is not None and dlong > row.drill_every_s:
        fail(
            "drill",
            f"{fmt_duration(dlong, 2)} without a passing drill, over the cycle {fmt_duration(row.drill_every_s)}",
        )
    failed = [x for x in drills if x.verdict != "pass"]
    slow = [x for x in drills if x.verdict == "pass" and x.rto_measured_s > row.rto_s]
    if failed:
        n = len(failed)
        fail("drill_failed", f"{n} drill{'s' if n != 1 else ''} failed")
    if slow:
        n = len(slow)
        fail("drill_failed", f"{n} drill{'s' if n != 1 else ''} took longer than the RTO {fmt_duration(row.rto_s)}")

    alarms = mine.get("alarms", [])
    left = [x for x in alarms if x.open_at_end]
    if left:
        n = len(left)
        fail("alarm", f"{n} guard alarm{'s' if n != 1 else ''} open at the end of the period")

    drill_rows = []
    for x in drills:
        if check_report is not None:
            sig, note = check_report(x)
        elif x.signature_ok is not None:
            sig = "store_ok" if x.signature_ok else "store_bad"
            note = "the agent recorded the signature as " + ("valid" if x.signature_ok else "NOT valid")
        else:
            sig, note = "not_checked", "not checked: give the agent's configuration to verify the signed report"
        drill_rows.append(
            DrillEvidence(
                id=x.id,
                system_id=sid,
                copy=x.copy,
                snapshot_id=x.snapshot_id,
                started_at=x.started_at,
                finished_at=x.finished_at,
                rto_measured_s=x.rto_measured_s,
                rto_target_s=x.rto_target_s,
                verdict=x.verdict,
                within_rto=x.rto_measured_s <= x.rto_target_s,
                files=x.files,
                bytes=x.bytes,
                error=x.error,
                report_id=x.report_id,
                report_digest=x.report_digest,
                signature=sig,
                signature_note=note,
            )
        )

    backups = rd.counts.get((sid, "backup", "primary"), RunCounts("backup", "primary"))
    verifications = rd.counts.get((sid, "verify", "primary"), RunCounts("verify", "primary"))
    runs = [v for (x, _k, _c), v in sorted(rd.counts.items()) if x == sid]
    days = max(_s(since, end) / 86400.0, 1e-9)
    newest = max(filter(None, (primary.last, primary.prev)), default=None)
    return SystemEvidence(
        id=sid,
        tenant=row.tenant,
        name=row.name,
        policy=row.policy,
        description=row.description,
        hostname=row.hostname,
        retired_at=row.retired_at,
        rpo_s=row.rpo_s,
        rto_s=row.rto_s,
        copies_required=required,
        drill_every_s=row.drill_every_s,
        verify_every_s=row.verify_every_s,
        priority=row.priority,
        retention=classes.get(row.policy),
        evaluated_from=start,
        met_period=not reasons,
        reasons_period=reasons,
        reason_codes=codes,
        meets_now=st.meets_class if st is not None else None,
        reasons_now=list(st.reasons) if st is not None else ["retired"],
        backups=backups,
        backups_per_day=round((backups.ok + backups.warning) / days, 2),
        last_good_backup=newest,
        verifications=verifications,
        runs=runs,
        longest_verify_gap_s=vlong if vhad else None,
        longest_drill_gap_s=dlong if dhad else None,
        copies=copies,
        drills=drill_rows,
        alarms=alarms,
        flagged=mine.get("flagged", []),
        notifications=mine.get("notifications", []),
    )


def _summary(systems: list[SystemEvidence]) -> Summary:
    reasons: dict[str, int] = {}
    for s in systems:
        for code in s.reason_codes:
            reasons[code] = reasons.get(code, 0) + 1
    order = list(REASONS)
    reasons = dict(sorted(reasons.items(), key=lambda kv: order.index(kv[0])))
    alarms = [a for s in systems for a in s.alarms]
    drills = [d for s in systems for d in s.drills]
    return Summary(
        systems=len(systems),
        met_period=sum(1 for s in systems if s.met_period),
        meets_now=sum(1 for s in systems if s.meets_now),
        reasons=reasons,
        backups_good=sum(s.backups.ok + s.backups.warning for s in systems),
        backups_failed=sum(s.backups.failed for s in systems),
        verifications_good=sum(s.verifications.ok + s.verifications.warning for s in systems),
        drills=len(drills),
        drills_passed=sum(1 for d in drills if d.verdict == "pass"),
        alarms=len(alarms),
        alarms_acknowledged=sum(1 for a in alarms if a.acknowledged_at is not None),
        alarms_open_at_end=sum(1 for a in alarms if a.open_at_end),
        flagged_snapshots=sum(len(s.flagged) for s in systems),
        notifications=sum(len(s.notifications) for s in systems),
    )
