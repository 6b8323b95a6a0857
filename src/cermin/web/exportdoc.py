"""The evidence document (cermin.ops.evidence) in the formats an auditor files: CSV tables, a ZIP of all of
them, the canonical JSON, a printable HTML page and a PDF (docs/dashboard.md "Evidence export").

- CSV: one table per file, one row per thing (`TABLES`: systems, copies, runs, drills, alarms, flagged,
  notifications), times in UTC as `YYYY-MM-DD HH:MM:SS` and durations in seconds, so a spreadsheet sorts
  and sums them; every row ends with the document's digest. A text cell that a spreadsheet would run as a
  formula (starting with = + - @ or a control character) is prefixed with `'`.
- ZIP: every table, the JSON and a README.txt naming the scope, period and digest.
- JSON: exactly the canonical bytes the digest is computed over (`sha256sum` of the file is the digest).
- HTML: one self-contained page (its style inline, no script, nothing fetched), print CSS with a page break
  before each tenant; the summary first. The dashboard sends it as a download: its own
  Content-Security-Policy forbids inline styles in pages it shows.
- PDF: that page rendered by WeasyPrint (the optional extra `pdf`); `pdf_unavailable()` says why not.

The CLI (`cermin export evidence`) and the web routes (web/export.py) both use these functions.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime

from cermin.ops.config import fmt_duration
from cermin.ops.evidencedoc import REASONS, Evidence

TABLES = ("systems", "copies", "runs", "drills", "alarms", "flagged", "notifications")
FORMATS = ("csv", "zip", "json", "html", "pdf")
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "zip": "application/zip",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}
PDF_HINT = "pip install 'cermin[pdf]'"


# ---- cells -------------------------------------------------------------------------------------------------
def _t(v: datetime | None) -> str:
    return "" if v is None else v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _b(v: bool | None) -> str:
    return "" if v is None else ("yes" if v else "no")


def _n(v) -> str | int | float:
    return "" if v is None else v


def _cell(v) -> str | int | float:
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r", "\n"):
        return "'" + v  # a spreadsheet would run it as a formula
    return v


# ---- CSV tables --------------------------------------------------------------------------------------------
def _systems(ev: Evidence) -> Iterable[dict]:
    for s in ev.systems:
        primary = next((c for c in s.copies if c.kind == "primary"), None)
        passed = sum(1 for d in s.drills if d.verdict == "pass")
        yield {
            "tenant": s.tenant,
            "system": s.name,
            "class": s.policy,
            "rpo_s": s.rpo_s,
            "rto_s": s.rto_s,
            "copies_required": " ".join(s.copies_required),
            "drill_every_s": s.drill_every_s,
            "verify_every_s": s.verify_every_s,
            "retention": retention_text(s.retention),
            "evaluated_from_utc": _t(s.evaluated_from),
            "met_policy_over_period": _b(s.met_period),
            "why_not_over_period": "; ".join(s.reasons_period),
            "meets_policy_now": _b(s.meets_now),
            "why_not_now": "; ".join(s.reasons_now),
            "backups_good": s.backups.ok + s.backups.warning,
            "backups_failed": s.backups.failed,
            "backups_per_day": _n(s.backups_per_day),
            "last_good_backup_utc": _t(s.last_good_backup),
            "longest_backup_gap_s": _n(primary.longest_gap_s if primary else None),
            "within_rpo_pct": _n(primary.within_rpo_pct if primary else None),
            "verifications_good": s.verifications.ok + s.verifications.warning,
            "verifications_failed": s.verifications.failed,
            "longest_verify_gap_s": _n(s.longest_verify_gap_s),
            "drills": len(s.drills),
            "drills_passed": passed,
            "longest_drill_gap_s": _n(s.longest_drill_gap_s),
            "alarms": len(s.alarms),
            "alarms_open_at_end": sum(1 for a in s.alarms if a.open_at_end),
            "flagged_snapshots": len(s.flagged),
            "notifications": len(s.notifications),
        }


def _copies(ev: Evidence) -> Iterable[dict]:
    for s in ev.systems:
        for c in s.copies:
            yield {
                "tenant": s.tenant,
                "system": s.name,
                "copy": c.kind,
                "repository": c.repository,
                "location": c.location,
                "required": _b(c.required),
                "immutable": _b(c.immutable),
                "good_runs": c.good_runs,
                "failed_runs": c.failed_runs,
                "first_good_data_utc": _t(c.first_good),
                "last_good_data_utc": _t(c.last_good),
                "newest_before_period_utc": _t(c.newest_before),
                "longest_gap_s": _n(c.longest_gap_s),
                "out_of_rpo_s": _n(c.out_of_rpo_s),
                "within_rpo_pct": _n(c.within_rpo_pct),
                "met_rpo": _b(c.met),
                "snapshots": c.snapshots,
                "snapshots_locked": c.snapshots_locked,
                "lock_until_earliest_utc": _t(c.lock_until_min),
                "lock_until_latest_utc": _t(c.lock_until_max),
                "lock_until_newest_snapshot_utc": _t(c.lock_until_newest),
                "guard_verdicts": " ".join(f"{k}={v}" for k, v in c.verdicts.items()),
                "verifications_good": c.verifies_ok,
                "verifications_failed": c.verifies_failed,
                "last_verification_utc": _t(c.last_verify),
            }


def _runs(ev: Evidence) -> Iterable[dict]:
    for s in ev.systems:
        for r in s.runs:
            yield {
                "tenant": s.tenant,
                "system": s.name,
                "kind": r.kind,
                "copy": r.copy,
                "ok": r.ok,
                "warning": r.warning,
                "failed": r.failed,
                "skipped": r.skipped,
                "running": r.running,
                "last_good_started_utc": _t(r.last_good_at),
                "last_failed_started_utc": _t(r.last_failed_at),
                "last_error": r.last_error or "",
            }


def _drills(ev: Evidence) -> Iterable[dict]:
    for s in ev.systems:
        for d in s.drills:
            yield {
                "tenant": s.tenant,
                "system": s.name,
                "drill_id": d.id,
                "started_utc": _t(d.started_at),
                "finished_utc": _t(d.finished_at),
                "copy": d.copy,
                "snapshot": d.snapshot_id,
                "rto_measured_s": d.rto_measured_s,
                "rto_target_s": d.rto_target_s,
                "within_rto": _b(d.within_rto),
                "verdict": d.verdict,
                "files": _n(d.files),
                "bytes": _n(d.bytes),
                "error": d.error or "",
                "report_id": d.report_id or "",
                "report_digest": d.report_digest or "",
                "signature": d.signature,
                "signature_note": d.signature_note,
            }


def _alarms(ev: Evidence) -> Iterable[dict]:
    for s in ev.systems:
        for a in s.alarms:
            yield {
                "tenant": s.tenant,
                "system": s.name,
                "alarm_id": a.id,
                "opened_utc": _t(a.opened_at),
                "copy": a.copy,
                "snapshot": a.snapshot_id,
                "verdict": a.verdict,
                "score": _n(a.score),
                "reasons": "; ".join(a.reasons),
                "acknowledged_by": a.acknowledged_by or "",
                "acknowledged_utc": _t(a.acknowledged_at),
                "note": a.note or "",
                "open_at_end": _b(a.open_at_end),
            }


def _flagged(ev: Evidence) -> Iterable[dict]:
    for s in ev.systems:
        for f in s.flagged:
            yield {
                "tenant": s.tenant,
                "system": s.name,
                "copy": f.copy,
                "snapshot": f.snapshot_id,
                "snapshot_time_utc": _t(f.time),
                "verdict": f.verdict,
                "score": _n(f.score),
                "forgotten_utc": _t(f.gone_at),
            }


def _notifications(ev: Evidence) -> Iterable[dict]:
    rows = [(s.tenant, s.name, n) for s in ev.systems for n in s.notifications]
    rows += [("", "", n) for n in ev.fleet_notifications]
    rows.sort(key=lambda x: x[2].sent_at)
    for tenant, name, n in rows:
        yield {
            "tenant": tenant,
            "system": name,
            "sent_utc": _t(n.sent_at),
            "event": n.event,
            "target": n.target,
            "title": n.title,
            "delivered": _b(n.ok),
            "error": n.error or "",
        }


_ROWS = {
    "systems": _systems,
    "copies": _copies,
    "runs": _runs,
    "drills": _drills,
    "alarms": _alarms,
    "flagged": _flagged,
    "notifications": _notifications,
}


COLUMNS: dict[str, tuple[str, ...]] = {  # the order of each CSV's columns (a test checks the rows match)
    "systems": (
        "tenant",
        "system",
        "class",
        "rpo_s",
        "rto_s",
        "copies_required",
        "drill_every_s",
        "verify_every_s",
        "retention",
        "evaluated_from_utc",
        "met_policy_over_period",
        "why_not_over_period",
        "meets_policy_now",
        "why_not_now",
        "backups_good",
        "backups_failed",
        "backups_per_day",
        "last_good_backup_utc",
        "longest_backup_gap_s",
        "within_rpo_pct",
        "verifications_good",
        "verifications_failed",
        "longest_verify_gap_s",
        "drills",
        "drills_passed",
        "longest_drill_gap_s",
        "alarms",
        "alarms_open_at_end",
        "flagged_snapshots",
        "notifications",
    ),
    "copies": (
        "tenant",
        "system",
        "copy",
        "repository",
        "location",
        "required",
        "immutable",
        "good_runs",
        "failed_runs",
        "first_good_data_utc",
        "last_good_data_utc",
        "newest_before_period_utc",
        "longest_gap_s",
        "out_of_rpo_s",
        "within_rpo_pct",
        "met_rpo",
        "snapshots",
        "snapshots_locked",
        "lock_until_earliest_utc",
        "lock_until_latest_utc",
        "lock_until_newest_snapshot_utc",
        "guard_verdicts",
        "verifications_good",
        "verifications_failed",
        "last_verification_utc",
    ),
    "runs": (
        "tenant",
        "system",
        "kind",
        "copy",
        "ok",
        "warning",
        "failed",
        "skipped",
        "running",
        "last_good_started_utc",
        "last_failed_started_utc",
        "last_error",
    ),
    "drills": (
        "tenant",
        "system",
        "drill_id",
        "started_utc",
        "finished_utc",
        "copy",
        "snapshot",
        "rto_measured_s",
        "rto_target_s",
        "within_rto",
        "verdict",
        "files",
        "bytes",
        "error",
        "report_id",
        "report_digest",
        "signature",
        "signature_note",
    ),
    "alarms": (
        "tenant",
        "system",
        "alarm_id",
        "opened_utc",
        "copy",
        "snapshot",
        "verdict",
        "score",
        "reasons",
        "acknowledged_by",
        "acknowledged_utc",
        "note",
        "open_at_end",
    ),
    "flagged": (
        "tenant",
        "system",
        "copy",
        "snapshot",
        "snapshot_time_utc",
        "verdict",
        "score",
        "forgotten_utc",
    ),
    "notifications": (
        "tenant",
        "system",
        "sent_utc",
        "event",
        "target",
        "title",
        "delivered",
        "error",
    ),
}


def to_csv(ev: Evidence, table: str = "systems") -> bytes:
    """One table as CSV (UTF-8 with a BOM, so spreadsheets read it as UTF-8), each row ending with the
    document's digest."""
    if table not in _ROWS:
        raise ValueError(f"unknown table {table!r} (tables: {', '.join(TABLES)})")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    columns = COLUMNS[table]
    w.writerow([*columns, "evidence_digest"])
    for row in _ROWS[table](ev):
        w.writerow([*(_cell(row[c]) for c in columns), ev.digest])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def readme_text(ev: Evidence) -> str:
    tables = "\n".join(f"  {ev.filename('csv', t)}" for t in TABLES)
    return (
        f"cermin evidence: {ev.scope_name} ({ev.scope})\n"
        f"period: {ev.period} (UTC; evaluated up to {_t(ev.evaluated_until)})\n"
        f"generated: {_t(ev.generated_at)} UTC by {ev.generated_by or 'unknown'} (cermin {ev.cermin_version})\n"
        f"digest: sha256:{ev.digest}\n\n"
        f"{ev.summary.sentence()}\n\n"
        f"The digest is the SHA-256 of {ev.filename('json')} (its canonical JSON): `sha256sum` it to check.\n"
        f"Every CSV row ends with the same digest. Tables:\n{tables}\n"
    )


