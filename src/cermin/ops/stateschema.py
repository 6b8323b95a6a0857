"""The state store's tables (SQLAlchemy Core): what the agent did, per system, for the dashboard and drills.

The migrations in `cermin/ops/migrations/versions/` create exactly these tables (a test compares them with
autogenerate); change both together and add a new revision, never edit a released one (docs/agent.md).

Every time is UTC. `UTCDateTime` keeps it so on both databases: `timestamptz` on PostgreSQL, and on SQLite
a fixed-width naive UTC text ('2025-01-02 03:04:05.000000') that compares correctly as a string. A naive
datetime handed to the store is a bug and is refused.

Design choices:
- systems are never deleted, only retired (`retired_at`), so runs and drills keep their system;
- `runs` carries a unique (system_id, kind, copy, slot): a schedule slot runs once across every agent
  sharing the store (NULL slots, for manual runs, never collide); `copy` is '' when a run is not about one
  copy, never NULL, so the constraint holds;
- `latest_runs` points at the newest run and the newest successful run per (system, kind, copy), kept by
  the store on every start and finish, so the fleet status reads O(systems) rows however long the
  history grows.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING)

VERSION_TABLE = "cermin_schema_version"


class UTCDateTime(TypeDecorator):
    """An aware datetime in, an aware UTC datetime out."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"the state store takes aware datetimes (UTC), not {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


NAME = sa.String(63)  # tenant, system, repository names (config.py: [a-z0-9][a-z0-9_-]{0,62})
SYSTEM_ID = sa.String(127)  # "tenant/system"
AGENT = sa.String(200)
SNAP_ID = sa.String(128)
KIND = sa.String(16)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", NAME, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    _time("updated_at"),
    _time("retired_at", nullable=True),
)

repositories = sa.Table(
    "repositories",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("kind", KIND, nullable=False),  # declared kind (primary|immutable|mirror) or ''
    sa.Column("url", sa.String(1000), nullable=False),  # credentials removed
    _time("updated_at"),
    _time("retired_at", nullable=True),
)

