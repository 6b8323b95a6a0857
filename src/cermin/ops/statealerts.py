"""The state store's guard alarms and sent notifications (mixed into `cermin.ops.state.StateStore`, whose
transactions, clock and upsert they use)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from cermin.ops import stateschema as t
from cermin.ops.staterows import Alarm, Notification
from cermin.ops.statevalues import (
    _EVENT,
    _URL_NAME,
    GUARD_VERDICTS,
    StateError,
    _copy,
    _name,
    _newest_first,
    _one_of,
    _snap,
    _system_id,
    _text,
)


class Alerts:
    # ---- alarms --------------------------------------------------------------------------------------------
    def open_alarm(
        self,
        system_id: str,
        copy: str,
        snapshot_id: str,
        verdict: str,
        reasons: Iterable[str],
        *,
        score: float | None = None,
        now: datetime | None = None,
    ) -> int:
        """Open a guard alarm on a snapshot; returns its id. Seeing the same snapshot again returns the same
        alarm (an acknowledged one stays acknowledged)."""
        now = self._now(now)
        values = {
            "system_id": _system_id(system_id),
            "copy": _copy(copy, optional=False),
            "snapshot_id": _snap(snapshot_id),
            "verdict": _one_of(verdict, GUARD_VERDICTS, "guard verdict"),
            "score": None if score is None else float(score),
            "reasons": [_text(r, 500) for r in list(reasons)[:50]],
            "opened_at": now,
        }
        a = t.alarms.c
        keys = ["system_id", "copy", "snapshot_id"]
        with self._tx(write=True, unknown=f"unknown system {system_id!r} (sync the configuration first)") as c:
            c.execute(self._upsert(t.alarms, values, keys, []))
            q = sa.select(a.id).where(a.system_id == system_id, a.copy == copy, a.snapshot_id == snapshot_id)
            return c.execute(q).scalar_one()

    def ack_alarm(self, alarm_id: int, by: str, *, note: str | None = None, now: datetime | None = None) -> bool:
        """Acknowledge an open alarm (who, when, why); False if there is none open with that id."""
        now, by = self._now(now), _name(by, "acknowledging user")
        with self._tx(write=True) as c:
            q = sa.update(t.alarms).where(t.alarms.c.id == alarm_id, t.alarms.c.acknowledged_at.is_(None))
            return c.execute(q.values(acknowledged_by=by, acknowledged_at=now, note=_text(note))).rowcount == 1

    def alarms(
        self,
        *,
        open_only: bool = True,
        system_id: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[Alarm]:
        """Alarms, newest first: the open ones (default) or all, of a system, a tenant or the fleet, opened in
        a time window."""
        a = t.alarms.c
        q = sa.select(t.alarms)
        if open_only:
            q = q.where(a.acknowledged_at.is_(None))
        if system_id is not None:
            q = q.where(a.system_id == system_id)
        if tenant is not None:
            q = q.where(a.system_id.in_(sa.select(t.systems.c.id).where(t.systems.c.tenant == tenant)))
        q = _newest_first(q, a.opened_at, a.id, limit, since, until)
        with self._tx() as c:
            return [Alarm.of(x) for x in c.execute(q)]

    # ---- notifications -------------------------------------------------------------------------------------
    def record_notification(
        self,
        event: str,
        target: str,
        title: str,
        *,
        system_id: str | None = None,
        ok: bool = True,
        error: str | None = None,
        now: datetime | None = None,
    ) -> int:
        """A notification sent (or that failed): the event (failure, rpo_breach, guard_alarm, drill_failure,
        mirror_lag, ...), the *name* of the target — never its URL, which may hold a token."""
        now = self._now(now)
        if not isinstance(event, str) or not _EVENT.match(event):
            raise StateError(f"bad notification event {event!r}")
        if "://" in _name(target, "notification target") and not _URL_NAME.match(target):
            raise StateError("a notification target is recorded by name (scheme://host at most), never by its URL")
        values = {
            "sent_at": now,
            "system_id": None if system_id is None else _system_id(system_id),
            "event": event,
            "target": target,
            "title": _text(title, 1000) or "",
            "ok": bool(ok),
            "error": _text(error),
        }
        with self._tx(write=True) as c:
            return c.execute(sa.insert(t.notifications).values(values).returning(t.notifications.c.id)).scalar_one()

    def last_notified(self, system_id: str | None, event: str, *, ok_only: bool = True) -> datetime | None:
        """When this event was last notified for this system (None: the fleet), to avoid repeating it."""
        n = t.notifications.c
        who = n.system_id.is_(None) if system_id is None else n.system_id == system_id
        q = sa.select(sa.func.max(n.sent_at)).where(who, n.event == event)
        if ok_only:
            q = q.where(n.ok.is_(True))
        with self._tx() as c:
            return c.execute(q).scalar()

    def last_sent(self) -> dict[tuple[str | None, str], datetime]:
        """(system id, event) -> when it was last delivered: which conditions the fleet was told about,
        shared by every agent (one grouped statement)."""
        n = t.notifications.c
        q = sa.select(n.system_id, n.event, sa.func.max(n.sent_at)).where(n.ok.is_(True))
        with self._tx() as c:
            return {(sid, ev): at for sid, ev, at in c.execute(q.group_by(n.system_id, n.event)) if at is not None}

    def notifications(
        self, *, system_id: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[Notification]:
        n = t.notifications.c
        q = sa.select(t.notifications)
        if system_id is not None:
            q = q.where(n.system_id == system_id)
        q = _newest_first(q, n.sent_at, n.id, limit, since)
        with self._tx() as c:
            return [Notification.of(x) for x in c.execute(q)]
