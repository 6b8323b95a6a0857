"""The state store's fleet queries: systems, tenants and every system's status now, in a fixed number of
statements whatever the fleet size (mixed into `cermin.ops.state.StateStore`, whose transactions and clock
they use)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from cermin.ops import stateschema as t
from cermin.ops.config import COPY_KINDS
from cermin.ops.fleetstatus import SystemStatus, build_status
from cermin.ops.staterows import Alarm, Claim, Drill, Run, SnapshotRecord, SystemRow
from cermin.ops.statevalues import _system_id


class Fleet:
    def _live(self, tenant: str | None = None, include_retired: bool = False):
        q = sa.select(t.systems.c.id)
        if not include_retired:
            q = q.where(t.systems.c.retired_at.is_(None))
        if tenant is not None:
            q = q.where(t.systems.c.tenant == tenant)
        return q

    def systems(self, *, tenant: str | None = None, include_retired: bool = False) -> list[SystemRow]:
        s = t.systems.c
        q = sa.select(t.systems).where(s.id.in_(self._live(tenant, include_retired))).order_by(s.tenant, s.name)
        with self._tx() as c:
            return [SystemRow.of(r) for r in c.execute(q)]

    def tenants(self, include_retired: bool = False) -> dict[str, str]:
        """tenant id -> display name."""
        q = sa.select(t.tenants.c.id, t.tenants.c.name).order_by(t.tenants.c.id)
        if not include_retired:
            q = q.where(t.tenants.c.retired_at.is_(None))
        with self._tx() as c:
            return {r.id: r.name for r in c.execute(q)}

    def status(self, now: datetime | None = None, *, tenant: str | None = None) -> list[SystemStatus]:
        """Every live system (or one tenant's) with its copies, last runs, last drill, open alarms, and whether
        it meets its class now and why not. Seven statements in one consistent read, whatever the fleet size."""
        now = self._now(now)
        live = self._live(tenant)
        s, lr, d, sn, a, cl = (x.c for x in (t.systems, t.latest_runs, t.drills, t.snapshots, t.alarms, t.claims))
        with self._tx(consistent=True) as c:
            system_rows = [
                SystemRow.of(r)
                for r in c.execute(sa.select(t.systems).where(s.id.in_(live)).order_by(s.tenant, s.name))
            ]
            latest = c.execute(sa.select(t.latest_runs).where(lr.system_id.in_(live))).all()
            ids = sa.union(
                sa.select(lr.last_id).where(lr.system_id.in_(live)), sa.select(lr.ok_id).where(lr.system_id.in_(live))
            )
            runs = {r.id: Run.of(r) for r in c.execute(sa.select(t.runs).where(t.runs.c.id.in_(ids)))}
            rank = sa.func.row_number().over(partition_by=d.system_id, order_by=(d.finished_at.desc(), d.id.desc()))
            sub = sa.select(t.drills, rank.label("rank")).where(d.system_id.in_(live)).subquery()
            drills = {r.system_id: Drill.of(r) for r in c.execute(sa.select(sub).where(sub.c.rank == 1))}
            snaps = {(r.system_id, r.copy): SnapshotRecord.of(r) for r in c.execute(self._newest_snapshots(tenant))}
            alarms: dict[str, list[Alarm]] = {}
            q = sa.select(t.alarms).where(a.acknowledged_at.is_(None), a.system_id.in_(live)).order_by(a.opened_at)
            for r in c.execute(q):
                alarms.setdefault(r.system_id, []).append(Alarm.of(r))
            q = sa.select(t.claims).where(cl.expires_at > now, cl.system_id.in_(live))
            claims = {r.system_id: Claim.of(r) for r in c.execute(q)}
        last: dict[str, dict[tuple[str, str], Run]] = {}
        ok: dict[str, dict[tuple[str, str], tuple[Run, datetime]]] = {}
        for r in latest:
            if r.last_id in runs:
                last.setdefault(r.system_id, {})[(r.kind, r.copy)] = runs[r.last_id]
            if r.ok_id in runs and r.ok_at is not None:
                ok.setdefault(r.system_id, {})[(r.kind, r.copy)] = (runs[r.ok_id], r.ok_at)
        return [
            build_status(
                row,
                last.get(row.id, {}),
                ok.get(row.id, {}),
                drills.get(row.id),
                snaps,
                alarms.get(row.id, []),
                claims.get(row.id),
                now,
            )
            for row in system_rows
        ]

    def _newest_snapshots(self, tenant: str | None):
        """The newest snapshot still in each copy of each live system: one statement, one index seek per
        (system, copy) on (system_id, copy, time) — not a pass over every snapshot ever seen, which made
        status() grow with the history (bench/dashboard: 1 s for 500 systems and 540,000 snapshots)."""
        live = self._live(tenant).subquery("live")
        kinds = sa.union_all(*(sa.select(sa.literal(k).label("copy")) for k in COPY_KINDS)).subquery("kinds")
        n = t.snapshots.alias("newest")
        newest = (
            sa.select(n.c.id)
            .where(n.c.system_id == live.c.id, n.c.copy == kinds.c.copy, n.c.gone_at.is_(None))
            .order_by(n.c.time.desc(), n.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        ids = sa.select(newest).select_from(live.join(kinds, sa.true()))
        return sa.select(t.snapshots).where(t.snapshots.c.id.in_(ids))

    def system_status(self, system_id: str, now: datetime | None = None) -> SystemStatus | None:
        tenant = _system_id(system_id).split("/", 1)[0]
        return next((x for x in self.status(now, tenant=tenant) if x.id == system_id), None)
