"""The evidence document (ops/evidence.py builds it): its period, its plain-data records and their
canonical JSON, whose SHA-256 is the digest every format prints."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from cermin.errors import CerminError, UsageError
from cermin.ops.staterows import _iso

FORMAT = "cermin-evidence"
VERSION = 1
MAX_PERIOD = timedelta(days=3 * 366)  # at most three years in one document
DEFAULT_DAYS = 30
_DAY = timedelta(days=1)

# why a system did not meet its policy over the period: code -> (one, many) words for the summary
REASONS = {
    "nobackup": ("system without a good backup", "systems without a good backup"),
    "rpo": ("backup gap longer than the RPO", "backup gaps longer than the RPO"),
    "copy": ("copy missing or behind the RPO", "copies missing or behind the RPO"),
    "verify": ("verification gap", "verification gaps"),
    "drill": ("drill overdue or never done", "drills overdue or never done"),
    "drill_failed": ("failed or slow drill", "failed or slow drills"),
    "alarm": ("guard alarm left open", "guard alarms left open"),
}


class EvidenceError(CerminError):
    """A bad period or scope (one line)."""


class PeriodError(UsageError):
    """The period asked for cannot be read or is out of bounds (one line)."""


# ---- the period --------------------------------------------------------------------------------------------
def _parse_time(value: str, what: str, end: bool) -> datetime:
    v = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        try:
            d = date.fromisoformat(v)
        except ValueError:
            raise PeriodError(f"bad {what} {value!r}: not a date (YYYY-MM-DD)") from None
        start = datetime.combine(d, time(0), UTC)
        return start + _DAY if end else start  # a date given as the end is included whole
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise PeriodError(f"bad {what} {value!r}: use an ISO date (YYYY-MM-DD) or date and time") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def parse_period(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """(since, until) from ISO dates or datetimes: `until` as a date includes that whole day (UTC); the
    default is the last 30 whole days, today included. since < until, at most three years, not starting in
    the future. A bad value is a PeriodError with one line."""
    today = datetime.combine(now.astimezone(UTC).date(), time(0), UTC)
    end = _parse_time(until, "until", True) if until else today + _DAY
    start = _parse_time(since, "since", False) if since else end - DEFAULT_DAYS * _DAY
    if start.year < 2000 or end.year > 9000:
        raise PeriodError("the period must lie between the years 2000 and 9000")
    if start >= end:
        raise PeriodError(f"the period is empty: since {start:%Y-%m-%d %H:%M} is not before until {end:%Y-%m-%d %H:%M}")
    if end - start > MAX_PERIOD:
        raise PeriodError(f"the period is {(end - start).days} days long: at most three years (1098 days)")
    if start > now:
        raise PeriodError(f"the period starts in the future ({start:%Y-%m-%d %H:%M} UTC)")
    return start, end


def period_label(since: datetime, until: datetime) -> str:
    """'2026-02-01 – 2026-03-02' for whole days (until exclusive), else with times."""
    whole = since.time() == time(0) and until.time() == time(0)
    if whole:
        return f"{since:%Y-%m-%d} – {until - _DAY:%Y-%m-%d}"
    return f"{since:%Y-%m-%d %H:%M} – {until:%Y-%m-%d %H:%M} UTC"


def period_slug(since: datetime, until: datetime) -> str:
    """'20260201-20260302' (whole days, the last one included) for file names."""
    if since.time() == time(0) and until.time() == time(0):
        return f"{since:%Y%m%d}-{until - _DAY:%Y%m%d}"
    return f"{since:%Y%m%dT%H%M}-{until:%Y%m%dT%H%M}"


# ---- the document ------------------------------------------------------------------------------------------
@dataclass
class CopyEvidence:
    kind: str  # primary | immutable | mirror
    repository: str
    location: str  # the repository's URL without credentials ('' when the store has none)
    required: bool
    immutable: bool
    good_runs: int  # good backups (primary) or mirrors into this copy in the period
    failed_runs: int
    first_good: datetime | None  # data time of the first / last good data that reached it in the period
    last_good: datetime | None
    newest_before: datetime | None  # the newest good data it held before the period
    longest_gap_s: float | None  # the longest time it held no data newer than that, within the period
    out_of_rpo_s: float | None  # how long its newest data was older than the RPO, within the period
    within_rpo_pct: float | None  # the share of the period its data was within the RPO
    met: bool  # always within the RPO (a copy the class does not require: True)
    snapshots: int  # snapshots taken in the period and seen in this copy (forgotten ones included)
    snapshots_locked: int  # ... with an Object Lock retention seen
    lock_until_min: datetime | None  # the earliest / latest retention among them
    lock_until_max: datetime | None
    lock_until_newest: datetime | None  # the retention of its newest snapshot now
    verdicts: dict[str, int]  # guard verdicts of those snapshots
    verifies_ok: int
    verifies_failed: int
    last_verify: datetime | None  # the end of the last successful verification in the period


@dataclass
class DrillEvidence:
    id: int
    system_id: str
    copy: str
    snapshot_id: str
    started_at: datetime
    finished_at: datetime
    rto_measured_s: float
    rto_target_s: float
    verdict: str  # pass | fail
    within_rto: bool
    files: int | None
    bytes: int | None
    error: str | None
    report_id: str | None
    report_digest: str | None
    signature: str  # verified | verified_untrusted | invalid | missing | not_checked | store_ok | store_bad
    signature_note: str  # in words


@dataclass
class AlarmEvidence:
    id: int
    system_id: str
    copy: str
    snapshot_id: str
    verdict: str
    score: float | None
    reasons: list[str]
    opened_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    note: str | None
    open_at_end: bool  # not acknowledged by the end of the period


@dataclass
class FlaggedSnapshot:
    system_id: str
    copy: str
    snapshot_id: str
    time: datetime
    verdict: str
    score: float | None
    gone_at: datetime | None


@dataclass
class NotificationEvidence:
    sent_at: datetime
    system_id: str | None
    event: str
    target: str
    title: str
    ok: bool
    error: str | None


@dataclass
class RunCounts:
    kind: str = ""  # backup, mirror, verify, prune, forget, lock_extend, drill, hook
    copy: str = ""  # '' when the run is not about one copy
    ok: int = 0
    warning: int = 0
    failed: int = 0
    skipped: int = 0
    running: int = 0
    last_good_at: datetime | None = None  # started_at of the last good one
    last_failed_at: datetime | None = None
    last_error: str | None = None


@dataclass
class SystemEvidence:
    id: str
    tenant: str
    name: str
    policy: str  # the class
    description: str
    hostname: str
    retired_at: datetime | None
    rpo_s: int
    rto_s: int
    copies_required: list[str]
    drill_every_s: int
    verify_every_s: int
    priority: int
    retention: dict[str, Any] | None  # forget's keep rules, from the configuration (None: not given)
    evaluated_from: datetime | None  # the period's start, or the first good backup in it
    met_period: bool
    reasons_period: list[str]
    reason_codes: list[str]
    meets_now: bool | None  # None: retired (no status now)
    reasons_now: list[str]
    backups: RunCounts
    backups_per_day: float | None
    last_good_backup: datetime | None  # data time of the newest good primary data at the period's end
    verifications: RunCounts
    runs: list[RunCounts]  # every kind of run in the period, per copy
    longest_verify_gap_s: float | None
    longest_drill_gap_s: float | None
    copies: list[CopyEvidence] = field(default_factory=list)
    drills: list[DrillEvidence] = field(default_factory=list)
    alarms: list[AlarmEvidence] = field(default_factory=list)
    flagged: list[FlaggedSnapshot] = field(default_factory=list)
    notifications: list[NotificationEvidence] = field(default_factory=list)


@dataclass
class TenantEvidence:
    id: str
    name: str
    systems: list[SystemEvidence]

    @property
    def met(self) -> int:
        return sum(1 for s in self.systems if s.met_period)


@dataclass
class Summary:
    systems: int
    met_period: int
    meets_now: int
    reasons: dict[str, int]  # REASONS code -> systems
    backups_good: int
    backups_failed: int
    verifications_good: int
    drills: int
    drills_passed: int
    alarms: int  # relevant to the period: opened in it, or open during it
    alarms_acknowledged: int
    alarms_open_at_end: int
    flagged_snapshots: int
    notifications: int

    def sentence(self) -> str:
        """'5 of 7 systems met their policy over the period; 2 did not, because: ...'."""
        s = "" if self.systems == 1 else "s"
        head = f"{self.met_period} of {self.systems} system{s} met their policy over the period"
        failing = self.systems - self.met_period
        if not failing:
            return head + "."
        parts = []
        for code, n in self.reasons.items():
            one, many = REASONS[code]
            parts.append(f"{n} {one if n == 1 else many}")
        return f"{head}; {failing} did not, because: " + ", ".join(parts) + "."


@dataclass
class Evidence:
    scope: str  # "fleet" or a tenant id
    scope_name: str
    since: datetime
    until: datetime  # exclusive
    evaluated_until: datetime  # min(until, generated_at): nothing after the document was made is known
    generated_at: datetime
    generated_by: str
    cermin_version: str
    configuration: bool  # the configuration was read (retention, drill report signatures)
    summary: Summary
    tenants: list[TenantEvidence]
    fleet_notifications: list[NotificationEvidence]  # about the agent or the fleet (fleet scope only)
    format: str = FORMAT
    version: int = VERSION

    @property
    def systems(self) -> list[SystemEvidence]:
        return [s for tn in self.tenants for s in tn.systems]

    @property
    def period(self) -> str:
        return period_label(self.since, self.until)

    def to_json(self) -> dict:
        """The document as JSON types (times RFC 3339 UTC), without its digest."""
        d = asdict(self)
        return _iso(_plain(d))

    def canonical(self) -> bytes:
        return canonical(self.to_json())

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON: the number an auditor cites."""
        if not hasattr(self, "_digest"):
            self._digest = hashlib.sha256(self.canonical()).hexdigest()
        return self._digest

    def filename(self, ext: str, table: str | None = None) -> str:
        """cermin-evidence-<scope>-<since>-<until>[-<table>].<ext>"""
        extra = f"-{table}" if table else ""
        return f"cermin-evidence-{self.scope}-{period_slug(self.since, self.until)}{extra}.{ext}"


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _plain(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 3)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
