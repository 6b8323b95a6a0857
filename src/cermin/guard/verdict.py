"""Snapshot verdicts and what later evidence does to them (docs/guard.md, FORMAT.md §9 and §10a).

A snapshot's own verdict is `extra["guard"]`, written at commit by the backup observer; later
evidence is append-only aux records:
- `guard_mark` {data: from, to ("" = still open), reason, verdict}: flags every snapshot taken in the
  window (an EDR/SIEM alert). An open mark is closed by a later mark with the same `from` and a `to`.
- `guard_ack` {target: snapshot id, data: reason}: the operator says the snapshot's alarm is benign.
  It clears the snapshot's own verdict and the marks and scans recorded no later than itself, never
  one recorded after it.
- `guard_scan` {target: snapshot id, data: verdict, score, reasons, paths, ...}: `cermin guard scan`
  re-evaluated the snapshot from its data (guard/scan.py). A scan can only raise a verdict: an
  alarm it finds raises the snapshot to it; a clean scan gives a snapshot without a verdict of its
  own (made before the guard or with it off) the verdict clean, and never lowers one — only an
  acknowledgement lowers. A clean scan that could not read all the data (`incomplete`) gives none.

Everything read here is hostile input: wrong types, huge lists, absurd dates. Bad fields are dropped
or clipped; a record dated beyond the clock-skew allowance is ignored (it could never be answered).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from cermin.backend.base import Kind
from cermin.format import records
from cermin.format.records import AuxRecord, Snapshot
from cermin.repo.repository import Repository
from cermin.repo.snapshots import CLOCK_SKEW, SnapshotRef, aux_records, group_of, list_snapshots, timestamp

CLEAN, SUSPICIOUS, INFECTED, UNKNOWN = "clean", "suspicious", "infected", "unknown"
VERDICTS = (CLEAN, SUSPICIOUS, INFECTED)
ALARMS = (SUSPICIOUS, INFECTED)
SEVERITY = {CLEAN: 0, UNKNOWN: 0, SUSPICIOUS: 1, INFECTED: 2}

AUX_GUARD_MARK = "guard_mark"
AUX_GUARD_ACK = "guard_ack"
AUX_GUARD_SCAN = "guard_scan"

MAX_REASON = 500  # characters kept of one reason
MAX_REASONS = 50
MAX_PATHS = 1000
MAX_PATH = 4096


def clip(s, n: int = MAX_REASON) -> str:
    """A string from the repository made safe to show: printable, one line, at most n characters."""
    if not isinstance(s, str):
        return ""
    s = "".join(c if c.isprintable() else "?" for c in s)
    return s if len(s) <= n else s[: n - 1] + "…"


@dataclass
class Mark:
    name: str  # aux record name
    recorded: float  # record time
    start: float
    end: float | None  # None: open
    start_text: str
    end_text: str
    reason: str
    verdict: str  # suspicious | infected

    def covers(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t <= self.end)

    def to_json(self) -> dict:
        return {
            "id": self.name,
            "from": self.start_text,
            "to": self.end_text,
            "open": self.end is None,
            "reason": self.reason,
            "verdict": self.verdict,
        }


@dataclass
class Ack:
    name: str
    recorded: float
    recorded_text: str
    target: str
    reason: str

    def to_json(self) -> dict:
        return {"id": self.name, "time": self.recorded_text, "reason": self.reason}


@dataclass
class Scan:
    """A `guard_scan` record: what re-reading a snapshot's data found (validated, clipped)."""

    name: str
    recorded: float
    recorded_text: str
    target: str
    verdict: str  # clean | suspicious | infected
    score: float | None
    reasons: list[str]
    paths: list[str]
    incomplete: bool  # some data could not be read: a clean result proves nothing
    parent: str  # the snapshot it was compared with ("" when none)
    yara_rules: str  # digest of the YARA rules used ("" when none)
    yara_matches: list[tuple[str, str]]  # (rule, path)

    def to_json(self) -> dict:
        d = {"id": self.name, "time": self.recorded_text, "verdict": self.verdict, "score": self.score}
        d |= {"reasons": self.reasons, "paths": self.paths, "incomplete": self.incomplete, "parent": self.parent}
        if self.yara_rules:
            d["yara"] = {"rules": self.yara_rules, "matches": [{"rule": r, "path": p} for r, p in self.yara_matches]}
        return d


