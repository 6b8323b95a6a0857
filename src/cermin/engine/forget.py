"""`forget`: decide which snapshots a retention policy keeps, per group, with the reasons why.

The decision is a plan (printable with --dry-run) before anything is removed. Snapshots protected
until a future date (`extra["protected_until"]`) are always kept.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cermin.backend.base import Kind
from cermin.errors import ObjectLocked, ObjectNotFound, UsageError
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef
from cermin.util import parse_rfc3339


@dataclass
class KeepPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: str | None = None  # e.g. "1y6m", "30d", "12h"
    tags: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        if any(c < 0 for c in counts):
            raise UsageError("--keep-* counts cannot be negative")
        return not (any(counts) or self.within or any(t.strip(",") for t in self.tags))


_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


def subtract_duration(t: datetime, spec: str) -> datetime:
    """Calendar-aware t - spec for specs like '1y2m3d4h' (months clamp to the month's last day)."""
    m = _DURATION.match(spec or "")
    if not spec or not m:
        raise UsageError(f"bad duration {spec!r}: use e.g. 1y6m, 30d, 12h")
    years, months, days, hours = (int(x or 0) for x in m.groups())
    total = t.year * 12 + (t.month - 1) - years * 12 - months
    y, mo = divmod(total, 12)
    mo += 1
    day = min(t.day, calendar.monthrange(y, mo)[1])
    return t.replace(year=y, month=mo, day=day) - timedelta(days=days, hours=hours)


_BUCKETS = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
]


@dataclass
class Decision:
    ref: SnapshotRef
    keep: bool
    reasons: list[str]


@dataclass
class ForgetGroup:
    key: dict
    decisions: list[Decision]  # newest first

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]


def group_key(ref: SnapshotRef, group_by: tuple[str, ...]) -> tuple:
    s = ref.snapshot
    parts = []
    for g in group_by:
        if g == "host":
            parts.append(("host", s.hostname))
        elif g == "paths":
            parts.append(("paths", tuple(sorted(p.decode("utf-8", "backslashreplace") for p in s.paths))))
        elif g == "tags":
            parts.append(("tags", tuple(sorted(s.tags))))
        elif g:
            raise UsageError(f"bad --group-by {g!r}: use host, paths, tags")
    return tuple(parts)


def apply_policy(refs: list[SnapshotRef], policy: KeepPolicy, now: datetime | None = None) -> list[Decision]:
    """Decisions for one group; `refs` in any order, decisions newest first."""
    now = now or datetime.now(UTC)
    snaps = sorted(refs, key=lambda r: (r.snapshot.time, r.id), reverse=True)
    times = [parse_rfc3339(r.snapshot.time) for r in snaps]
    within_cut = subtract_duration(times[0], policy.within) if policy.within and snaps else None
    remaining = {name: getattr(policy, name) for name, _ in _BUCKETS}
    last_bucket: dict[str, tuple | None] = {name: None for name, _ in _BUCKETS}
    out = []
    for i, (ref, t) in enumerate(zip(snaps, times, strict=True)):
        reasons = []
        if i < policy.last:
            reasons.append("last snapshot" if policy.last == 1 else f"within last {policy.last}")
        for name, bucket in _BUCKETS:
            b = bucket(t)
            if remaining[name] > 0 and b != last_bucket[name]:
                remaining[name] -= 1
                last_bucket[name] = b
                reasons.append(f"{name} snapshot")
        if within_cut is not None and t >= within_cut:
            reasons.append(f"within {policy.within} of the newest")
        if any(tg.strip(",") and set(tg.split(",")) - {""} <= set(ref.snapshot.tags) for tg in policy.tags):
            reasons.append("has a kept tag")
        protected = ref.snapshot.extra.get("protected_until")
        if isinstance(protected, str) and parse_rfc3339(protected) > now:
            reasons.append(f"protected until {protected}")
        out.append(Decision(ref, bool(reasons), reasons))
    return out


def plan_forget(
    refs: list[SnapshotRef],
    policy: KeepPolicy,
    group_by: tuple[str, ...] = ("host", "paths"),
    now: datetime | None = None,
) -> list[ForgetGroup]:
    if policy.empty():
        raise UsageError("no retention policy given: refusing to forget everything (use --keep-* options)")
    groups: dict[tuple, list[SnapshotRef]] = {}
    for r in refs:
        groups.setdefault(group_key(r, group_by), []).append(r)
    return [ForgetGroup(dict(k), apply_policy(v, policy, now)) for k, v in sorted(groups.items())]


def remove_snapshots(repo: Repository, ids: list[str]) -> tuple[list[str], list[str]]:
    """(removed, locked): snapshots under Object Lock retention stay until it lapses."""
    removed, locked = [], []
    for sid in ids:
        try:
            repo.backend.remove(Kind.SNAPSHOT, sid)
            removed.append(sid)
        except ObjectNotFound:
            pass
        except ObjectLocked:
            locked.append(sid)
    return removed, locked
