"""`forget`: decide which snapshots a retention policy keeps, per group, with the reasons why.

The decision is a plan (printable with --dry-run) before anything is removed. Policy is enforced
here, not in a command, because the agent and the dashboard call this library directly:
- protected snapshots (protection records in aux/, or `extra["protected_until"]`) are always kept,
  and `remove_snapshots` refuses them whatever list it is given;
- snapshots dated beyond the clock-skew allowance are kept and left out of the policy (a planted
  snapshot dated 2999 must neither count as "last" nor move the `--keep-within` window), and the
  window is measured back from the newest trusted snapshot, never from after now;
- a snapshot the storage refuses to delete (Object Lock) gets a "forgotten" aux record (tombstone)
  so listings, prune and lock maintenance stop treating it as live and it can lapse;
- the guard (cermin.guard.verdict): a policy never removes the newest clean snapshot of a host/paths
  group (if none is clean: the newest one made before the guard), nor does anything — by id either —
  while an alarm is open in that group; and while an alarm is open only clean snapshots count toward
  the keep rules — suspicious and infected ones are kept without using up a slot (docs/guard.md).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cermin.backend.base import Kind
from cermin.engine.results import STDERR, Line, answer, note, warning, warning_json
from cermin.errors import EXIT_APPROVAL, ApprovalRequired, CerminError, ObjectLocked, ObjectNotFound, UsageError
from cermin.format import records
from cermin.format.records import AuxRecord
from cermin.repo.repository import Repository
from cermin.repo.snapshots import (
    AUX_FORGOTTEN,
    CLOCK_SKEW,
    SnapshotRef,
    _matches,
    aux_records,
    is_protected,
    list_snapshots,
    protected_until,
    resolve,
    timestamp,
    tombstones,
)
from cermin.util import now_rfc3339, plural

if TYPE_CHECKING:
    from cermin.guard.verdict import GuardView


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


def apply_policy(
    refs: list[SnapshotRef], policy: KeepPolicy, now: datetime | None = None, guard: GuardView | None = None
) -> list[Decision]:
    """Decisions for one group; `refs` in any order, decisions newest first. With `guard`, the newest
    clean snapshot of each host/paths group is kept, and a snapshot that is not clean while an alarm
    is open in its group is kept without counting toward any rule."""
    now = now or datetime.now(UTC)
    limit = now.timestamp() + CLOCK_SKEW
    stamps = {r.id: timestamp(r.snapshot.time) for r in refs}
    untrusted = [r for r in refs if stamps[r.id] is None or stamps[r.id] > limit]
    snaps = sorted((r for r in refs if r not in untrusted), key=lambda r: (r.snapshot.time, r.id), reverse=True)
    times = [datetime.fromtimestamp(stamps[r.id], UTC) for r in snaps]
    counted = [t for r, t in zip(snaps, times, strict=True) if guard is None or guard.counts(r.id)]
    within_cut = subtract_duration(min(counted[0], now), policy.within) if policy.within and counted else None
    remaining = {name: getattr(policy, name) for name, _ in _BUCKETS}
    last_bucket: dict[str, tuple | None] = {name: None for name, _ in _BUCKETS}
    out = [
        Decision(r, True, ["dated in the future (beyond the clock-skew allowance): kept, not counted"])
        for r in sorted(untrusted, key=lambda r: (r.snapshot.time, r.id), reverse=True)
    ]
    i = 0
    for ref, t in zip(snaps, times, strict=True):
        reasons = []
        if guard is not None and ref.id in guard.last_clean:
            reasons.append("newest clean snapshot of its host and paths (guard)")
        if guard is not None and not guard.counts(ref.id):
            v = guard.verdicts[ref.id].verdict
            reasons.append(f"{v} while an alarm is open (guard): kept, not counted")
            out.append(Decision(ref, True, reasons))
            continue
        if i < policy.last:
            reasons.append("last snapshot" if policy.last == 1 else f"within last {policy.last}")
        i += 1
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
        until = timestamp(protected) if isinstance(protected, str) else None
        if until is not None and until > protection_clock(now):
            reasons.append(f"protected until {protected}")
        out.append(Decision(ref, bool(reasons), reasons))
    return out


def plan_forget(
    refs: list[SnapshotRef],
    policy: KeepPolicy,
    group_by: tuple[str, ...] = ("host", "paths"),
    now: datetime | None = None,
    guard: GuardView | None = None,
) -> list[ForgetGroup]:
    if policy.empty():
        raise UsageError("no retention policy given: refusing to forget everything (use --keep-* options)")
    groups: dict[tuple, list[SnapshotRef]] = {}
    for r in refs:
        groups.setdefault(group_key(r, group_by), []).append(r)
    return [ForgetGroup(dict(k), apply_policy(v, policy, now, guard)) for k, v in sorted(groups.items())]


def protection_clock(now: datetime | None) -> float:
    """The time protections are judged at: never later than the real clock, so a library caller's
    `now` (a fake clock in tests, a scheduler's planned time) can only make a protection last longer."""
    real = time.time()
    return real if now is None else min(real, now.timestamp())


def protected_ids(repo: Repository, ids: list[str], now: datetime | None = None) -> dict[str, str]:
    """Which of `ids` are protected now (by a protection record or the snapshot's own
    `extra.protected_until`), with the date. Reads the repository: the caller's view is not trusted."""
    t = protection_clock(now)
    prot = protected_until(aux_records(repo))
    held: dict[str, str] = {}
    for sid in ids:
        try:
            snap = repo.load_snapshot(sid)
        except (CerminError, ValueError):
            snap = None  # unreadable: only its records can protect it
        dates = [prot.get(sid)] + ([snap.extra.get("protected_until")] if snap is not None else [])
        for until in dates:
            ts = timestamp(until) if isinstance(until, str) else None
            if ts is not None and ts > t and (sid not in held or ts > (timestamp(held[sid]) or 0)):
                held[sid] = until
    return held


def load_guard(repo: Repository, now: datetime | None = None) -> GuardView:
    """The guard's view over every live snapshot (read from the repository, never from the caller)."""
    from cermin.guard.verdict import guard_view

    t = now.timestamp() if now is not None else None
    return guard_view(repo, list_snapshots(repo, now=t), t)


def refuse_last_clean(ids: list[str], guard: GuardView) -> None:
    """UsageError if any of `ids` is the newest clean snapshot of its host/paths group while an alarm
    is open there. (A retention policy never removes it at all: apply_policy keeps it. Named by id
    with no alarm open, it is the operator's explicit choice — retiring a host or a path — as before
    the guard.)"""
    for sid in sorted(set(ids) & set(guard.last_clean)):
        if not guard.alarm_open(sid):
            continue
        host, paths = guard.last_clean[sid]
        shown = " ".join(p.decode("utf-8", "backslashreplace") for p in paths)
        raise UsageError(
            f"snapshot {sid[:8]} is the newest clean snapshot of host {host or '(none)'}, paths {shown}, and an "
            "alarm is open there: the guard keeps it (`cermin guard report` explains the alarm)"
        )


def remove_snapshots(
    repo: Repository, ids: list[str], now: datetime | None = None, guard: GuardView | None = None
) -> tuple[list[str], list[str]]:
    """(removed, locked). Refuses (UsageError) if any id is protected, or is the newest clean snapshot
    of its group, whoever calls. A snapshot under Object Lock retention stays until it lapses, and
    gets a "forgotten" tombstone so it is no longer listed, used by prune or re-locked."""
    held = protected_ids(repo, ids, now)
    if held:
        sid = sorted(held)[0]
        raise UsageError(f"snapshot {sid[:8]} is protected until {held[sid]}; it cannot be forgotten")
    if ids:
        refuse_last_clean(ids, guard if guard is not None else load_guard(repo, now))
    if repo.backend.caps.batch_remove and ids:  # a server with a two-person rule
        rid = repo.backend.remove_many([(Kind.SNAPSHOT, sid) for sid in ids])  # ONE request for all of them
        if rid is not None:
            raise ApprovalRequired(rid, len(ids), f"forgetting {plural(len(ids), 'snapshot')}")
        return [], []
    removed, locked = [], []
    for sid in ids:
        try:
            repo.backend.remove(Kind.SNAPSHOT, sid)
            removed.append(sid)
        except ObjectNotFound:
            pass
        except ObjectLocked:
            locked.append(sid)
    if locked:
        write_tombstones(repo, locked, now)
    return removed, locked


def write_tombstones(repo: Repository, ids: list[str], now: datetime | None = None) -> list[str]:
    """One "forgotten" aux record per snapshot not already tombstoned; returns the record names."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if now is not None else now_rfc3339()
    dead = tombstones(aux_records(repo), now.timestamp() if now is not None else None)
    out = []
    for sid in ids:
        if sid in dead:
            continue
        rec = AuxRecord(type=AUX_FORGOTTEN, time=stamp, target=sid)
        out.append(repo.save_object(Kind.AUX, records.encode(rec)))
    return out


@dataclass
class ForgetResult:
    ids: list[str]  # chosen for removal
    groups: list[ForgetGroup] = field(default_factory=list)  # policy mode only
    removed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)  # under Object Lock: tombstoned instead
    dry_run: bool = False
    approval: str | None = None  # request id when a second admin must approve the removal
    by_id: bool = False  # snapshots named by id, not chosen by a policy

    @property
    def exit_code(self) -> int:
        return EXIT_APPROVAL if self.approval else 0

    def to_json(self) -> list[dict]:
        out: list[dict] = []
        if self.by_id:
            out += [{"message_type": "forget", "id": sid, "dry_run": self.dry_run} for sid in self.ids]
        for g in self.groups:
            out.append(
                {
                    "message_type": "forget_group",
                    "group": dict(g.key),
                    "keep": [{"id": d.ref.id, "time": d.ref.snapshot.time, "reasons": d.reasons} for d in g.keep],
                    "remove": [{"id": d.ref.id, "time": d.ref.snapshot.time} for d in g.remove],
                    "dry_run": self.dry_run,
                }
            )
        if self.approval:
            out.append(approval_json(self.approval, len(self.ids), self._what()))
        elif not self.dry_run and self.locked:
            out.append(warning_json(self._locked_warning()))
        return out

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines: list[Line] = []
        if self.dry_run:
            lines.append(answer("dry run: nothing is removed"))
        if self.by_id:
            lines += [answer(f"{'would remove' if self.dry_run else 'remove'} {sid[:8]}") for sid in self.ids]
        for g in self.groups:
            lines.append(answer(f"group {group_text(g.key)}: keep {len(g.keep)}, remove {len(g.remove)}"))
            for d in g.decisions:
                what = "keep  " if d.keep else "remove"
                lines.append(answer(f"  {what} {d.ref.short_id} {d.ref.snapshot.time[:19]}  {', '.join(d.reasons)}"))
        if self.approval:
            lines.append(approval_text(self.approval, len(self.ids), self._what()))
        elif self.dry_run:
            lines.append(answer(f"dry run: would remove {plural(len(self.ids), 'snapshot')}"))
        else:
            lines.append(note(f"removed {plural(len(self.removed), 'snapshot')}"))
            if self.locked:
                lines.append(warning(self._locked_warning()))
        return lines

    def _what(self) -> str:
        return f"forgetting {plural(len(self.ids), 'snapshot')}"

    def _locked_warning(self) -> str:
        return (
            f"{plural(len(self.locked), 'snapshot')} under Object Lock retention: marked forgotten (hidden, no "
            "longer re-locked); their files stay until the retention lapses"
        )


def group_text(key: dict) -> str:
    """A forget group for people: `host db1, paths /etc /home, tags (none)`."""
    parts = []
    for k, v in key.items():
        if isinstance(v, (list, tuple)):
            v = " ".join(v) if v else "(none)"
        parts.append(f"{k} {v}")
    return ", ".join(parts)


def approval_json(rid: str, count: int, what: str) -> dict:
    return {"message_type": "approval_required", "id": rid, "count": count, "what": what}


def approval_text(rid: str, count: int, what: str) -> Line:
    """A deletion queued on a server with a two-person rule: said on stderr (not an error), exit 20."""
    return Line(
        STDERR,
        f"waiting for approval {rid}: {what} ({count} objects) needs a second admin (`cermin approvals approve {rid}`)",
    )


def forget(
    repo: Repository,
    snapshot_ids: list[str] | None = None,
    policy: KeepPolicy | None = None,
    hosts: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    paths: tuple[bytes, ...] = (),
    group_by: tuple[str, ...] = ("host", "paths"),
    dry_run: bool = False,
    now: datetime | None = None,
) -> ForgetResult:
    """Forget the given snapshots (ids or prefixes), or those `policy` does not keep. Protections
    are loaded here, so no caller can forget a protected snapshot; a dry run changes nothing."""
    if snapshot_ids:
        ids = [resolve(repo, s).id for s in snapshot_ids]
        held = protected_ids(repo, ids, now)
        if held:
            sid = sorted(held)[0]
            raise UsageError(f"snapshot {sid[:8]} is protected until {held[sid]}; it cannot be forgotten")
        guard = load_guard(repo, now)
        refuse_last_clean(ids, guard)
        res = ForgetResult(ids, dry_run=dry_run, by_id=True)
    else:
        if policy is None:
            raise UsageError("no snapshots and no retention policy given: refusing to forget anything")
        from cermin.guard.verdict import guard_view

        t = now.timestamp() if now is not None else None
        every = list_snapshots(repo, now=t)
        guard = guard_view(repo, every, t)
        refs = [r for r in every if _matches(r.snapshot, hosts, tags, paths)]
        prot = protected_until(aux_records(repo))
        for r in refs:
            if r.id in prot and is_protected(r, prot, protection_clock(now)):
                r.snapshot.extra = {**r.snapshot.extra, "protected_until": prot[r.id]}
        groups = plan_forget(refs, policy, group_by, now, guard)
        res = ForgetResult([d.ref.id for g in groups for d in g.remove], groups, dry_run=dry_run)
    if not dry_run:
        try:
            res.removed, res.locked = remove_snapshots(repo, res.ids, now, guard)
        except ApprovalRequired as e:  # queued on a server with a two-person rule: nothing removed yet
            res.approval = e.request_id
    return res