@dataclass
class Evidence:
    marks: list[Mark] = field(default_factory=list)
    acks: dict[str, list[Ack]] = field(default_factory=dict)  # snapshot id -> acks, oldest first
    scans: dict[str, list[Scan]] = field(default_factory=dict)  # snapshot id -> scans, oldest first

    @property
    def open_marks(self) -> list[Mark]:
        return [m for m in self.marks if m.end is None]


@dataclass
class Verdict:
    """The effective verdict of one snapshot: its own, with marks and acknowledgements applied."""

    verdict: str  # clean | suspicious | infected | unknown
    own: str  # the snapshot's own verdict (unknown: made before the guard, or unreadable)
    score: float | None = None
    reasons: list[str] = field(default_factory=list)  # plain words, marks and acks included
    paths: list[str] = field(default_factory=list)  # affected paths named by the snapshot's verdict
    marks: list[Mark] = field(default_factory=list)  # marks whose window covers the snapshot
    acks: list[Ack] = field(default_factory=list)
    alarm_open: bool = False  # in its host/paths group (see effective_verdicts)
    scans: list[Scan] = field(default_factory=list)  # `guard scan` results for the snapshot, oldest first
    # Set when the verdict is raised only because an earlier snapshot of the group has an unacknowledged
    # alarm (it still holds what that attack left): that snapshot's id, and the verdict before raising.
    inherited_from: str = ""
    judged: str = ""
    raised_at: float | None = None  # when the newest scan or mark raising it was recorded

    @property
    def clean(self) -> bool:
        return self.verdict == CLEAN

    @property
    def alarm(self) -> bool:
        return self.verdict in ALARMS

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "own": self.own,
            "score": self.score,
            "reasons": self.reasons,
            "paths": self.paths,
            "marks": [m.to_json() for m in self.marks],
            "acks": [a.to_json() for a in self.acks],
            "scans": [s.to_json() for s in self.scans],
            "alarm_open": self.alarm_open,
            **({"inherited_from": self.inherited_from} if self.inherited_from else {}),
        }


def _score(v) -> float | None:
    score = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return score if score is not None and math.isfinite(score) else None


def _reasons(v) -> list[str]:
    return [clip(r) for r in v[:MAX_REASONS] if isinstance(r, str)] if isinstance(v, list) else []


def _paths(v) -> list[str]:
    return [clip(p, MAX_PATH) for p in v[:MAX_PATHS] if isinstance(p, str)] if isinstance(v, list) else []


def own_verdict(snap: Snapshot) -> tuple[str, float | None, list[str], list[str]]:
    """(verdict, score, reasons, paths) from `extra["guard"]`, validated; "unknown" without one."""
    g = snap.extra.get("guard") if isinstance(snap.extra, dict) else None
    if g is None:
        return UNKNOWN, None, [], []
    if not isinstance(g, dict) or g.get("verdict") not in VERDICTS:
        return UNKNOWN, None, ["the snapshot's guard record is unreadable"], []
    return g["verdict"], _score(g.get("score")), _reasons(g.get("reasons")), _paths(g.get("paths"))


def _is_id(s) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s)


def parse_scan(name: str, rec: AuxRecord, now: float | None = None) -> Scan | None:
    """A `guard_scan` record as a Scan, or None when it is malformed or dated beyond the clock skew."""
    now = time.time() if now is None else now
    t = timestamp(rec.time) if isinstance(rec.time, str) else None
    d = rec.data
    if rec.type != AUX_GUARD_SCAN or t is None or t > now + CLOCK_SKEW or not isinstance(d, dict):
        return None
    if not _is_id(rec.target) or d.get("verdict") not in VERDICTS:
        return None
    parent = d.get("parent")
    y = d.get("yara")
    rules, matches = "", []
    if isinstance(y, dict):
        rules = clip(y.get("rules"), 100)
        m = y.get("matches")
        for item in m[:MAX_PATHS] if isinstance(m, list) else []:
            if isinstance(item, dict) and isinstance(item.get("rule"), str) and isinstance(item.get("path"), str):
                matches.append((clip(item["rule"], 200), clip(item["path"], MAX_PATH)))
    return Scan(
        name,
        t,
        rec.time,
        rec.target.lower(),
        d["verdict"],
        _score(d.get("score")),
        _reasons(d.get("reasons")),
        _paths(d.get("paths")),
        d.get("incomplete") is not False,  # anything but an explicit false: not proof of clean
        parent.lower() if _is_id(parent) else "",
        rules,
        matches,
    )