def to_zip(ev: Evidence) -> bytes:
    """Every table, the canonical JSON and a README, in one ZIP (fixed timestamps: the same document
    gives the same archive)."""
    buf = io.BytesIO()
    stamp = ev.generated_at.astimezone(UTC).timetuple()[:6]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)

        add("README.txt", readme_text(ev).encode())
        add(ev.filename("json"), ev.canonical())
        for table in TABLES:
            add(ev.filename("csv", table), to_csv(ev, table))
    return buf.getvalue()


def to_json(ev: Evidence) -> bytes:
    """The canonical JSON: its SHA-256 is the digest."""
    return ev.canonical()


# ---- HTML and PDF ------------------------------------------------------------------------------------------
def retention_text(r: dict | None) -> str:
    if not r:
        return "" if r is None else "none"
    return ", ".join(f"{k} {v}" for k, v in r.items())


def _dur(v: float | None, parts: int = 2) -> str:
    return "—" if v is None else fmt_duration(v, parts)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}%"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    from cermin.util import fmt_bytes

    return fmt_bytes(n)


def to_html(ev: Evidence, *, for_pdf: bool = False) -> str:
    """The printable report: one self-contained page."""
    from cermin.web.render import make_templates

    env = make_templates().env
    return env.get_template("evidence.html").render(
        ev=ev,
        digest=ev.digest,
        reasons=REASONS,
        for_pdf=for_pdf,
        t=_t,
        dur=_dur,
        pct=_pct,
        size=_size,
        yesno=_b,
        retention=retention_text,
        tables=TABLES,
    )


