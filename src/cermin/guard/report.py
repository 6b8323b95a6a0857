"""`cermin guard mark`, `guard ack` and `guard report`: write evidence, explain a verdict."""

from __future__ import annotations

from dataclasses import dataclass

from cermin.engine.results import Line, answer, note, warning
from cermin.errors import UsageError
from cermin.guard.verdict import (
    ALARMS,
    INFECTED,
    SUSPICIOUS,
    UNKNOWN,
    Verdict,
    effective_verdicts,
    load_evidence,
    write_ack,
    write_mark,
)
from cermin.repo.repository import Repository
from cermin.repo.snapshots import aux_records, group_of, list_snapshots, timestamp
from cermin.util import now_rfc3339, parse_rfc3339, plural


def parse_time(s: str, what: str) -> str:
    """YYYY-MM-DD (midnight UTC) or RFC 3339 -> RFC 3339 UTC with nanoseconds."""
    from datetime import UTC

    try:
        t = parse_rfc3339(s if "T" in s else s + "T00:00:00Z").astimezone(UTC)
    except (ValueError, OverflowError):
        raise UsageError(f"bad {what} {s!r}: use YYYY-MM-DD or an RFC 3339 time") from None
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond * 1000:09d}Z"


@dataclass
class MarkResult:
    record: str
    start: str
    end: str
    verdict: str
    reason: str
    flagged: list[str]  # snapshot ids in the window now
    exit_code = 0

    def to_json(self) -> list[dict]:
        d = {"message_type": "guard_mark", "id": self.record, "from": self.start, "to": self.end}
        return [d | {"verdict": self.verdict, "reason": self.reason, "snapshots": self.flagged}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        window = f"from {self.start[:19]} to {self.end[:19] if self.end else 'now (open until closed)'}"
        lines = [answer(f"marked {self.verdict} {window}: {plural(len(self.flagged), 'snapshot')} flagged")]
        lines += [note(f"  {sid[:8]}") for sid in self.flagged]
        if not self.end:
            lines.append(
                note(
                    "the alarm stays open until closed: `cermin guard mark --from SAME --to END` — while it is open, "
                    "forget counts only clean snapshots"
                )
            )
        return lines


def mark(repo: Repository, start: str, end: str, reason: str, infected: bool = False) -> MarkResult:
    s = parse_time(start, "--from")
    e = parse_time(end, "--to") if end else ""
    verdict = INFECTED if infected else SUSPICIOUS
    name = write_mark(repo, s, e, reason, verdict, now_rfc3339())
    lo, hi = timestamp(s), timestamp(e) if e else None
    flagged = []
    for r in list_snapshots(repo):
        t = timestamp(r.snapshot.time)
        if t is not None and lo is not None and lo <= t and (hi is None or t <= hi):
            flagged.append(r.id)
    return MarkResult(name, s, e, verdict, reason, flagged)


@dataclass
class AckResult:
    record: str
    snapshot_id: str
    before: str
    after: str
    exit_code = 0

    def to_json(self) -> list[dict]:
        return [
            {
                "message_type": "guard_ack",
                "id": self.record,
                "snapshot_id": self.snapshot_id,
                "before": self.before,
                "verdict": self.after,
            }
        ]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [answer(f"acknowledged {self.snapshot_id[:8]}: {self.before} -> {self.after}")]
        if self.after in ALARMS:
            lines.append(warning(f"still {self.after}: a mark recorded after this acknowledgement flags it"))
        return lines


def ack(repo: Repository, snapshot: str, reason: str) -> AckResult:
    from cermin.repo.snapshots import resolve

    ref = resolve(repo, snapshot)
    before = effective_verdicts(repo, [ref])[ref.id].verdict
    name = write_ack(repo, ref.id, reason, now_rfc3339())
    after = effective_verdicts(repo, [ref])[ref.id].verdict
    return AckResult(name, ref.id, before, after)


@dataclass
class GuardReport:
    snapshot_id: str
    time: str
    hostname: str
    verdict: Verdict
    last_clean: str | None  # the newest clean snapshot of its group
    signals: dict
    exit_code = 0

    def to_json(self) -> list[dict]:
        d = {"message_type": "guard_report", "snapshot_id": self.snapshot_id, "time": self.time}
        d |= self.verdict.to_json()
        return [d | {"last_clean": self.last_clean, "signals": self.signals}]

    def to_text(self, verbose: int = 0) -> list[Line]:
        v = self.verdict
        lines = [answer(f"snapshot {self.snapshot_id[:8]} ({self.time[:19]}, host {self.hostname}): {v.verdict}")]
        if v.own == UNKNOWN and not v.reasons:
            lines.append(answer("  no guard verdict: the snapshot was made before the guard (or without it)"))
            lines.append(note("  `cermin guard scan ID` judges it from its data"))
        elif v.own == UNKNOWN and v.scans:
            lines.append(
                answer(
                    f"  the backup gave no verdict (made before the guard or without it); {v.verdict} by later evidence"
                )
            )
        elif v.own != v.verdict:
            lines.append(answer(f"  the backup judged it {v.own}; later evidence makes it {v.verdict}"))
        if v.score is not None:
            lines.append(answer(f"  score {v.score:g}"))
        if v.reasons:
            lines.append(answer("  why:"))
            lines += [answer(f"    - {r}") for r in v.reasons]
        if v.paths:
            n = len(v.paths)
            shown = v.paths if verbose else v.paths[:20]
            lines.append(answer(f"  affected paths ({n}{'' if len(shown) == n else ', -v shows all'}):"))
            lines += [answer(f"    {p}") for p in shown]
        for sc in v.scans:
            yara = (
                f", YARA rules {sc.yara_rules[:12]}: {plural(len(sc.yara_matches), 'match', 'matches')}"
                if sc.yara_rules
                else ""
            )
            against = f"against {sc.parent[:8]}" if sc.parent else "without a parent"
            incomplete = " (incomplete: some data unreadable)" if sc.incomplete else ""
            score = f", score {sc.score:g}" if sc.score is not None else ""
            lines.append(
                answer(f"  scanned {sc.recorded_text[:19]} ({against}{yara}): {sc.verdict}{score}{incomplete}")
            )
        for a in v.acks:
            lines.append(answer(f"  acknowledged {a.recorded_text[:19]}: {a.reason or '(no reason given)'}"))
        if v.alarm_open:
            lines.append(answer("  an alarm is open for its host and paths: forget counts only clean snapshots"))
        if self.last_clean and self.last_clean != self.snapshot_id:
            lines.append(answer(f"  newest clean snapshot of its host and paths: {self.last_clean[:8]}"))
        if v.alarm:
            lines.append(
                note(
                    "  if this is benign: `cermin guard ack ID --reason TEXT`; otherwise restore with "
                    "`cermin restore last-clean --host H --path P -t DIR`"
                )
            )
        if verbose and self.signals:
            lines.append(answer("  signals:"))
            lines += [answer(f"    {k}: {val}") for k, val in sorted(self.signals.items())]
        return lines


def report(repo: Repository, snapshot: str) -> GuardReport:
    from cermin.guard.lastclean import resolve_snapshot
    from cermin.guard.verdict import clip, last_clean_of

    ref = resolve_snapshot(repo, snapshot)
    group = [r for r in list_snapshots(repo) if group_of(r.snapshot) == group_of(ref.snapshot)]
    if all(r.id != ref.id for r in group):
        group.append(ref)
    ev = load_evidence(aux_records(repo))
    verdicts = effective_verdicts(repo, group, evidence=ev)
    best = last_clean_of(group, verdicts)
    g = ref.snapshot.extra.get("guard")
    sig = g.get("signals") if isinstance(g, dict) else None
    signals = {}
    if isinstance(sig, dict):
        signals = {clip(k, 100): clip(repr(val), 300) for k, val in list(sig.items())[:100]}
    host = clip(ref.snapshot.hostname, 100)
    return GuardReport(ref.id, ref.snapshot.time, host, verdicts[ref.id], best.id if best else None, signals)