def load_evidence(recs: list[tuple[str, AuxRecord]], now: float | None = None) -> Evidence:
    """Marks and acknowledgements among aux records; malformed or future-dated ones are ignored."""
    now = time.time() if now is None else now
    ev = Evidence()
    raw_marks = []
    for name, rec in recs:
        if rec.type == AUX_GUARD_SCAN:
            scan = parse_scan(name, rec, now)
            if scan is not None:
                ev.scans.setdefault(scan.target, []).append(scan)
            continue
        if rec.type not in (AUX_GUARD_MARK, AUX_GUARD_ACK):
            continue
        t = timestamp(rec.time) if isinstance(rec.time, str) else None
        if t is None or t > now + CLOCK_SKEW or not isinstance(rec.data, dict):
            continue
        if rec.type == AUX_GUARD_ACK:
            if isinstance(rec.target, str) and len(rec.target) == 64:
                ack = Ack(name, t, rec.time, rec.target.lower(), clip(rec.data.get("reason")))
                ev.acks.setdefault(ack.target, []).append(ack)
            continue
        d = rec.data
        start = timestamp(d.get("from")) if isinstance(d.get("from"), str) else None
        to = d.get("to", "")
        end = timestamp(to) if isinstance(to, str) and to else None
        if start is None or not isinstance(to, str) or (to and (end is None or end < start)):
            continue
        verdict = d.get("verdict") if d.get("verdict") in ALARMS else SUSPICIOUS
        raw_marks.append(Mark(name, t, start, end, d["from"], to, clip(d.get("reason")), verdict))
    raw_marks.sort(key=lambda m: (m.recorded, m.name))
    for m in raw_marks:  # an open mark is closed by a later mark with the same start and an end
        if m.end is None:
            closer = next((c for c in raw_marks if c.recorded >= m.recorded and c.start == m.start and c.end), None)
            if closer is not None:
                m.end, m.end_text = closer.end, closer.end_text
    ev.marks = raw_marks
    for acks in ev.acks.values():
        acks.sort(key=lambda a: (a.recorded, a.name))
    for scans in ev.scans.values():
        scans.sort(key=lambda s: (s.recorded, s.name))
    return ev


def judge(ref: SnapshotRef, ev: Evidence) -> Verdict:
    """One snapshot's effective verdict (alarm_open is set by effective_verdicts)."""
    own, score, own_reasons, paths = own_verdict(ref.snapshot)
    t = timestamp(ref.snapshot.time)
    acks = ev.acks.get(ref.id, [])
    last_ack = acks[-1].recorded if acks else None
    marks = [m for m in ev.marks if t is not None and m.covers(t)]
    reasons: list[str] = []
    verdict = own if own in VERDICTS else UNKNOWN
    if own in ALARMS:
        reasons += [f"{own}: {r}" for r in own_reasons] or [f"the backup judged it {own}"]
    elif own_reasons:
        reasons += own_reasons
    if own in ALARMS and last_ack is not None:
        verdict = CLEAN
        reasons.append(f"acknowledged as benign: {acks[-1].reason or '(no reason given)'}")
    # when the newest later evidence (a scan, a mark) raising it was recorded: an ack of a later snapshot
    # written before that does not end what this one passes on (see _inherit). Its own verdict counts as
    # known before any later snapshot could be acknowledged.
    raised = None
    scans = ev.scans.get(ref.id, [])
    paths = list(paths)
    for s in scans:
        when = s.recorded_text[:19].replace("T", " ")
        if s.verdict == CLEAN:
            if s.incomplete:
                reasons.append(f"scan {when}: clean but incomplete (some data unreadable): no verdict from it")
            elif verdict == UNKNOWN:
                verdict = CLEAN
                reasons.append(f"scan {when}: clean")
                score = s.score if score is None else score
            continue
        if verdict == UNKNOWN:  # judged now; an acknowledged alarm leaves it clean
            verdict = CLEAN
        if last_ack is not None and s.recorded <= last_ack:
            reasons.append(f"scan {when} found it {s.verdict}, acknowledged later")
            continue
        reasons += [f"scan {when}: {s.verdict}: {r}" for r in s.reasons] or [f"scan {when}: {s.verdict}"]
        raised = max(raised or s.recorded, s.recorded)
        if SEVERITY[s.verdict] > SEVERITY[verdict]:
            verdict = s.verdict
        if s.score is not None and (score is None or s.score > score):
            score = s.score
        seen = set(paths)
        paths += [p for p in s.paths[: MAX_PATHS - len(paths)] if p not in seen]
    for m in marks:
        window = f"{m.start_text} to {m.end_text or 'now (open)'}"
        if last_ack is not None and m.recorded <= last_ack:
            reasons.append(f"marked {m.verdict} ({window}: {m.reason}), acknowledged later")
            continue
        reasons.append(f"marked {m.verdict} ({window}): {m.reason}")
        raised = max(raised or m.recorded, m.recorded)
        if SEVERITY[m.verdict] > SEVERITY[verdict]:
            verdict = m.verdict
    return Verdict(verdict, own, score, reasons, paths, marks, acks, scans=scans, raised_at=raised)


