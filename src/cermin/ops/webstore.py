"""The dashboard's records in the state store: users, server-side sessions, login attempts, the audit log,
action requests (the dashboard asks, the agent runs), two-person approvals and API tokens (docs/dashboard.md).

`WebStore(store)` works over an open `StateStore` (its engine, transactions and clock), so the agent and
the dashboard share one database and one schema (revisions 0002, 0003). Like the state store, every method is
a fixed number of statements and validates what it is handed: a bad value is a `StateError` in one line.

Nothing secret is stored in the clear: a password only as its Argon2id hash (hashing is the caller's,
cermin.web.passwords), a session or an API token only as the SHA-256 of its token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cermin.ops import stateschema as t
from cermin.ops.state import StateStore
from cermin.ops.staterows import _Row
from cermin.ops.statevalues import StateError, _aware, _details, _limit, _one_of, _system_id, _text

ROLES = ("operator", "viewer", "auditor")
ACTION_KINDS = ("backup", "drill")
ACTION_STATUSES = ("pending", "taken", "done", "failed")
DECISIONS = ("approve", "reject")
TOKEN_SCOPES = ("api", "metrics")  # api: /api/v1 as its user; metrics: /metrics only

_USER = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ACTION = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")


# ---- rows --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class User(_Row):
    id: int
    name: str
    password_hash: str = field(repr=False)
    role: str
    tenant: str | None
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None

    def to_json(self) -> dict:
        d = _Row.to_json(self)  # (slots: no zero-argument super)
        del d["password_hash"]  # never leaves the store through an export or the API
        return d


@dataclass(frozen=True, slots=True)
class Session(_Row):
    token_hash: str
    user_id: int
    csrf: str
    created_at: datetime
    expires_at: datetime
    last_seen: datetime
    ip: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry(_Row):
    id: int
    at: datetime
    user_name: str
    action: str
    target: str | None
    detail: dict | None
    ip: str | None


@dataclass(frozen=True, slots=True)
class ActionRequest(_Row):
    id: int
    at: datetime
    user_name: str
    system_id: str
    kind: str
    status: str
    agent: str | None
    taken_at: datetime | None
    finished_at: datetime | None
    run_id: int | None
    message: str | None


@dataclass(frozen=True, slots=True)
class Approval(_Row):
    id: int
    action: str
    target: dict
    requested_by: str
    requested_at: datetime
    reason: str
    decided_by: str | None
    decided_at: datetime | None
    decision: str | None
    executed_at: datetime | None
    result: dict | None


@dataclass(frozen=True, slots=True)
class ApiToken(_Row):
    """A bearer token (the store keeps its SHA-256 only; `token_hash` never leaves through to_json)."""

    id: int
    name: str
    user_id: int | None
    user: str | None  # its user's name (scope api); None for a metrics token
    scope: str  # api | metrics
    token_hash: str = field(repr=False)
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row, user: str | None = None) -> ApiToken:  # type: ignore[override]
        m = row._mapping
        return cls(**{f.name: user if f.name == "user" else m[f.name] for f in fields(cls)})

    def to_json(self) -> dict:
        d = _Row.to_json(self)
        del d["token_hash"]
        return d


@dataclass(frozen=True, slots=True)
class LoginFailures:
    """Failed logins in the window: by this name (since its last success) and from this address, with the
    oldest of each (when it leaves the window, the count drops)."""

    by_name: int
    by_ip: int
    name_oldest: datetime | None
    ip_oldest: datetime | None


# ---- validation --------------------------------------------------------------------------------------------
def user_name(value: Any) -> str:
    """A user name: lower-case letters, digits and . _ @ - (1..64), e.g. 'ana' or 'ana@imigrasi.go.id'."""
    if not isinstance(value, str) or not _USER.match(value):
        raise StateError(f"bad user name {value!r}: lower-case letters, digits, . _ @ - (at most 64)")
    return value


def _role_tenant(role: Any, tenant: Any) -> tuple[str, str | None]:
    _one_of(role, ROLES, "role")
    if role == "viewer":
        if not isinstance(tenant, str) or not _TENANT.match(tenant):
            raise StateError(f"a viewer sees one tenant: give its id (not {tenant!r})")
        return role, tenant
    if tenant is not None:
        raise StateError(f"an {role} sees every tenant: give no tenant")
    return role, None


def _hex64(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise StateError(f"bad {what}: 64 lower-case hex digits")
    return value


def _ip(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)[:45]
    return s if s.isprintable() else "?"


def attempt_name(value: Any) -> str:
    """The name a login tried, as the rate limiter counts it: lower-cased, clipped, printable."""
    s = str(value or "").strip().lower()[:64]
    return s if s.isprintable() else "?"


def _action(value: Any) -> str:
    if not isinstance(value, str) or not _ACTION.match(value):
        raise StateError(f"bad action {value!r}: lower-case letters, digits, _ and . (at most 64)")
    return value


def _utc(value: Any) -> datetime | None:
    """An aggregate's time: a scalar subquery loses the column's type, so SQLite hands back its text."""
    if value is None or isinstance(value, datetime):
        return t.UTCDateTime().process_result_value(value, None) if value is not None else None
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


# ---- the store ---------------------------------------------------------------------------------------------
class WebStore:
    """The dashboard's tables over an open StateStore. Thread-safe like it."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def _tx(self, write: bool = False, unknown: str = ""):
        return self.store._tx(write=write, unknown=unknown)

    def _now(self, now: datetime | None) -> datetime:
        return self.store._now(now)

    # ---- users ---------------------------------------------------------------------------------------------
    def add_user(
        self, name: str, password_hash: str, role: str, tenant: str | None = None, now: datetime | None = None
    ) -> User:
        """A new user; a viewer sees one tenant, an operator or auditor every one. The name is unique
        (disabled users keep theirs, so the audit log stays unambiguous)."""
        now = self._now(now)
        role, tenant = _role_tenant(role, tenant)
        if not isinstance(password_hash, str) or not password_hash.startswith("$argon2id$"):
            raise StateError("a password is stored as its Argon2id hash only")
        values = {
            "name": user_name(name),
            "password_hash": _text(password_hash, 255),
            "role": role,
            "tenant": tenant,
            "created_at": now,
        }
        with self._tx(write=True, unknown=f"a user named {name!r} exists already") as c:
            row = c.execute(sa.insert(t.users).values(values).returning(*t.users.c)).one()
            return User.of(row)

    def user(self, name: str) -> User | None:
        with self._tx() as c:
            row = c.execute(sa.select(t.users).where(t.users.c.name == name)).first()
            return User.of(row) if row else None

    def users(self, include_disabled: bool = True) -> list[User]:
        q = sa.select(t.users).order_by(t.users.c.name)
        if not include_disabled:
            q = q.where(t.users.c.disabled_at.is_(None))
        with self._tx() as c:
            return [User.of(r) for r in c.execute(q)]

    def disable_user(self, name: str, now: datetime | None = None) -> bool:
        """Disable a user and end its sessions at once; False if there is no such enabled user."""
        now = self._now(now)
        u = t.users.c
        with self._tx(write=True) as c:
            uid = c.execute(
                sa.update(t.users)
                .where(u.name == name, u.disabled_at.is_(None))
                .values(disabled_at=now)
                .returning(u.id)
            ).scalar()
            if uid is None:
                return False
            c.execute(sa.delete(t.sessions).where(t.sessions.c.user_id == uid))
            return True

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Replace a user's hash (a rehash with stronger parameters at login, or a new password)."""
        if not isinstance(password_hash, str) or not password_hash.startswith("$argon2id$"):
            raise StateError("a password is stored as its Argon2id hash only")
        with self._tx(write=True) as c:
            c.execute(sa.update(t.users).where(t.users.c.id == user_id).values(password_hash=password_hash))

    # ---- sessions ------------------------------------------------------------------------------------------
    def create_session(
        self,
        token_hash: str,
        user_id: int,
        csrf: str,
        ttl_s: float,
        *,
        ip: str | None = None,
        now: datetime | None = None,
    ) -> Session:
        """A session after a successful login (the user's last_login_at set); expired sessions are purged."""
        now = self._now(now)
        values = {
            "token_hash": _hex64(token_hash, "session token hash"),
            "user_id": int(user_id),
            "csrf": _hex64(csrf, "CSRF token"),
            "created_at": now,
            "expires_at": now + timedelta(seconds=float(ttl_s)),
            "last_seen": now,
            "ip": _ip(ip),
        }
        with self._tx(write=True, unknown=f"unknown user {user_id}") as c:
            c.execute(sa.delete(t.sessions).where(t.sessions.c.expires_at <= now))
            c.execute(sa.insert(t.sessions).values(values))
            c.execute(sa.update(t.users).where(t.users.c.id == user_id).values(last_login_at=now))
        return Session(**values)

    def session(self, token_hash: str, now: datetime | None = None, *, idle_s: float | None = None):
        """(Session, User) of a live session — not expired, not idle longer than idle_s, its user enabled —
        or None. One statement."""
        now = self._now(now)
        if not isinstance(token_hash, str) or not _HEX64.match(token_hash):
            return None
        s, u = t.sessions.c, t.users.c
        q = (
            sa.select(t.sessions, *(c.label(f"u_{c.name}") for c in t.users.c))
            .join(t.users, u.id == s.user_id)
            .where(s.token_hash == token_hash, s.expires_at > now, u.disabled_at.is_(None))
        )
        if idle_s is not None:
            q = q.where(s.last_seen > now - timedelta(seconds=float(idle_s)))
        with self._tx() as c:
            row = c.execute(q).first()
        if row is None:
            return None
        m = row._mapping
        session = Session(**{f: m[f] for f in Session.__dataclass_fields__})
        user = User(**{f: m[f"u_{f}"] for f in User.__dataclass_fields__})
        return session, user

    def touch_session(self, token_hash: str, now: datetime | None = None) -> None:
        now = self._now(now)
        with self._tx(write=True) as c:
            c.execute(sa.update(t.sessions).where(t.sessions.c.token_hash == token_hash).values(last_seen=now))

    def end_session(self, token_hash: str) -> bool:
        with self._tx(write=True) as c:
            return c.execute(sa.delete(t.sessions).where(t.sessions.c.token_hash == token_hash)).rowcount == 1

    # ---- login attempts (rate limiting shared by every worker process) -------------------------------------
    def record_login_attempt(self, name: str, ip: str, ok: bool, now: datetime | None = None) -> None:
        """One login attempt; attempts older than a day are purged on the way."""
        now = self._now(now)
        values = {"name": attempt_name(name), "ip": _ip(ip) or "?", "at": now, "ok": bool(ok)}
        with self._tx(write=True) as c:
            c.execute(sa.delete(t.login_attempts).where(t.login_attempts.c.at < now - timedelta(days=1)))
            c.execute(sa.insert(t.login_attempts).values(values))

    def login_failures(self, name: str, ip: str, window_s: float, now: datetime | None = None) -> LoginFailures:
        """Failed logins within the window by this name (counted since its last successful login) and from
        this address. One statement."""
        now = self._now(now)
        since = now - timedelta(seconds=float(window_s))
        name, ip = attempt_name(name), _ip(ip) or "?"
        a = t.login_attempts.c
        last_ok = sa.select(sa.func.max(a.at)).where(a.name == name, a.ok.is_(True)).scalar_subquery()
        by_name = (a.name == name, a.ok.is_(False), a.at > since, a.at > sa.func.coalesce(last_ok, since))
        by_ip = (a.ip == ip, a.ok.is_(False), a.at > since)
        cols = [
            sa.select(agg).where(*cond).scalar_subquery()
            for cond in (by_name, by_ip)
            for agg in (sa.func.count(), sa.func.min(a.at))
        ]
        with self._tx() as c:
            row = c.execute(sa.select(*cols)).one()
        return LoginFailures(int(row[0] or 0), int(row[2] or 0), _utc(row[1]), _utc(row[3]))

    # ---- audit (append-only: there is no method to change or remove an entry) ------------------------------
    def audit(
        self,
        user: str,
        action: str,
        target: str | None = None,
        detail: dict | None = None,
        *,
        ip: str | None = None,
        now: datetime | None = None,
    ) -> int:
        """Append one entry: who ('' if nobody known), what (login, login_failed, logout, action.backup, ...),
        on what (a system id, a user name), details (a JSON object), from where."""
        now = self._now(now)
        values = {
            "at": now,
            "user_name": attempt_name(user),
            "action": _action(action),
            "target": _text(target, 255),
            "detail": _details(detail),
            "ip": _ip(ip),
        }
        with self._tx(write=True) as c:
            return c.execute(sa.insert(t.audit).values(values).returning(t.audit.c.id)).scalar_one()

    def audit_log(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries, newest first; `before_id` pages on (the id of the last entry of the previous page)."""
        a = t.audit.c
        q = sa.select(t.audit)
        if user is not None:
            q = q.where(a.user_name == user)
        if action is not None:
            q = q.where(a.action == action)
        if target is not None:
            q = q.where(a.target == target)
        if since is not None:
            q = q.where(a.at >= _aware(since, "since"))
        if until is not None:
            q = q.where(a.at < _aware(until, "until"))
        if before_id is not None:
            q = q.where(a.id < int(before_id))
        q = q.order_by(a.id.desc()).limit(_limit(limit))
        with self._tx() as c:
            return [AuditEntry.of(r) for r in c.execute(q)]

    # ---- action requests: the dashboard asks, the agent runs -----------------------------------------------
    def request_action(self, system_id: str, kind: str, user: str, now: datetime | None = None) -> ActionRequest:
        """Ask the agents to run a backup or a drill of a system now (a manual run, outside its schedule).
        A request of the same kind already pending for the system is returned instead of a second one."""
        now = self._now(now)
        values = {
            "at": now,
            "user_name": user_name(user),
            "system_id": _system_id(system_id),
            "kind": _one_of(kind, ACTION_KINDS, "action"),
            "status": "pending",
        }
        r = t.action_requests.c
        with self._tx(write=True, unknown=f"unknown system {system_id!r}") as c:
            q = sa.select(t.action_requests).where(r.system_id == system_id, r.kind == kind, r.status == "pending")
            row = c.execute(q.limit(1)).first()
            if row is None:
                row = c.execute(sa.insert(t.action_requests).values(values).returning(*t.action_requests.c)).one()
            return ActionRequest.of(row)

    def take_actions(
        self,
        system_ids: Iterable[str],
        agent: str,
        now: datetime | None = None,
        *,
        kinds: Iterable[str] | None = None,
    ) -> list[ActionRequest]:
        """The agent takes every pending request (of these kinds) for its systems (pending -> taken, by it):
        one conditional UPDATE, so two agents never take the same request."""
        now = self._now(now)
        ids = sorted(set(system_ids))
        kinds = ACTION_KINDS if kinds is None else tuple(k for k in kinds if k in ACTION_KINDS)
        if not ids or not kinds:
            return []
        r = t.action_requests.c
        q = (
            sa.update(t.action_requests)
            .where(r.status == "pending", r.system_id.in_(ids), r.kind.in_(kinds))
            .values(status="taken", agent=_text(agent, 200), taken_at=now)
            .returning(*t.action_requests.c)
        )
        with self._tx(write=True) as c:
            return sorted((ActionRequest.of(x) for x in c.execute(q)), key=lambda x: x.id)

    def finish_action(
        self,
        request_id: int,
        status: str,
        *,
        run_id: int | None = None,
        message: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """How a taken request ended: done or failed (with the run it made), or pending again (the agent
        could not run it now: another agent holds the system). False if it was not taken."""
        now = self._now(now)
        _one_of(status, ("pending", "done", "failed"), "action status")
        r = t.action_requests.c
        if status == "pending":
            values: dict[str, Any] = {"status": "pending", "agent": None, "taken_at": None, "message": _text(message)}
        else:
            values = {"status": status, "finished_at": now, "run_id": run_id, "message": _text(message)}
        with self._tx(write=True, unknown=f"unknown run {run_id}") as c:
            q = sa.update(t.action_requests).where(r.id == request_id, r.status == "taken").values(values)
            return c.execute(q).rowcount == 1

    def action_requests(
        self,
        *,
        system_id: str | None = None,
        tenant: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[ActionRequest]:
        """Requests, newest first: of one system, one tenant or the fleet."""
        r = t.action_requests.c
        q = sa.select(t.action_requests)
        if system_id is not None:
            q = q.where(r.system_id == system_id)
        if tenant is not None:
            q = q.where(r.system_id.in_(sa.select(t.systems.c.id).where(t.systems.c.tenant == tenant)))
        if status is not None:
            q = q.where(r.status == _one_of(status, ACTION_STATUSES, "action status"))
        q = q.order_by(r.id.desc()).limit(_limit(limit))
        with self._tx() as c:
            return [ActionRequest.of(x) for x in c.execute(q)]

    # ---- approvals: the two-person rule --------------------------------------------------------------------
    def request_approval(
        self, action: str, target: dict, requested_by: str, reason: str, now: datetime | None = None
    ) -> Approval:
        """Ask for a destructive operation (what, on what, why); a second person decides."""
        now = self._now(now)
        if not isinstance(reason, str) or not reason.strip():
            raise StateError("a request for approval needs a reason")
        values = {
            "action": _action(action),
            "target": _details(target) or {},
            "requested_by": user_name(requested_by),
            "requested_at": now,
            "reason": _text(reason.strip(), 2000),
        }
        with self._tx(write=True) as c:
            return Approval.of(c.execute(sa.insert(t.approvals).values(values).returning(*t.approvals.c)).one())

    def decide_approval(self, approval_id: int, decided_by: str, decision: str, now: datetime | None = None) -> bool:
        """Approve or reject an undecided request. The requester cannot decide their own (StateError);
        False if it is decided already or does not exist."""
        now = self._now(now)
        decided_by = user_name(decided_by)
        _one_of(decision, DECISIONS, "decision")
        a = t.approvals.c
        with self._tx(write=True) as c:
            row = c.execute(sa.select(a.requested_by).where(a.id == approval_id)).first()
            if row is None:
                return False
            if row.requested_by == decided_by:
                raise StateError("two-person rule: a request is decided by someone other than its requester")
            q = sa.update(t.approvals).where(a.id == approval_id, a.decided_at.is_(None), a.requested_by != decided_by)
            return c.execute(q.values(decided_by=decided_by, decided_at=now, decision=decision)).rowcount == 1

    def mark_executed(self, approval_id: int, result: dict | None = None, now: datetime | None = None) -> bool:
        """Record that an approved request was carried out (once); False if not approved or done already."""
        now = self._now(now)
        a = t.approvals.c
        q = sa.update(t.approvals).where(a.id == approval_id, a.decision == "approve", a.executed_at.is_(None))
        with self._tx(write=True) as c:
            return c.execute(q.values(executed_at=now, result=_details(result))).rowcount == 1

    def approval(self, approval_id: int) -> Approval | None:
        with self._tx() as c:
            row = c.execute(sa.select(t.approvals).where(t.approvals.c.id == approval_id)).first()
            return Approval.of(row) if row else None

    def approvals(self, *, undecided_only: bool = False, limit: int = 100) -> list[Approval]:
        a = t.approvals.c
        q = sa.select(t.approvals)
        if undecided_only:
            q = q.where(a.decided_at.is_(None))
        q = q.order_by(a.id.desc()).limit(_limit(limit))
        with self._tx() as c:
            return [Approval.of(x) for x in c.execute(q)]

    # ---- API tokens: bearer tokens for scripts (/api/v1, as their user) and Prometheus (/metrics) -----------
    def add_api_token(
        self,
        name: str,
        token_hash: str,
        *,
        user: str | None = None,
        scope: str = "api",
        now: datetime | None = None,
    ) -> ApiToken:
        """A new token, stored as the SHA-256 of the token (the caller makes the token and shows it once).
        scope 'api': it acts as `user` (an enabled user; a viewer's token sees its tenant only); 'metrics':
        it reads /metrics and nothing else, and belongs to no user. A name is unique among live tokens."""
        now = self._now(now)
        name = user_name(name)
        _one_of(scope, TOKEN_SCOPES, "token scope")
        if (scope == "api") != (user is not None):
            raise StateError(
                "an API token acts as a user: give one" if scope == "api" else "a metrics token has no user"
            )
        k, u = t.api_tokens.c, t.users.c
        with self._tx(write=True, unknown="a token with this hash exists already") as c:
            if c.execute(sa.select(k.id).where(k.name == name, k.revoked_at.is_(None)).limit(1)).first() is not None:
                raise StateError(f"a live token named {name!r} exists already: revoke it first, or pick another name")
            user_id = None
            if user is not None:
                user_id = c.execute(sa.select(u.id).where(u.name == user, u.disabled_at.is_(None))).scalar()
                if user_id is None:
                    raise StateError(f"no enabled user named {user!r}")
            values = {
                "name": name,
                "user_id": user_id,
                "scope": scope,
                "token_hash": _hex64(token_hash, "token hash"),
                "created_at": now,
            }
            row = c.execute(sa.insert(t.api_tokens).values(values).returning(*t.api_tokens.c)).one()
            return ApiToken.of(row, user)

    def api_token(self, token_hash: str) -> tuple[ApiToken, User | None] | None:
        """(token, its user) of a live token with this hash — not revoked, its user (if any) enabled — or
        None. One statement: an indexed lookup by the hash (the caller compares it in constant time)."""
        if not isinstance(token_hash, str) or not _HEX64.match(token_hash):
            return None
        k, u = t.api_tokens.c, t.users.c
        q = (
            sa.select(t.api_tokens, *(c.label(f"u_{c.name}") for c in t.users.c))
            .select_from(t.api_tokens.outerjoin(t.users, u.id == k.user_id))
            .where(k.token_hash == token_hash, k.revoked_at.is_(None))
        )
        with self._tx() as c:
            row = c.execute(q).first()
        if row is None:
            return None
        m = row._mapping
        user = None
        if m["user_id"] is not None:
            if m["u_id"] is None or m["u_disabled_at"] is not None:
                return None
            user = User(**{f: m[f"u_{f}"] for f in User.__dataclass_fields__})
        return ApiToken.of(row, user.name if user else None), user

    def touch_api_token(self, token_id: int, now: datetime | None = None) -> None:
        now = self._now(now)
        with self._tx(write=True) as c:
            c.execute(sa.update(t.api_tokens).where(t.api_tokens.c.id == int(token_id)).values(last_used_at=now))

    def revoke_api_token(self, token: int | str, now: datetime | None = None) -> ApiToken | None:
        """Revoke a live token by id or by name; the revoked token, or None if there is no such live token."""
        now = self._now(now)
        k = t.api_tokens.c
        which = k.id == token if isinstance(token, int) else k.name == user_name(token)
        with self._tx(write=True) as c:
            q = sa.update(t.api_tokens).where(which, k.revoked_at.is_(None)).values(revoked_at=now)
            row = c.execute(q.returning(*t.api_tokens.c)).first()
            if row is None:
                return None
            owner = None
            if row.user_id is not None:
                owner = c.execute(sa.select(t.users.c.name).where(t.users.c.id == row.user_id)).scalar()
            return ApiToken.of(row, owner)

    def api_tokens(self, include_revoked: bool = False) -> list[ApiToken]:
        """Every token (never its hash), newest first."""
        k, u = t.api_tokens.c, t.users.c
        q = sa.select(t.api_tokens, u.name.label("user_name")).select_from(
            t.api_tokens.outerjoin(t.users, u.id == k.user_id)
        )
        if not include_revoked:
            q = q.where(k.revoked_at.is_(None))
        with self._tx() as c:
            return [ApiToken.of(r, r.user_name) for r in c.execute(q.order_by(k.id.desc()))]