systems = sa.Table(
    "systems",
    metadata,
    sa.Column("id", SYSTEM_ID, primary_key=True),
    sa.Column("tenant", NAME, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("name", NAME, nullable=False),
    sa.Column("policy", NAME, nullable=False),  # the class name
    sa.Column("rpo_s", sa.Integer, nullable=False),
    sa.Column("rto_s", sa.Integer, nullable=False),
    sa.Column("drill_every_s", sa.Integer, nullable=False),
    sa.Column("verify_every_s", sa.Integer, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("required", sa.JSON, nullable=False),  # copy kinds the class requires
    sa.Column("copies", sa.JSON, nullable=False),  # copy kind -> repository name
    sa.Column("schedule", sa.String(200), nullable=False),  # cron expression, or '' (interval_s)
    sa.Column("interval_s", sa.Integer, nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),  # sha256 of the system's resolved config
    _time("updated_at"),
    _time("retired_at", nullable=True),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("system_id", SYSTEM_ID, sa.ForeignKey("systems.id"), nullable=False),
    sa.Column("kind", KIND, nullable=False),
    sa.Column("copy", KIND, nullable=False, server_default=""),
    _time("slot", nullable=True),  # the schedule slot it serves; NULL for manual runs
    sa.Column("agent", AGENT, nullable=False),
    _time("started_at"),
    _time("finished_at", nullable=True),
    sa.Column("status", KIND, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("bytes", sa.BigInteger, nullable=True),
    sa.Column("files", sa.BigInteger, nullable=True),
    sa.Column("snapshot_id", SNAP_ID, nullable=True),
    _time("data_time", nullable=True),  # time of the newest data it left in its copy (snapshot time)
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.UniqueConstraint("system_id", "kind", "copy", "slot"),
    sa.Index(None, "system_id", "started_at"),
    sa.Index(None, "started_at"),
)

latest_runs = sa.Table(
    "latest_runs",
    metadata,
    sa.Column("system_id", SYSTEM_ID, sa.ForeignKey("systems.id"), primary_key=True),
    sa.Column("kind", KIND, primary_key=True),
    sa.Column("copy", KIND, primary_key=True),
    sa.Column("last_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
    _time("last_at", nullable=True),  # its started_at
    sa.Column("ok_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
    _time("ok_at", nullable=True),  # its data_time (or started_at)
)

claims = sa.Table(
    "claims",
    metadata,
    sa.Column("system_id", SYSTEM_ID, sa.ForeignKey("systems.id"), primary_key=True),
    sa.Column("agent", AGENT, nullable=False),
    sa.Column("kind", KIND, nullable=False),
    _time("claimed_at"),
    _time("expires_at"),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("name", AGENT, primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("version", sa.String(40), nullable=False),
    _time("started_at"),
    _time("last_seen"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("system_id", SYSTEM_ID, sa.ForeignKey("systems.id"), nullable=False),
    sa.Column("copy", KIND, nullable=False),
    sa.Column("snapshot_id", SNAP_ID, nullable=False),
    _time("time"),  # the snapshot's own time
    _time("seen_at"),  # when the agent last saw it
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("files", sa.BigInteger, nullable=True),
    sa.Column("verdict", KIND, nullable=True),  # guard verdict: clean|suspicious|alarm|... (as the guard says)
    sa.Column("score", sa.Float, nullable=True),
    _time("retain_until", nullable=True),  # Object Lock retention seen on the copy
    _time("gone_at", nullable=True),  # no longer in the copy (forgotten)
    sa.UniqueConstraint("system_id", "copy", "snapshot_id"),
    sa.Index(None, "system_id", "copy", "time"),
    sa.Index(None, "time"),
)

drills = sa.Table(
    "drills",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
    sa.Column("system_id", SYSTEM_ID, sa.ForeignKey("systems.id"), nullable=False),
    sa.Column("snapshot_id", SNAP_ID, nullable=False),
    sa.Column("copy", KIND, nullable=False),
    _time("started_at"),
    _time("finished_at"),
    sa.Column("rto_measured_s", sa.Float, nullable=False),
    sa.Column("rto_target_s", sa.Float, nullable=False),
    sa.Column("verdict", KIND, nullable=False),  # pass | fail
    sa.Column("bytes", sa.BigInteger, nullable=True),
    sa.Column("files", sa.BigInteger, nullable=True),
    sa.Column("bytes_per_s", sa.Float, nullable=True),  # restore speed, for recovery planning
    sa.Column("report_id", sa.String(200), nullable=True),  # the signed report's aux object
    sa.Column("report_digest", sa.String(128), nullable=True),
    sa.Column("signature_ok", sa.Boolean, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Index(None, "system_id", "finished_at"),
)

alarms = sa.Table(
    "alarms",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("system_id", SYSTEM_ID, sa.ForeignKey("systems.id"), nullable=False),
    sa.Column("copy", KIND, nullable=False),
    sa.Column("snapshot_id", SNAP_ID, nullable=False),
    sa.Column("verdict", KIND, nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("reasons", sa.JSON, nullable=False),
    _time("opened_at"),
    sa.Column("acknowledged_by", sa.String(200), nullable=True),
    _time("acknowledged_at", nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.UniqueConstraint("system_id", "copy", "snapshot_id"),
    sa.Index(None, "acknowledged_at"),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _time("sent_at"),
    sa.Column("system_id", SYSTEM_ID, nullable=True),  # NULL: about the agent or the fleet
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),  # a name for the URL, never the URL
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index(None, "system_id", "event", "sent_at"),
    sa.Index(None, "sent_at"),
)

# ---- the dashboard (revision 0002; cermin/ops/webstore.py, docs/dashboard.md) ------------------------------
USER = sa.String(64)  # a dashboard user's name (webstore: lower-case letters, digits and . _ @ -)
IP = sa.String(45)  # an IPv6 address in text at most

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", USER, nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),  # Argon2id, PHC string
    sa.Column("role", KIND, nullable=False),  # operator | viewer | auditor
    sa.Column("tenant", NAME, nullable=True),  # a viewer's one tenant; NULL for the other roles
    _time("created_at"),
    _time("disabled_at", nullable=True),
    _time("last_login_at", nullable=True),
    sa.CheckConstraint("role IN ('operator', 'viewer', 'auditor')", name="role"),
    sa.CheckConstraint("(role = 'viewer') = (tenant IS NOT NULL)", name="viewer_tenant"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # sha256 of the cookie's token, never the token
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("csrf", sa.String(64), nullable=False),
    _time("created_at"),
    _time("expires_at"),
    _time("last_seen"),
    sa.Column("ip", IP, nullable=True),
    sa.Index(None, "expires_at"),
)

login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", USER, nullable=False),  # the name tried (lower-cased, clipped), known or not
    sa.Column("ip", IP, nullable=False),
    _time("at"),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Index(None, "name", "at"),
    sa.Index(None, "ip", "at"),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _time("at"),
    sa.Column("user_name", USER, nullable=False),  # who ('' for nobody known, e.g. a login by an unknown name)
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=True),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Column("ip", IP, nullable=True),
    sa.Index(None, "at"),
    sa.Index(None, "user_name", "at"),
)

action_requests = sa.Table(
    "action_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _time("at"),
    sa.Column("user_name", USER, nullable=False),
    sa.Column("system_id", SYSTEM_ID, sa.ForeignKey("systems.id"), nullable=False),
    sa.Column("kind", KIND, nullable=False),  # backup | drill
    sa.Column("status", KIND, nullable=False),  # pending | taken | done | failed
    sa.Column("agent", AGENT, nullable=True),  # the agent that took it
    _time("taken_at", nullable=True),
    _time("finished_at", nullable=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Index(None, "status", "system_id"),
    sa.Index(None, "system_id", "at"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.JSON, nullable=False),
    sa.Column("requested_by", USER, nullable=False),
    _time("requested_at"),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_by", USER, nullable=True),
    _time("decided_at", nullable=True),
    sa.Column("decision", KIND, nullable=True),  # approve | reject
    _time("executed_at", nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Index(None, "decided_at"),
    sa.Index(None, "requested_at"),
)

# ---- API tokens (revision 0003; cermin/ops/webstore.py, docs/dashboard.md "API tokens") -------------------
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", USER, nullable=False),  # what the token is for ("backup-report", "prometheus")
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True, index=True),  # NULL: metrics
    sa.Column("scope", KIND, nullable=False),  # api (as its user, /api/v1) | metrics (/metrics only)
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),  # sha256 of the token, never the token
    _time("created_at"),
    _time("last_used_at", nullable=True),
    _time("revoked_at", nullable=True),
    sa.CheckConstraint("scope IN ('api', 'metrics')", name="scope"),
    sa.CheckConstraint("(scope = 'api') = (user_id IS NOT NULL)", name="api_user"),
)
