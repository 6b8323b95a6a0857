"""One system's history, a page at a time: the snapshot timeline (each snapshot with the copies that hold
it) and its runs, newest first, for the dashboard's system page (docs/dashboard.md).

Each page is one statement whatever the history's length: keyset pagination on (time, tie-breaker), so a
page never skips or repeats a row when many share a time (a backup and its mirrors start together) and
costs the same on the thousandth page as on the first. A `Cursor` is the position after a page's last
row; `str(cursor)` is its URL form and `Cursor.parse` reads it back (None for anything else).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa

from cermin.ops import stateschema as t
from cermin.ops.state import StateStore
from cermin.ops.staterows import Run, SnapshotRecord

_CURSOR = re.compile(r"^(\d{8}T\d{6}\.\d{6}Z)_([0-9a-f]{1,128}|\d{1,18})$")
COPY_ORDER = {"primary": 0, "immutable": 1, "mirror": 2}


@dataclass(frozen=True)
class Cursor:
    """After (time, key): the next page holds what is older, or as old with a smaller key."""

    time: datetime
    key: str  # a snapshot id, or a run id in decimal

    def __str__(self) -> str:
        return f"{self.time.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}_{self.key}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        m = _CURSOR.match(text or "")
        if not m:
            return None
        return cls(datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC), m.group(2))


@dataclass(frozen=True)
class TimelineEntry:
    """A snapshot and the copies the agent saw it in (`copies`: copy kind -> its record, newest state;
    a record with gone_at set: forgotten from that copy)."""

    snapshot_id: str
    time: datetime
    copies: dict[str, SnapshotRecord] = field(default_factory=dict)

    @property
    def main(self) -> SnapshotRecord:
        """The record the timeline shows its size and verdict from: the primary's, else the first copy's."""
        return self.copies.get("primary") or next(iter(self.copies.values()))

    @property
    def size(self) -> int | None:
        return next((r.size for r in self.copies.values() if r.size is not None), None)

    @property
    def files(self) -> int | None:
        return next((r.files for r in self.copies.values() if r.files is not None), None)

    @property
    def verdict(self) -> str | None:
        return self.main.verdict or next((r.verdict for r in self.copies.values() if r.verdict), None)

    @property
    def held_by(self) -> list[str]:
        """The copies that hold it now (not forgotten there)."""
        return [k for k, r in self.copies.items() if r.gone_at is None]


def snapshot_timeline(
    store: StateStore,
    system_id: str,
    *,
    since: datetime | None = None,
    after: Cursor | None = None,
    limit: int = 25,
) -> tuple[list[TimelineEntry], Cursor | None]:
    """Up to `limit` snapshots of a system (taken at or after `since`, older than the cursor), newest
    first, each with every copy's record, forgotten ones included -> (entries, cursor of the next page or
    None). One statement."""
    limit = max(1, min(int(limit), 1000))
    sn = t.snapshots.c
    newest = sa.func.max(sn.time)
    groups = sa.select(sn.snapshot_id, newest.label("t")).where(sn.system_id == system_id)
    if since is not None:
        groups = groups.where(sn.time >= since)
    groups = groups.group_by(sn.snapshot_id)
    if after is not None:
        groups = groups.having(sa.or_(newest < after.time, sa.and_(newest == after.time, sn.snapshot_id < after.key)))
    groups = groups.order_by(newest.desc(), sn.snapshot_id.desc()).limit(limit + 1).subquery()
    q = (
        sa.select(t.snapshots)
        .join(groups, groups.c.snapshot_id == sn.snapshot_id)
        .where(sn.system_id == system_id)
        .order_by(groups.c.t.desc(), sn.snapshot_id.desc(), sn.copy)
    )
    copies: dict[str, dict[str, SnapshotRecord]] = {}
    with store._tx() as c:
        for row in c.execute(q):
            rec = SnapshotRecord.of(row)
            copies.setdefault(rec.snapshot_id, {})[rec.copy] = rec
    out = [
        TimelineEntry(
            sid,
            max(r.time for r in recs.values()),  # the group's time, as the page's query orders it
            dict(sorted(recs.items(), key=lambda kv: COPY_ORDER.get(kv[0], 9))),
        )
        for sid, recs in copies.items()
    ]
    out.sort(key=lambda e: (e.time, e.snapshot_id), reverse=True)
    if len(out) <= limit:
        return out, None
    out = out[:limit]
    return out, Cursor(out[-1].time, out[-1].snapshot_id)


def run_page(
    store: StateStore, system_id: str, *, after: Cursor | None = None, limit: int = 25
) -> tuple[list[Run], Cursor | None]:
    """Up to `limit` runs of a system older than the cursor, newest first (started_at, then id) ->
    (runs, cursor of the next page or None). One statement."""
    limit = max(1, min(int(limit), 1000))
    r = t.runs.c
    q = sa.select(t.runs).where(r.system_id == system_id)
    if after is not None:
        if not after.key.isdigit():
            return [], None
        rid = int(after.key)
        q = q.where(sa.or_(r.started_at < after.time, sa.and_(r.started_at == after.time, r.id < rid)))
    q = q.order_by(r.started_at.desc(), r.id.desc()).limit(limit + 1)
    with store._tx() as c:
        runs = [Run.of(x) for x in c.execute(q)]
    if len(runs) <= limit:
        return runs, None
    runs = runs[:limit]
    return runs, Cursor(runs[-1].started_at, str(runs[-1].id))
