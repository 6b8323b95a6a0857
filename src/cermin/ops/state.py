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

import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy import event, exc

from cermin.errors import CerminError
from cermin.ops import stateschema as t
from cermin.ops.config import COPY_KINDS, Config, ResolvedSystem
from cermin.ops.fleetstatus import CopyStatus, SystemStatus, build_status, evaluate
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

RUN_KINDS = ("backup", "forget", "prune", "lock_extend", "mirror", "verify", "drill", "hook")
RUN_STATUSES = ("running", "ok", "warning", "failed", "skipped")
FINISHED = ("ok", "warning", "failed", "skipped")
GOOD = ("ok", "warning")  # a run that did its job (warnings: e.g. a file vanished while read)
GUARD_VERDICTS = ("clean", "suspicious", "infected", "unknown")  # cermin.guard.verdict
DRILL_VERDICTS = ("pass", "fail")

_SYSTEM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}$")
_SNAP_ID = re.compile(r"^[0-9a-f]{1,128}$")
_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_URL_NAME = re.compile(r"^[a-z][a-z0-9+.-]*://[a-z0-9.:\[\]-]*$", re.I)  # notify.url_name: no user, path or query
MAX_TEXT = 8000  # characters kept of an error text
MAX_DETAILS = 64 * 1024  # bytes of a details document


class StateError(CerminError):
    """The state store cannot be reached, is at an unknown schema, or was handed a bad value."""


# ---- validation --------------------------------------------------------------------------------------------
def _aware(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise StateError(f"{what} must be an aware datetime, not {value!r}")
    return value.astimezone(UTC)


def _opt_time(value: Any, what: str) -> datetime | None:
    return None if value is None else _aware(value, what)


def _system_id(value: Any) -> str:
    if not isinstance(value, str) or not _SYSTEM_ID.match(value):
        raise StateError(f"bad system id {value!r}: expected 'tenant/system'")
    return value


def _one_of(value: Any, allowed: tuple, what: str) -> Any:
    if value not in allowed:
        raise StateError(f"bad {what} {value!r} (expected one of {', '.join(allowed)})")
    return value


def _copy(value: Any, optional: bool = True) -> str:
    """'' stands for 'not about one copy' in the tables (so the unique slot key holds)."""
    if value is None and optional:
        return ""
    return _one_of(value, COPY_KINDS, "copy")


def _name(value: Any, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise StateError(f"bad {what} {value!r}: a printable name of 1..{limit} characters")
    return value


def _snap(value: Any) -> str:
    if not isinstance(value, str) or not _SNAP_ID.match(value):
        raise StateError(f"bad snapshot id {value!r}: expected lower-case hex")
    return value


def _count(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
        raise StateError(f"bad {what} {value!r}: a count of 0 or more")
    return value


def _number(value: Any, what: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e18:
        raise StateError(f"bad {what} {value!r}: a number of 0 or more")
    return float(value)


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _details(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateError("details must be a JSON object")
    try:
        raw = msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as e:
        raise StateError(f"details are not JSON: {e}") from None
    if len(raw) > MAX_DETAILS:
        raise StateError(f"details are {len(raw)} bytes (at most {MAX_DETAILS})")
    return msgspec.json.decode(raw)  # plain JSON types only


def _safe_url(url: str) -> str:
    """A repository URL without credentials, query or fragment (what the dashboard may show)."""
    url = re.sub(r"(://)[^/@]*@", r"\1", url)
    return re.split(r"[?#]", url, maxsplit=1)[0][:1000]


def system_digest(s: ResolvedSystem) -> str:
    """sha256 of a system's resolved configuration: sources, checks, hooks, class terms, copies, schedule."""
    return hashlib.sha256(msgspec.json.encode(s, order="sorted")).hexdigest()


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


# ---- the store ---------------------------------------------------------------------------------------------
def state_url(url: str) -> sa.URL:
    """Parse and check a state store URL: sqlite:///path, or postgresql[+psycopg]://... (psycopg 3)."""
    try:
        u = sa.make_url(url)
    except (exc.ArgumentError, ValueError, TypeError):
        raise StateError(f"bad state store URL {url!r}: use sqlite:///PATH or postgresql+psycopg://...") from None
    backend, _, driver = u.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return u.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return u.set(drivername="sqlite")
    shown = u.render_as_string(hide_password=True)
    raise StateError(f"unsupported state store URL {shown!r}: use sqlite:///PATH or postgresql+psycopg://...")


class StateStore:
    """The agent's record of every run. Thread-safe (a pool of connections); one per process."""

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
        if since is not None:
            q = q.where(r.started_at >= _aware(since, "since"))
        if until is not None:
            q = q.where(r.started_at < _aware(until, "until"))
        q = q.order_by(r.started_at.desc(), r.id.desc()).limit(max(1, min(int(limit), 100_000)))
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
        if since is not None:
            q = q.where(d.finished_at >= _aware(since, "since"))
        if until is not None:
            q = q.where(d.finished_at < _aware(until, "until"))
        q = q.order_by(d.finished_at.desc(), d.id.desc()).limit(max(1, min(int(limit), 100_000)))
        with self._tx() as c:
            return [Drill.of(x) for x in c.execute(q)]

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
        if since is not None:
            q = q.where(a.opened_at >= _aware(since, "since"))
        if until is not None:
            q = q.where(a.opened_at < _aware(until, "until"))
        q = q.order_by(a.opened_at.desc(), a.id.desc()).limit(max(1, min(int(limit), 100_000)))
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
        if since is not None:
            q = q.where(n.sent_at >= _aware(since, "since"))
        q = q.order_by(n.sent_at.desc(), n.id.desc()).limit(max(1, min(int(limit), 100_000)))
        with self._tx() as c:
            return [Notification.of(x) for x in c.execute(q)]

    # ---- the fleet -----------------------------------------------------------------------------------------
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


# ---- SQLite connection setup -------------------------------------------------------------------------------
def _sqlite_setup(engine: sa.Engine, busy_ms: int, wal: bool) -> None:
    """WAL (readers never block the writer), a busy timeout (writers queue instead of failing), foreign
    keys on, and BEGIN emitted by us: the sqlite3 module's own transaction handling does not BEGIN before
    SELECT or DDL, which breaks both consistent reads and transactional migrations."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.execute("PRAGMA foreign_keys = ON")
        if wal:
            # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once, without
            # the busy handler, while another process does the same: wait for it like the busy timeout would.
            deadline = time.monotonic() + busy_ms / 1000
            while True:
                try:
                    cur.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; the store is a record, not data
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("cermin_write") else "BEGIN")
