"""Whether each system meets its class now, and why not: the answer `cermin agent status`, the dashboard and
the metrics give, computed from what the state store read for the whole fleet at once (docs/agent.md).

A system meets its class when every copy the class requires holds data no older than the RPO, its primary
was verified within verify_every, its last drill is within drill_every, passed and restored within the RTO,
and no guard alarm is open on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from cermin.ops.config import COPY_KINDS, fmt_duration
from cermin.ops.staterows import Alarm, Claim, Drill, Run, SnapshotRecord, SystemRow, _iso


@dataclass(frozen=True)
class CopyStatus:
    kind: str  # primary | immutable | mirror
    repository: str
    required: bool  # the class requires this copy
    newest: datetime | None  # time of the newest data a good backup or mirror left in it
    age_s: float | None
    fresh: bool  # newest data no older than the class RPO
    last_backup: Run | None  # newest backup run into this copy, whatever its status
    last_mirror: Run | None  # newest mirror run into this copy
    last_verify: Run | None  # newest successful verify of this copy
    snapshot: SnapshotRecord | None  # the newest snapshot the agent saw in it
    immutable: bool  # the immutable tier (Object Lock)
    lock_until: datetime | None  # retention of its newest snapshot, when the agent saw one
    lag_s: float | None = None  # how far its newest data trails the primary's (copies other than the primary)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("kind", "repository", "required", "newest", "age_s", "fresh")}
        d |= {"immutable": self.immutable, "lock_until": self.lock_until, "lag_s": self.lag_s}
        for k in ("last_backup", "last_mirror", "last_verify", "snapshot"):
            v = getattr(self, k)
            d[k] = v.to_json() if v is not None else None
        return _iso(d)


@dataclass(frozen=True)
class SystemStatus:
    system: SystemRow
    copies: dict[str, CopyStatus]
    last_backup: datetime | None  # newest good data in the primary copy
    backup_age_s: float | None
    last_mirror: datetime | None  # newest successful mirror run's end, any copy
    last_verify: datetime | None  # newest successful verify of the primary's end
    last_drill: Drill | None
    open_alarms: list[Alarm]
    verdict: str | None  # guard verdict of the primary's newest snapshot
    last_runs: dict[tuple[str, str | None], Run]  # (kind, copy) -> newest run
    running: Claim | None  # a live claim: an agent works on it now
    meets_class: bool
    reasons: list[str]  # why it does not meet its class now (empty when it does)

    @property
    def id(self) -> str:
        return self.system.id

    def to_json(self) -> dict:
        return _iso(
            {
                "system": self.system.to_json(),
                "meets_class": self.meets_class,
                "reasons": self.reasons,
                "last_backup": self.last_backup,
                "backup_age_s": self.backup_age_s,
                "last_mirror": self.last_mirror,
                "last_verify": self.last_verify,
                "last_drill": self.last_drill.to_json() if self.last_drill else None,
                "verdict": self.verdict,
                "open_alarms": [a.to_json() for a in self.open_alarms],
                "copies": {k: c.to_json() for k, c in self.copies.items()},
                "last_runs": [r.to_json() for r in self.last_runs.values()],
                "running": self.running.to_json() if self.running else None,
            }
        )


def evaluate(
    system: SystemRow,
    copies: dict[str, CopyStatus],
    last_verify: datetime | None,
    last_drill: Drill | None,
    open_alarms: list[Alarm],
    now: datetime,
    drill_run: Run | None = None,
) -> list[str]:
    """Why a system does not meet its class now (empty: it does). The class's terms, in order: every
    required copy holds data no older than the RPO, the primary was verified within verify_every, the
    last drill is within drill_every, passed and restored within the RTO, and no guard alarm is open."""
    reasons: list[str] = []
    rpo = fmt_duration(system.rpo_s)
    for kind in system.required:
        c = copies.get(kind)
        what = "backup" if kind == "primary" else f"{kind} copy"
        if c is None or c.newest is None:
            reasons.append(f"no {what} yet")
        elif not c.fresh:
            reasons.append(f"{what} is {fmt_duration(c.age_s or 0, 2)} old, older than the RPO {rpo}")
    if last_verify is None:
        reasons.append("never verified")
    elif (now - last_verify).total_seconds() > system.verify_every_s:
        age = fmt_duration((now - last_verify).total_seconds(), 2)
        reasons.append(f"last verify {age} ago, due every {fmt_duration(system.verify_every_s)}")
    if (
        drill_run is not None
        and drill_run.status == "failed"
        and (last_drill is None or drill_run.started_at > last_drill.finished_at)
    ):
        # a drill that restored nothing leaves no drill record, only its failed run
        why = (drill_run.error or "").splitlines()
        reasons.append(f"last drill failed{': ' + why[0][:200] if why else ''}")
    elif last_drill is None:
        reasons.append("never drilled")
    else:
        age = (now - last_drill.finished_at).total_seconds()
        if age > system.drill_every_s:
            reasons.append(f"last drill {fmt_duration(age, 2)} ago, due every {fmt_duration(system.drill_every_s)}")
        if last_drill.verdict != "pass":
            reasons.append(f"last drill failed{': ' + last_drill.error.splitlines()[0] if last_drill.error else ''}")
        elif last_drill.rto_measured_s > system.rto_s:
            reasons.append(
                f"last drill took {fmt_duration(last_drill.rto_measured_s)}, over the RTO {fmt_duration(system.rto_s)}"
            )
    if open_alarms:
        snaps = ", ".join(a.snapshot_id[:8] for a in open_alarms[:3]) + (", ..." if len(open_alarms) > 3 else "")
        n, s = len(open_alarms), "s" if len(open_alarms) != 1 else ""
        reasons.append(f"{n} open guard alarm{s} (snapshot{s} {snaps})")
    return reasons


def build_status(
    system: SystemRow,
    last: dict[tuple[str, str], Run],
    ok: dict[tuple[str, str], tuple[Run, datetime]],
    drill: Drill | None,
    snaps: dict[tuple[str, str], SnapshotRecord],
    alarms: list[Alarm],
    claim: Claim | None,
    now: datetime,
) -> SystemStatus:
    """One system's status from what the store read for the fleet: `last` and `ok` are its newest run and
    newest good run (with its data time) per (kind, copy), `snaps` the newest snapshot per (system, copy)."""
    copies: dict[str, CopyStatus] = {}
    for kind in COPY_KINDS:
        repo = system.copies.get(kind)
        if repo is None and kind not in system.required:
            continue
        newest = max((ok[k][1] for k in (("backup", kind), ("mirror", kind)) if k in ok), default=None)
        age = None if newest is None else max(0.0, (now - newest).total_seconds())
        verify = ok.get(("verify", kind))
        snap = snaps.get((system.id, kind))
        copies[kind] = CopyStatus(
            kind=kind,
            repository=repo or "",
            required=kind in system.required,
            newest=newest,
            age_s=age,
            fresh=age is not None and age <= system.rpo_s,
            last_backup=last.get(("backup", kind)),
            last_mirror=last.get(("mirror", kind)),
            last_verify=verify[0] if verify else None,
            snapshot=snap,
            immutable=kind == "immutable",
            lock_until=snap.retain_until if snap else None,
        )
    primary = copies.get("primary")
    if primary and primary.newest:
        for kind, c in copies.items():
            if kind != "primary" and c.newest:
                copies[kind] = replace(c, lag_s=max(0.0, (primary.newest - c.newest).total_seconds()))
    mirrors = [ok[k][0].finished_at for k in ok if k[0] == "mirror" and ok[k][0].finished_at]
    verify = ok.get(("verify", "primary"))
    last_verify = verify[0].finished_at if verify else None
    drill_runs = [r for (kind, _), r in last.items() if kind == "drill"]
    drill_run = max(drill_runs, key=lambda r: r.started_at, default=None)
    reasons = evaluate(system, copies, last_verify, drill, alarms, now, drill_run)
    return SystemStatus(
        system=system,
        copies=copies,
        last_backup=primary.newest if primary else None,
        backup_age_s=primary.age_s if primary else None,
        last_mirror=max(mirrors, default=None),
        last_verify=last_verify,
        last_drill=drill,
        open_alarms=alarms,
        verdict=primary.snapshot.verdict if primary and primary.snapshot else None,
        last_runs={(k, c or None): r for (k, c), r in sorted(last.items())},
        running=claim,
        meets_class=not reasons,
        reasons=reasons,
    )
