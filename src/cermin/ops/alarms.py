"""Guard alarms in the state store, acknowledged where the evidence lives (docs/dashboard.md "Alerts").

The agent opens an alarm when the guard flags a new snapshot (ops/agent.py). Acknowledging it — the
operator says the alarm is benign — is two records, in this order:

1. a `guard_ack` aux record in the repository of the copy that holds the snapshot
   (`ops.commands.guard_ack`, docs/guard.md): the guard, forget and drills then judge the snapshot
   clean, whoever reads the repository;
2. the store's acknowledgement (who, when, the note), which the fleet status and the dashboard read.

The repository comes first. If it cannot be written (unreachable, wrong password, the snapshot gone, the
repository still judging the snapshot an alarm), the store is left as it was and the error is raised: an
alarm acknowledged in the store is always acknowledged in its repository too. The command line, the
agent and the dashboard all acknowledge through `acknowledge_alarm`, so the rule holds for each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from cermin.errors import CerminError
from cermin.ops import stateschema as t
from cermin.ops.config import Config
from cermin.ops.state import StateStore
from cermin.ops.staterows import Alarm

MAX_NOTE = 2000


class AlarmError(CerminError):
    """An acknowledgement that was not made (nothing changed in the store); the message says why."""


@dataclass(frozen=True)
class AckOutcome:
    alarm: Alarm  # as the store holds it now: acknowledged_by, acknowledged_at, note
    repository: str  # the configured repository the guard_ack record was written to
    record: str  # the guard_ack aux record's name
    before: str  # the repository's verdict of the snapshot before the acknowledgement
    after: str  # ... and after (clean)

    def to_json(self) -> dict:
        return {
            "message_type": "alarm_ack",
            "alarm": self.alarm.to_json(),
            "repository": self.repository,
            "record": self.record,
            "before": self.before,
            "verdict": self.after,
        }


# ---- reads (one statement each) ----------------------------------------------------------------------------
def _scope(tenant: str | None):
    """Alarms of the live systems (as the fleet status counts them), of one tenant or all."""
    s = t.systems.c
    live = sa.select(s.id).where(s.retired_at.is_(None))
    if tenant is not None:
        live = live.where(s.tenant == tenant)
    return t.alarms.c.system_id.in_(live)


def alarm(store: StateStore, alarm_id: int) -> Alarm | None:
    """One alarm by id, open or acknowledged."""
    with store._tx() as c:
        row = c.execute(sa.select(t.alarms).where(t.alarms.c.id == int(alarm_id))).first()
        return Alarm.of(row) if row else None


def open_count(store: StateStore, tenant: str | None = None) -> int:
    """How many alarms are open on live systems, in the fleet or one tenant."""
    a = t.alarms.c
    q = sa.select(sa.func.count()).select_from(t.alarms).where(a.acknowledged_at.is_(None), _scope(tenant))
    with store._tx() as c:
        return int(c.execute(q).scalar() or 0)


def open_alarms(store: StateStore, *, tenant: str | None = None, limit: int = 200) -> list[Alarm]:
    """Open alarms on live systems, the newest first (as `open_count` counts them)."""
    a = t.alarms.c
    q = sa.select(t.alarms).where(a.acknowledged_at.is_(None), _scope(tenant))
    q = q.order_by(a.opened_at.desc(), a.id.desc()).limit(max(1, min(int(limit), 10_000)))
    with store._tx() as c:
        return [Alarm.of(r) for r in c.execute(q)]


def acknowledged(
    store: StateStore, *, tenant: str | None = None, since: datetime | None = None, limit: int = 50
) -> list[Alarm]:
    """Acknowledged alarms on live systems, the most recently acknowledged first (since: acknowledged at
    or after)."""
    a = t.alarms.c
    q = sa.select(t.alarms).where(a.acknowledged_at.is_not(None), _scope(tenant))
    if since is not None:
        q = q.where(a.acknowledged_at >= since)
    q = q.order_by(a.acknowledged_at.desc(), a.id.desc()).limit(max(1, min(int(limit), 10_000)))
    with store._tx() as c:
        return [Alarm.of(r) for r in c.execute(q)]


# ---- acknowledging -----------------------------------------------------------------------------------------
def acknowledge_alarm(
    cfg: Config,
    store: StateStore,
    alarm_id: int,
    user: str,
    note: str,
    *,
    now: datetime | None = None,
    environ=None,
    no_lock: bool = False,
) -> AckOutcome:
    """Acknowledge an open alarm in the repository of its copy (a guard_ack record), then in the store
    (who, when, the note) -> AckOutcome. AlarmError, with the store unchanged, when the note is empty, the
    alarm is unknown or acknowledged already, or the repository cannot be opened or written."""
    from cermin.guard.verdict import ALARMS
    from cermin.ops import commands
    from cermin.ops.repos import copy_repo_name, open_config_repo

    note = (note or "").strip()
    if not note:
        raise AlarmError("an acknowledgement needs a note: why is this alarm benign?")
    if len(note) > MAX_NOTE:
        raise AlarmError(f"the note is too long (at most {MAX_NOTE} characters)")
    if not isinstance(user, str) or not user.strip():
        raise AlarmError("an acknowledgement names who makes it")
    found = alarm(store, alarm_id)
    if found is None:
        raise AlarmError(f"there is no alarm {alarm_id}")
    if found.acknowledged_at is not None:
        raise AlarmError(
            f"alarm {found.id} was acknowledged already, by {found.acknowledged_by} at "
            f"{found.acknowledged_at:%Y-%m-%d %H:%M} UTC"
        )
    what = f"snapshot {found.snapshot_id[:8]} of {found.system_id} ({found.copy} copy)"
    name = ""
    try:
        system = cfg.system(found.system_id)
        name = copy_repo_name(cfg, system, found.copy)
        repo = open_config_repo(cfg, name, environ)
        reason = f"{note} (acknowledged by {user}, alarm {found.id})"
        res = commands.guard_ack(repo, found.snapshot_id, reason, no_lock=no_lock)
    except (CerminError, OSError) as e:
        where = f" in the repository {name}" if name else ""
        raise AlarmError(f"could not acknowledge {what}{where}: {e}; the alarm stays open") from e
    if res.after in ALARMS:
        raise AlarmError(
            f"the repository {name} still judges {what} {res.after} after the acknowledgement "
            f"(record {res.record[:8]}): `cermin guard report {found.snapshot_id[:8]}` explains why; "
            "the alarm stays open"
        )
    if not store.ack_alarm(found.id, user, note=note, now=now):
        raise AlarmError(f"alarm {found.id} was acknowledged by someone else meanwhile")
    after = alarm(store, found.id)
    assert after is not None
    return AckOutcome(after, name, res.record, res.before, res.after)
