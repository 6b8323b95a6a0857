"""The agent's state store: every run, claim, snapshot seen, drill, alarm and notification (docs/agent.md).

One `StateStore` over SQLAlchemy Core: SQLite by default (`sqlite:///path`: WAL, busy timeout, foreign
keys), PostgreSQL by URL (`postgresql+psycopg://...`) when many agents share it. `StateStore.open(url)`
brings the schema to head with the Alembic revisions in `migrations/`, under a lock (a PostgreSQL
advisory lock; SQLite's write lock, BEGIN IMMEDIATE) so agents starting together do not race.

Exclusion between agents is done by the database, never by reading then writing:
- `claim` is one conditional UPSERT: insert the claim, or take over an *expired* one; the row it returns
  (RETURNING) says who won;
- `start_run` inserts under the unique (system, kind, copy, slot): a second run of a schedule slot, by any
  agent, is refused (None).

The fleet queries (`status`, for `cermin agent status`, the dashboard and the metrics) cost a fixed number of
SQL statements whatever the fleet size: grouped reads, never one query per system.

Every function takes `now` (an aware datetime) or asks the store's injectable clock, so scheduling runs on a
fake clock in tests. Everything handed in is validated: a bad value is a `StateError` with one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from cermin.ops import stateschema as t
from cermin.ops.config import Config, ResolvedSystem
from cermin.ops.fleetstatus import CopyStatus, SystemStatus, evaluate
from cermin.ops.statealerts import Alerts
from cermin.ops.statedb import _sqlite_setup, state_url
from cermin.ops.statefleet import Fleet
from cermin.ops.staterows import (
    AgentRow,
    Alarm,
    Claim,
    Drill,
    Notification,
    Run,
    SeenSnapshot,
    SnapshotRecord,
    SyncResult,
    SystemRow,
)
from cermin.ops.statevalues import (
    DRILL_VERDICTS,
    FINISHED,
    GOOD,
    GUARD_VERDICTS,
    RUN_KINDS,
    StateError,
    _aware,
    _copy,
    _count,
    _details,
    _first_line,
    _name,
    _newest_first,
    _number,
    _one_of,
    _opt_time,
    _safe_url,
    _snap,
    _system_id,
    _text,
    system_digest,
)

__all__ = [
    "AgentRow",
    "Alarm",
    "Claim",
    "CopyStatus",
    "Drill",
    "Notification",
    "Run",
    "SeenSnapshot",
    "SnapshotRecord",
    "StateError",
    "StateStore",
    "SyncResult",
    "SystemRow",
    "SystemStatus",
    "evaluate",
]

HEAD = "0003"  # the newest revision in migrations/versions (a test checks it)
MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
_MIGRATE_LOCK = 0x6365726D696E01  # pg_advisory_xact_lock keys: "cermin" + 1 (migrate), + 2 (sync)
_SYNC_LOCK = 0x6365726D696E02


class StateStore(Alerts, Fleet):
    """The agent's record of every run. Thread-safe (a pool of connections); one per process. Alarms and
    notifications (`statealerts`) and the fleet queries (`statefleet`) are its own methods, kept apart."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        busy_timeout_s: float = 30.0,
        connect_timeout_s: int = 10,
    ) -> None:
        self.url = state_url(url)
        self.display_url = self.url.render_as_string(hide_password=True)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.dialect = "postgresql" if self.url.drivername.startswith("postgresql") else "sqlite"
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert

            path = self.url.database or ""
            if path and path != ":memory:" and not path.startswith("file:"):
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            memory = not path or path == ":memory:"
            self.engine = sa.create_engine(
                self.url,
                connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
                # an in-memory store (tests, demos) is one connection, or each thread would see its own
                poolclass=sa.pool.StaticPool if memory else None,
            )
            _sqlite_setup(self.engine, int(busy_timeout_s * 1000), wal=not memory)
        else:
            from sqlalchemy.dialects.postgresql import insert

            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise StateError("a PostgreSQL state store needs psycopg: pip install 'cermin[postgres]'") from None
            self.engine = sa.create_engine(
                self.url,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": connect_timeout_s,
                    "application_name": "cermin",
                    "options": "-c timezone=UTC",
                },
            )
        self._insert = insert

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] | None = None, upgrade: bool = True) -> StateStore:
        """Open a store and bring its schema to head (upgrade=False: only check it is at head)."""
        store = cls(url, clock=clock)
        try:
            store.upgrade() if upgrade else store.check_schema()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({self.display_url!r})"

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _now(self, now: datetime | None) -> datetime:
        return _aware(self.clock() if now is None else now, "now")

    @contextmanager
    def _tx(self, write: bool = False, consistent: bool = False, unknown: str = "") -> Iterator[sa.Connection]:
        """One transaction. write: take SQLite's write lock at BEGIN (a read-then-write transaction that
        upgrades later can fail at once with 'database is locked'); consistent: one snapshot for several
        reads (REPEATABLE READ on PostgreSQL; a SQLite transaction already is one)."""
        try:
            with self.engine.connect() as conn:
                if write:
                    conn = conn.execution_options(cermin_write=True)
                if consistent and self.dialect == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except exc.IntegrityError as e:
            raise StateError(unknown or f"the state store refused the change: {_first_line(e)}") from None
        except exc.DBAPIError as e:
            raise StateError(f"state store {self.display_url}: {_first_line(e)}") from None

    def _upsert(self, table: sa.Table, values: dict | list[dict], keys: list[str], update: list[str], where=None):
        stmt = self._insert(table)
        if not isinstance(values, list):
            stmt = stmt.values(values)
        if not update:
            return stmt.on_conflict_do_nothing(index_elements=keys)
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={k: getattr(stmt.excluded, k) for k in update}, where=where
        )

    # ---- schema --------------------------------------------------------------------------------------------
    def schema_version(self) -> str | None:
        with self._tx() as c:
            if not sa.inspect(c).has_table(t.VERSION_TABLE):
                return None
            return c.execute(sa.text(f"SELECT version_num FROM {t.VERSION_TABLE}")).scalar()

    def check_schema(self) -> None:
        v = self.schema_version()
        if v != HEAD:
            raise StateError(
                f"the state store {self.display_url} is at schema {v or '(empty)'}, this cermin needs {HEAD}: "
                "start the agent once (it upgrades the store)"
            )

    def upgrade(self) -> None:
        """Bring the schema to head. Several processes may call this at once: one migrates, under the
        migration lock, the others wait for it and find the schema at head."""
        if self.schema_version() == HEAD:
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.util import CommandError

        with self._tx(write=True) as c:
            if self.dialect == "postgresql":
                c.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK)))
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", MIGRATIONS)
            cfg.attributes["connection"] = c
            try:
                command.upgrade(cfg, "head")
            except CommandError as e:
                raise StateError(
                    f"cannot upgrade the state store {self.display_url}: {e} (was it upgraded by a newer cermin?)"
                ) from None

    # ---- configuration -------------------------------------------------------------------------------------
    def sync_config(self, cfg: Config, now: datetime | None = None, *, retire_missing: bool = True) -> SyncResult:
        """Write the configuration's tenants, repositories and systems (class terms, copies, schedule).
        Systems no longer configured are retired (kept, with their history), unless retire_missing is
        False (agents sharing a store should share one configuration). A fixed number of statements."""
        now = self._now(now)
        tenants = {
            k: {"id": k, "name": _text(v.name or k, 200), "updated_at": now, "retired_at": None}
            for k, v in cfg.tenants.items()
        }
        used: dict[str, set[str]] = {}
        for s in cfg.systems:
            for kind, rname in s.copies.items():
                used.setdefault(rname, set()).add(kind)
        repos = {}
        for name, r in cfg.repositories.items():
            kind = r.kind or (next(iter(used[name])) if len(used.get(name, ())) == 1 else "")
            repos[name] = {"name": name, "kind": kind, "url": _safe_url(r.url), "updated_at": now, "retired_at": None}
        systems = {s.id: self._system_values(s, now) for s in cfg.systems}
        result = SyncResult()
        with self._tx(write=True) as c:
            if self.dialect == "postgresql":
                c.execute(sa.select(sa.func.pg_advisory_xact_lock(_SYNC_LOCK)))
            have_t = {r.id: r for r in c.execute(sa.select(t.tenants))}
            have_r = {r.name: r for r in c.execute(sa.select(t.repositories))}
            have_s = {r.id: r for r in c.execute(sa.select(t.systems.c.id, t.systems.c.digest, t.systems.c.retired_at))}

            def changed(have, key, row, cols):
                old = have.get(key)
                return old is None or old.retired_at is not None or any(getattr(old, k) != row[k] for k in cols)

            rows = [v for k, v in sorted(tenants.items()) if changed(have_t, k, v, ("name",))]
            if rows:
                c.execute(self._upsert(t.tenants, rows, ["id"], ["name", "updated_at", "retired_at"]), rows)
            rows = [v for k, v in sorted(repos.items()) if changed(have_r, k, v, ("kind", "url"))]
            if rows:
                c.execute(
                    self._upsert(t.repositories, rows, ["name"], ["kind", "url", "updated_at", "retired_at"]), rows
                )
            rows = [v for k, v in sorted(systems.items()) if changed(have_s, k, v, ("digest",))]
            if rows:
                cols = [k for k in rows[0] if k != "id"]
                c.execute(self._upsert(t.systems, rows, ["id"], cols), rows)
            for v in rows:
                old = have_s.get(v["id"])
                (result.changed if old is not None and old.retired_at is None else result.added).append(v["id"])
            if retire_missing:
                for table, have, keep, key in (
                    (t.systems, have_s, systems, "id"),
                    (t.tenants, have_t, tenants, "id"),
                    (t.repositories, have_r, repos, "name"),
                ):
                    gone = sorted(k for k, r in have.items() if k not in keep and r.retired_at is None)
                    if gone:
                        c.execute(sa.update(table).where(table.c[key].in_(gone)).values(retired_at=now))
                    if table is t.systems:
                        result.retired.extend(gone)
        return result

    @staticmethod
    def _system_values(s: ResolvedSystem, now: datetime) -> dict:
        p = s.policy
        return {
            "id": s.id,
            "tenant": s.tenant,
            "name": s.name,
            "policy": p.name,
            "rpo_s": p.rpo,
            "rto_s": p.rto,
            "drill_every_s": p.drill_every,
            "verify_every_s": p.verify_every,
            "priority": p.priority,
            "required": list(p.copies),
            "copies": dict(s.copies),
            "schedule": _text(s.schedule, 200),
            "interval_s": s.interval,
            "hostname": _text(s.hostname, 255),
            "description": s.description,
            "digest": system_digest(s),
            "updated_at": now,
            "retired_at": None,
        }

    # ---- claims: one agent per system at a time ------------------------------------------------------------
    def claim(self, system_id: str, agent: str, kind: str, ttl_s: float, now: datetime | None = None) -> bool:
        """Claim a system for `agent`: True if it had no claim or an expired one (taken over), False while
        another claim is live — the agent's own included (claims do not nest). Atomic across processes
        and hosts: one conditional UPSERT, decided by the row it returns. Taking over an expired claim marks the
        runs its holder left 'running' as failed (that agent stopped before finishing them)."""
        now, agent = self._now(now), _name(agent, "agent name")
        _system_id(system_id)
        _one_of(kind, RUN_KINDS, "run kind")
        ttl = _number(ttl_s, "claim ttl", optional=False)
        values = {"system_id": system_id, "agent": agent, "kind": kind, "claimed_at": now}
        values["expires_at"] = now + timedelta(seconds=ttl)
        with self._tx(write=True, unknown=f"unknown system {system_id!r} (sync the configuration first)") as c:
            prev = c.execute(sa.select(t.claims).where(t.claims.c.system_id == system_id)).first()
            if prev is not None and prev.expires_at > now:
                return False
            cols = ["agent", "kind", "claimed_at", "expires_at"]
            stmt = self._upsert(t.claims, values, ["system_id"], cols, t.claims.c.expires_at <= now)
            won = c.execute(stmt.returning(t.claims.c.agent)).first() is not None  # a row: inserted or taken over
            if won and prev is not None:
                error = f"abandoned: agent {prev.agent} stopped before finishing (its claim expired)"
                c.execute(
                    sa.update(t.runs)
                    .where(t.runs.c.system_id == system_id, t.runs.c.status == "running", t.runs.c.agent == prev.agent)
                    .values(status="failed", finished_at=now, error=error)
                )
            return won

    def renew(self, system_id: str, agent: str, ttl_s: float, now: datetime | None = None) -> bool:
        """Extend the agent's claim; False if it no longer holds it (another agent took it over)."""
        now = self._now(now)
        ttl = _number(ttl_s, "claim ttl", optional=False)
        with self._tx(write=True) as c:
            q = sa.update(t.claims).where(t.claims.c.system_id == system_id, t.claims.c.agent == agent)
            return c.execute(q.values(expires_at=now + timedelta(seconds=ttl))).rowcount == 1

    def release(self, system_id: str, agent: str) -> bool:
        """Give the claim up; False if the agent did not hold it."""
        with self._tx(write=True) as c:
            q = sa.delete(t.claims).where(t.claims.c.system_id == system_id, t.claims.c.agent == agent)
            return c.execute(q).rowcount == 1

    def claims(self, now: datetime | None = None) -> list[Claim]:
        """Live claims: who works on what now."""
        now = self._now(now)
        with self._tx() as c:
            q = sa.select(t.claims).where(t.claims.c.expires_at > now).order_by(t.claims.c.system_id)
            return [Claim.of(r) for r in c.execute(q)]

    # ---- agents --------------------------------------------------------------------------------------------
    def heartbeat(
        self,
        agent: str,
        now: datetime | None = None,
        *,
        host: str | None = None,
        pid: int | None = None,
        version: str | None = None,
        started: bool = False,
    ) -> None:
        """The agent is alive (last_seen); started=True (with host, pid, version) when it starts."""
        now, agent = self._now(now), _name(agent, "agent name")
        if pid is not None:
            _count(pid, "pid")
        if version is None:
            from cermin import __version__ as version
        values = {"name": agent, "host": _text(host or "", 255), "pid": pid, "version": _text(version, 40)}
        values |= {"started_at": now, "last_seen": now}
        update = ["last_seen"] + (["host", "pid", "version", "started_at"] if started else [])
        with self._tx(write=True) as c:
            c.execute(self._upsert(t.agents, values, ["name"], update))

    def agents(self) -> list[AgentRow]:
        with self._tx() as c:
            return [AgentRow.of(r) for r in c.execute(sa.select(t.agents).order_by(t.agents.c.name))]

    def abandon_runs(self, agent: str, now: datetime | None = None, reason: str = "") -> int:
        """A restarted agent's leftovers: its runs still 'running' are marked failed and its claims
        dropped. Returns how many runs were marked."""
        now = self._now(now)
        error = f"abandoned: {reason or f'agent {agent} restarted before finishing'}"
        with self._tx(write=True) as c:
            q = sa.update(t.runs).where(t.runs.c.agent == agent, t.runs.c.status == "running")
            n = c.execute(q.values(status="failed", finished_at=now, error=_text(error))).rowcount
            c.execute(sa.delete(t.claims).where(t.claims.c.agent == agent))
            return n

    # ---- runs ----------------------------------------------------------------------------------------------
    def slot_done(self, system_id: str, kind: str, slot: datetime, copy: str | None = None) -> bool:
        """Has any agent started the run of this schedule slot (whatever became of it)?"""
        slot = _aware(slot, "slot")
        r = t.runs.c
        q = sa.select(r.id).where(r.system_id == system_id, r.kind == kind, r.copy == _copy(copy), r.slot == slot)
        with self._tx() as c:
            return c.execute(q.limit(1)).first() is not None

    def last_slots(self) -> dict[tuple[str, str], datetime]:
        """(system id, run kind) -> the newest schedule slot any agent started, whatever became of it:
        what the scheduler needs to know is due (ops/schedule.py). One grouped statement (the
        (system_id, kind, copy, slot) unique index serves it)."""
        r = t.runs.c
        q = sa.select(r.system_id, r.kind, sa.func.max(r.slot)).where(r.slot.is_not(None)).group_by(r.system_id, r.kind)
        with self._tx() as c:
            return {(sid, kind): slot for sid, kind, slot in c.execute(q) if slot is not None}

    def start_run(
        self,
        system_id: str,
        kind: str,
        slot: datetime | None,
        agent: str,
        copy: str | None = None,
        now: datetime | None = None,
        *,
        details: dict | None = None,
    ) -> int | None:
        """Record a run as started and return its id; None if this (system, kind, copy, slot) was already
        started by any agent — a slot runs once. slot=None (a manual run) is never refused."""
        now = self._now(now)
        values = {
            "system_id": _system_id(system_id),
            "kind": _one_of(kind, RUN_KINDS, "run kind"),
            "copy": _copy(copy),
            "slot": _opt_time(slot, "slot"),
            "agent": _name(agent, "agent name"),
            "started_at": now,
            "status": "running",
            "details": _details(details),
        }
        keys = ["system_id", "kind", "copy", "slot"]
        with self._tx(write=True, unknown=f"unknown system {system_id!r} (sync the configuration first)") as c:
            run_id = c.execute(self._upsert(t.runs, values, keys, []).returning(t.runs.c.id)).scalar()
            if run_id is None:
                return None
            latest = {"system_id": system_id, "kind": kind, "copy": values["copy"], "last_id": run_id, "last_at": now}
            lr = t.latest_runs.c
            newer = sa.or_(lr.last_at.is_(None), lr.last_at <= now)
            c.execute(self._upsert(t.latest_runs, latest, keys[:3], ["last_id", "last_at"], newer))
            return run_id

    def finish_run(
        self,
        run_id: int,
        status: str,
        now: datetime | None = None,
        *,
        bytes: int | None = None,
        files: int | None = None,
        snapshot_id: str | None = None,
        data_time: datetime | None = None,
        error: str | None = None,
        details: dict | None = None,
        attempts: int | None = None,
    ) -> Run:
        """Record how a run ended. data_time: the time of the newest data it left in its copy (a backup's
        snapshot time; a mirror's newest snapshot copied) — the copy's freshness; default its start."""
        now = self._now(now)
        values: dict[str, Any] = {"status": _one_of(status, FINISHED, "run status"), "finished_at": now}
        for k, v in (("bytes", bytes), ("files", files), ("attempts", attempts)):
            if v is not None:
                values[k] = _count(v, k)
        if snapshot_id is not None:
            values["snapshot_id"] = _snap(snapshot_id)
        if data_time is not None:
            values["data_time"] = _aware(data_time, "data_time")
        if error is not None:
            values["error"] = _text(error)
        if details is not None:
            values["details"] = _details(details)
        with self._tx(write=True) as c:
            row = c.execute(sa.select(t.runs).where(t.runs.c.id == run_id)).first()
            if row is None:
                raise StateError(f"no run {run_id} in the state store")
            values["duration_s"] = max(0.0, (now - row.started_at).total_seconds())
            c.execute(sa.update(t.runs).where(t.runs.c.id == run_id).values(values))
            if status in GOOD:
                ok_at = values.get("data_time") or row.data_time or row.started_at
                latest = {
                    "system_id": row.system_id,
                    "kind": row.kind,
                    "copy": row.copy,
                    "ok_id": run_id,
                    "ok_at": ok_at,
                }
                lr = t.latest_runs.c
                newer = sa.or_(lr.ok_at.is_(None), lr.ok_at <= ok_at)
                c.execute(self._upsert(t.latest_runs, latest, ["system_id", "kind", "copy"], ["ok_id", "ok_at"], newer))
            return Run.of(c.execute(sa.select(t.runs).where(t.runs.c.id == run_id)).one())

    def run(self, run_id: int) -> Run | None:
        with self._tx() as c:
            row = c.execute(sa.select(t.runs).where(t.runs.c.id == run_id)).first()
            return Run.of(row) if row else None

    def runs(
        self,
        system_id: str | None = None,
        limit: int = 100,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Run]:
        """Runs, newest first: of one system, one tenant or the fleet, in a time window (started_at)."""
        r = t.runs.c
        q = sa.select(t.runs)
        if system_id is not None:
            q = q.where(r.system_id == system_id)
        if tenant is not None:
            q = q.where(r.system_id.in_(sa.select(t.systems.c.id).where(t.systems.c.tenant == tenant)))
        if kind is not None:
            q = q.where(r.kind == kind)
        if status is not None:
            q = q.where(r.status == status)
        q = _newest_first(q, r.started_at, r.id, limit, since, until)
        with self._tx() as c:
            return [Run.of(x) for x in c.execute(q)]

    # ---- snapshots the agent saw ---------------------------------------------------------------------------
    def record_snapshot(
        self,
        system_id: str,
        copy: str,
        snapshot_id: str,
        time: datetime,
        now: datetime | None = None,
        **seen: Any,
    ) -> None:
        """One snapshot seen in one copy (size, files, verdict, score, retain_until, run_id as keywords)."""
        self.record_snapshots(system_id, copy, [SeenSnapshot(snapshot_id, time, **seen)], now)

    def record_snapshots(
        self,
        system_id: str,
        copy: str,
        seen: Iterable[SeenSnapshot],
        now: datetime | None = None,
        *,
        complete: bool = False,
    ) -> int:
        """Snapshots seen in one copy (the dashboard's timeline, the copy's guard verdicts and Object Lock
        retention). complete=True: `seen` is the whole listing, so snapshots recorded before and missing
        now are marked gone (forgotten). Returns how many were recorded; one statement per call."""
        now, copy = self._now(now), _copy(copy, optional=False)
        _system_id(system_id)
        rows = {}
        for s in seen:
            if s.verdict is not None:
                _one_of(s.verdict, GUARD_VERDICTS, "guard verdict")
            rows[_snap(s.snapshot_id)] = {
                "system_id": system_id,
                "copy": copy,
                "snapshot_id": s.snapshot_id,
                "time": _aware(s.time, "snapshot time"),
                "seen_at": now,
                "run_id": s.run_id,
                "size": _count(s.size, "size"),
                "files": _count(s.files, "files"),
                "verdict": s.verdict,
                "score": None if s.score is None else float(s.score),
                "retain_until": _opt_time(s.retain_until, "retain_until"),
                "gone_at": None,
            }
        update = ["time", "seen_at", "size", "files", "verdict", "score", "retain_until", "gone_at", "run_id"]
        sn = t.snapshots.c
        with self._tx(write=True, unknown=f"unknown system {system_id!r} or run (sync the configuration first)") as c:
            if rows:
                batch = [rows[k] for k in sorted(rows)]
                c.execute(self._upsert(t.snapshots, batch, ["system_id", "copy", "snapshot_id"], update), batch)
            if complete:
                q = sa.update(t.snapshots).where(sn.system_id == system_id, sn.copy == copy, sn.gone_at.is_(None))
                if rows:
                    q = q.where(sn.seen_at < now)
                c.execute(q.values(gone_at=now))
        return len(rows)

    def snapshots(
        self,
        system_id: str | None = None,
        *,
        copy: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        verdicts: Iterable[str] | None = None,
        include_gone: bool = False,
        limit: int = 1000,
    ) -> list[SnapshotRecord]:
        """Snapshots seen, newest first: one system's timeline, or the fleet's guard verdicts in a window."""
        sn = t.snapshots.c
        q = sa.select(t.snapshots)
        if system_id is not None:
            q = q.where(sn.system_id == system_id)
        if copy is not None:
            q = q.where(sn.copy == copy)
        if since is not None:
            q = q.where(sn.time >= _aware(since, "since"))
        if until is not None:
            q = q.where(sn.time < _aware(until, "until"))
        if verdicts is not None:
            q = q.where(sn.verdict.in_(list(verdicts)))
        if not include_gone:
            q = q.where(sn.gone_at.is_(None))
        q = q.order_by(sn.time.desc(), sn.id.desc()).limit(max(1, min(int(limit), 1_000_000)))
        with self._tx() as c:
            return [SnapshotRecord.of(x) for x in c.execute(q)]

    def last_clean(self, before: datetime, *, tenant: str | None = None) -> list[SnapshotRecord]:
        """For recovery planning: per system and copy, the newest snapshot taken before `before` that the
        guard calls clean and that is still in its copy. One statement for the whole fleet."""
        before = _aware(before, "before")
        sn = t.snapshots.c
        rank = sa.func.row_number().over(partition_by=(sn.system_id, sn.copy), order_by=(sn.time.desc(), sn.id.desc()))
        q = sa.select(t.snapshots, rank.label("rank")).where(
            sn.time < before, sn.verdict == "clean", sn.gone_at.is_(None), sn.system_id.in_(self._live(tenant))
        )
        sub = q.subquery()
        with self._tx() as c:
            rows = c.execute(sa.select(sub).where(sub.c.rank == 1).order_by(sub.c.system_id, sub.c.copy))
            return [SnapshotRecord.of(r) for r in rows]

    # ---- drills --------------------------------------------------------------------------------------------
    def record_drill(
        self,
        system_id: str,
        snapshot_id: str,
        copy: str,
        *,
        started_at: datetime,
        rto_measured_s: float,
        rto_target_s: float,
        verdict: str,
        run_id: int | None = None,
        bytes: int | None = None,
        files: int | None = None,
        bytes_per_s: float | None = None,
        report_id: str | None = None,
        report_digest: str | None = None,
        signature_ok: bool | None = None,
        error: str | None = None,
        details: dict | None = None,
        now: datetime | None = None,
    ) -> int:
        """A drill's outcome (finished now): what was restored from which copy, the measured RTO against the
        target, the verdict, and the signed report's aux id and digest. Restore speed defaults to
        bytes / measured RTO."""
        now = self._now(now)
        measured = _number(rto_measured_s, "measured RTO", optional=False)
        if bytes_per_s is None and bytes and measured:
            bytes_per_s = bytes / measured
        values = {
            "run_id": run_id,
            "system_id": _system_id(system_id),
            "snapshot_id": _snap(snapshot_id),
            "copy": _copy(copy, optional=False),
            "started_at": _aware(started_at, "started_at"),
            "finished_at": now,
            "rto_measured_s": measured,
            "rto_target_s": _number(rto_target_s, "RTO target", optional=False),
            "verdict": _one_of(verdict, DRILL_VERDICTS, "drill verdict"),
            "bytes": _count(bytes, "bytes"),
            "files": _count(files, "files"),
            "bytes_per_s": _number(bytes_per_s, "restore speed"),
            "report_id": None if report_id is None else _name(report_id, "report id"),
            "report_digest": None if report_digest is None else _name(report_digest, "report digest", 128),
            "signature_ok": None if signature_ok is None else bool(signature_ok),
            "error": _text(error),
            "details": _details(details),
        }
        with self._tx(write=True, unknown=f"unknown system {system_id!r} or run {run_id}") as c:
            return c.execute(sa.insert(t.drills).values(values).returning(t.drills.c.id)).scalar_one()

    def drills(
        self,
        system_id: str | None = None,
        limit: int = 100,
        *,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Drill]:
        """Drills, newest first (finished_at): one system's RTO history, or a tenant's or the fleet's."""
        d = t.drills.c
        q = sa.select(t.drills)
        if system_id is not None:
            q = q.where(d.system_id == system_id)
        if tenant is not None:
            q = q.where(d.system_id.in_(sa.select(t.systems.c.id).where(t.systems.c.tenant == tenant)))
        q = _newest_first(q, d.finished_at, d.id, limit, since, until)
        with self._tx() as c:
            return [Drill.of(x) for x in c.execute(q)]