def effective_verdicts(
    repo: Repository,
    refs: list[SnapshotRef],
    now: float | None = None,
    evidence: Evidence | None = None,
    context: list[SnapshotRef] | None = None,
) -> dict[str, Verdict]:
    """snapshot id -> effective Verdict, for `refs`.

    An alarm does not end with the next backup: a backup after an attack that changes nothing new is
    clean on its own, yet it still holds the encrypted files. So every snapshot of a host/paths group
    taken after one with an unacknowledged alarm is at least suspicious ("inherited"), until an
    acknowledgement — of the flagged snapshot (benign) or of a later one (the data is known good
    again) — ends it. This needs the whole group: `context` is every live snapshot (default: listed
    from the repository).

    An alarm is open in a group when its newest snapshot (not future-dated) is suspicious or infected —
    or has no verdict though the guard judged earlier ones (the guard was switched off) —, or when an
    open mark exists."""
    ev = evidence if evidence is not None else load_evidence(aux_records(repo), now)
    if context is None:
        context = list_snapshots(repo)
    every = {r.id: r for r in context}
    every.update((r.id, r) for r in refs)
    wanted = {group_of(r.snapshot) for r in refs}
    groups: dict[tuple, list[SnapshotRef]] = {}
    for r in every.values():
        g = group_of(r.snapshot)
        if g in wanted:
            groups.setdefault(g, []).append(r)
    out = {r.id: judge(r, ev) for rs in groups.values() for r in rs}
    newest: dict[tuple, SnapshotRef] = {}
    judged: set[tuple] = set()
    for g, rs in groups.items():
        _inherit(sorted((r for r in rs if not r.future), key=lambda r: (r.snapshot.time, r.id)), out)
        trusted = [r for r in rs if not r.future]
        if trusted:
            newest[g] = max(trusted, key=lambda r: (r.snapshot.time, r.id))
        if any(out[r.id].own != UNKNOWN for r in rs):
            judged.add(g)
    alarmed = {g for g, top in newest.items() if out[top.id].alarm or (out[top.id].verdict == UNKNOWN and g in judged)}
    open_mark = bool(ev.open_marks)
    for r in refs:
        out[r.id].alarm_open = open_mark or group_of(r.snapshot) in alarmed
    return {r.id: out[r.id] for r in refs}


def _inherit(ordered: list[SnapshotRef], out: dict[str, Verdict]) -> None:
    """Raise every snapshot after an unacknowledged alarm to suspicious (see effective_verdicts)."""
    source: tuple[SnapshotRef, str, float] | None = None
    for r in ordered:
        v = out[r.id]
        # an operator vouched for this snapshot: what came before no longer taints it — unless that
        # evidence was recorded after the ack (a SIEM mark or a scan of an older snapshot, later)
        if v.acks and (source is None or v.acks[-1].recorded > source[2]):
            source = None
        if v.alarm:
            source = (r, v.verdict, v.raised_at if v.raised_at is not None else float("-inf"))
            continue
        if source is None or r.snapshot.time <= source[0].snapshot.time:
            continue  # taken at the same instant: a copy of it (two mirror runs), not a later backup
        src, what, _ = source
        v.judged, v.inherited_from, v.verdict = v.verdict, src.id, SUSPICIOUS
        v.reasons.append(
            f"taken after the unacknowledged {what} snapshot {src.id[:8]} "
            f"({src.snapshot.time[:19].replace('T', ' ')}): it may still hold what that alarm found; "
            "`cermin guard ack` this snapshot once its data is known good, or that one if its alarm was benign"
        )