def pdf_unavailable() -> str | None:
    """None when PDFs can be made, else why not (one line naming the extra to install)."""
    try:
        import weasyprint  # noqa: F401
    except ImportError:
        return f"PDF export needs WeasyPrint: {PDF_HINT}"
    except Exception as e:  # noqa: BLE001 - WeasyPrint raises OSError & co. when pango is missing
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        return f"PDF export needs WeasyPrint and the pango library ({first}): {PDF_HINT} and install pango"
    return None


def to_pdf(ev: Evidence) -> bytes:
    """The HTML report as a PDF (WeasyPrint; nothing is fetched: the page holds everything)."""
    import weasyprint

    def no_fetch(url: str, *args, **kwargs):
        raise ValueError(f"the evidence report fetches nothing ({url[:60]})")

    html = weasyprint.HTML(string=to_html(ev, for_pdf=True), url_fetcher=no_fetch)
    return html.write_pdf()


def render(ev: Evidence, fmt: str, table: str | None = None) -> bytes:
    """The document in one format (FORMATS); `table` for csv (default systems)."""
    if fmt == "csv":
        return to_csv(ev, table or "systems")
    if fmt == "zip":
        return to_zip(ev)
    if fmt == "json":
        return to_json(ev)
    if fmt == "html":
        return to_html(ev).encode("utf-8")
    if fmt == "pdf":
        return to_pdf(ev)
    raise ValueError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")


def filename(ev: Evidence, fmt: str, table: str | None = None) -> str:
    if fmt == "csv":
        return ev.filename("csv", table or "systems")
    return ev.filename(fmt)
