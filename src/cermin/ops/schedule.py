"""When each system's jobs are due (docs/agent.md "Schedules"). Pure functions of the config, what the state
store says was done, and `now`: the agent's loop and `cermin config check` use them, tests run them on a
fake clock.

Jobs per system:
- `backup`: every source into the primary copy, then the other copies (immutable tier, tenant mirror)
  mirrored from it, then forget by the class retention. Slots come from the system's cron expression,
  else every `interval` (half the class RPO), shifted by a stable per-system offset so a fleet does not
  start on the same second.
- `maintain`: daily — prune, Object Lock extension on the immutable copy, and one slice of the rotating
  read-data verification (`check --read-data-subset k/N`, N = the class's verify_every in days, so every
  pack is read within the cycle).
- `drill`: every `drill_every` — restore, verify, app-check, measured RTO (ops/drill.py).

A slot is the scheduled time a run serves; a job is due when its latest slot at or before `now` has not
been done. Only the latest slot counts: an agent that was down for a day runs each job once, not once
per missed slot (catch-up without a burst), most urgent first (class priority, then how overdue).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cermin.ops.config import Config, ResolvedSystem

BACKUP, MAINTAIN, DRILL = "backup", "maintain", "drill"
JOB_KINDS = (BACKUP, MAINTAIN, DRILL)
DAY = 86400
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Job:
    system: ResolvedSystem
    kind: str
    slot: datetime  # the scheduled time this run serves (unique per system and kind)
    overdue: float  # seconds since the slot

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.system.id, self.kind, self.slot)


def offset(system_id: str, kind: str, period: int) -> int:
    """A stable shift in [0, period): spreads a fleet's slots; the same on every agent and every restart."""
    h = int.from_bytes(hashlib.sha256(f"{system_id}\0{kind}".encode()).digest()[:8], "big")
    return h % period


def period_of(system: ResolvedSystem, kind: str) -> int:
    """Seconds between slots for interval schedules (0: the system's cron expression decides)."""
    if kind == BACKUP:
        return 0 if system.schedule else system.interval
    if kind == MAINTAIN:
        return DAY
    if kind == DRILL:
        return system.policy.drill_every
    raise ValueError(f"unknown job kind {kind!r}")


def latest_slot(system: ResolvedSystem, kind: str, now: datetime) -> datetime:
    """The newest slot at or before `now`."""
    period = period_of(system, kind)
    if period:
        shift = offset(system.id, kind, period)
        t = (now - _EPOCH).total_seconds() - shift
        return _EPOCH + timedelta(seconds=(t // period) * period + shift)
    from cronsim import CronSim

    # reverse iteration yields times strictly before its start: start one second after now
    return next(CronSim(system.schedule, now.replace(microsecond=0) + timedelta(seconds=1), reverse=True))


def next_slot(system: ResolvedSystem, kind: str, now: datetime) -> datetime:
    """The first slot after `now`."""
    period = period_of(system, kind)
    if period:
        return latest_slot(system, kind, now) + timedelta(seconds=period)
    from cronsim import CronSim

    return next(CronSim(system.schedule, now.replace(microsecond=0)))


def due_jobs(cfg: Config, done: Mapping[tuple[str, str], datetime], now: datetime) -> list[Job]:
    """Every job whose latest slot is not done yet, most urgent first. `done[(system id, kind)]` is the
    newest slot recorded as run (any result: a failed run is retried within its run, not per slot)."""
    jobs = []
    for s in cfg.systems:
        for kind in JOB_KINDS:
            slot = latest_slot(s, kind, now)
            last = done.get((s.id, kind))
            if last is None or last < slot:
                jobs.append(Job(s, kind, slot, (now - slot).total_seconds()))
    # backups before maintenance before drills; within a kind, the class priority, then the oldest slot
    return sorted(jobs, key=lambda j: (JOB_KINDS.index(j.kind), j.system.policy.priority, -j.overdue, j.system.id))


def verify_slice(system: ResolvedSystem, slot: datetime) -> tuple[int, int]:
    """(k, n) for `check --read-data-subset k/n` on the daily maintenance of `slot`: n = the class's verify
    cycle in days, k walks 1..n one per day, so every pack is read once per cycle."""
    n = max(1, system.policy.verify_every // DAY)
    day = int((slot - _EPOCH).total_seconds() // DAY)
    return day % n + 1, n