def last_clean_of(refs: list[SnapshotRef], verdicts: dict[str, Verdict]) -> SnapshotRef | None:
    """The newest trusted snapshot whose verdict is clean; if none is clean, the newest "unknown" one
    older than every snapshot with a guard verdict (made before the guard: a snapshot without a
    verdict made after it is one a disabled guard did not judge, and is not trusted)."""
    trusted = sorted((r for r in refs if not r.future), key=lambda r: (r.snapshot.time, r.id))
    clean = [r for r in trusted if verdicts[r.id].verdict == CLEAN]
    if clean:
        return clean[-1]
    return next(reversed(pre_guard(trusted, verdicts)), None)


def pre_guard(refs: list[SnapshotRef], verdicts: dict[str, Verdict]) -> list[SnapshotRef]:
    """Unknown-verdict snapshots (oldest first) taken before the first one the guard judged."""
    out = []
    for r in sorted(refs, key=lambda r: (r.snapshot.time, r.id)):
        if verdicts[r.id].own != UNKNOWN:
            break
        if verdicts[r.id].verdict == UNKNOWN:
            out.append(r)
    return out


def last_clean_per_group(refs: list[SnapshotRef], verdicts: dict[str, Verdict]) -> dict[str, tuple]:
    """snapshot id -> its host/paths group, for the last clean snapshot of every group."""
    groups: dict[tuple, list[SnapshotRef]] = {}
    for r in refs:
        groups.setdefault(group_of(r.snapshot), []).append(r)
    out = {}
    for g, rs in groups.items():
        best = last_clean_of(rs, verdicts)
        if best is not None:
            out[best.id] = g
    return out


# ---- writing evidence ---------------------------------------------------------------------------
def write_mark(repo: Repository, start: str, end: str, reason: str, verdict: str, stamp: str) -> str:
    from cermin.errors import UsageError

    s, e = timestamp(start), timestamp(end) if end else None
    if s is None or (end and e is None):
        raise UsageError("a mark needs RFC 3339 times (--from, --to)")
    if e is not None and e < s:
        raise UsageError("--to is before --from")
    if verdict not in ALARMS:
        raise UsageError(f"bad verdict {verdict!r}: suspicious or infected")
    if not reason.strip():
        raise UsageError("give a --reason")
    data = {"from": start, "to": end, "reason": reason[:MAX_REASON], "verdict": verdict}
    return repo.save_object(Kind.AUX, records.encode(AuxRecord(type=AUX_GUARD_MARK, time=stamp, data=data)))


def write_ack(repo: Repository, snapshot_id: str, reason: str, stamp: str) -> str:
    from cermin.errors import UsageError

    if not reason.strip():
        raise UsageError("give a --reason")
    rec = AuxRecord(type=AUX_GUARD_ACK, time=stamp, target=snapshot_id, data={"reason": reason[:MAX_REASON]})
    return repo.save_object(Kind.AUX, records.encode(rec))


def write_scan(repo: Repository, snapshot_id: str, data: dict, stamp: str) -> str:
    """The `guard_scan` record of one `cermin guard scan` of a snapshot (guard/scan.py)."""
    rec = AuxRecord(type=AUX_GUARD_SCAN, time=stamp, target=snapshot_id, data=data)
    return repo.save_object(Kind.AUX, records.encode(rec))


# ---- what forget needs --------------------------------------------------------------------------
@dataclass
class GuardView:
    """What forget needs to know of the guard, over every live snapshot of the repository."""

    verdicts: dict[str, Verdict]
    last_clean: dict[str, tuple]  # id -> host/paths group: never removed
    countable: set[str]  # ids that count toward keep rules while an alarm is open

    def counts(self, sid: str) -> bool:
        v = self.verdicts.get(sid)
        return v is None or not v.alarm_open or sid in self.countable

    def alarm_open(self, sid: str) -> bool:
        v = self.verdicts.get(sid)
        return v is not None and v.alarm_open


def guard_view(repo: Repository, refs: list[SnapshotRef], now: float | None = None) -> GuardView:
    """`refs`: every live snapshot (unfiltered), so "newest clean of its group" means the whole group."""
    verdicts = effective_verdicts(repo, refs, now, context=refs)
    groups: dict[tuple, list[SnapshotRef]] = {}
    for r in refs:
        groups.setdefault(group_of(r.snapshot), []).append(r)
    countable = {sid for sid, v in verdicts.items() if v.verdict == CLEAN}
    for rs in groups.values():
        countable.update(r.id for r in pre_guard(rs, verdicts))
    return GuardView(verdicts, last_clean_per_group(refs, verdicts), countable)
