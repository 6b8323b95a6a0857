"""The dashboard's tables: users, sessions, login_attempts, audit, action_requests, approvals
(cermin/ops/stateschema.py; cermin/ops/webstore.py; docs/dashboard.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08

Types are spelled here, not imported from stateschema, so this revision creates the same tables for ever.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("disabled_at", TS, nullable=True),
        sa.Column("last_login_at", TS, nullable=True),
        sa.CheckConstraint("role IN ('operator', 'viewer', 'auditor')", name=op.f("ck_users_role")),
        sa.CheckConstraint("(role = 'viewer') = (tenant IS NOT NULL)", name=op.f("ck_users_viewer_tenant")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_user_id"), "sessions", ["user_id"])
    op.create_index(op.f("ix_sessions_expires_at"), "sessions", ["expires_at"])
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    op.create_index(op.f("ix_login_attempts_name_at"), "login_attempts", ["name", "at"])
    op.create_index(op.f("ix_login_attempts_ip_at"), "login_attempts", ["ip", "at"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_index(op.f("ix_audit_at"), "audit", ["at"])
    op.create_index(op.f("ix_audit_user_name_at"), "audit", ["user_name", "at"])
    op.create_table(
        "action_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("system_id", sa.String(length=127), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=True),
        sa.Column("taken_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_action_requests_run_id_runs")),
        sa.ForeignKeyConstraint(["system_id"], ["systems.id"], name=op.f("fk_action_requests_system_id_systems")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_action_requests")),
    )
    op.create_index(op.f("ix_action_requests_status_system_id"), "action_requests", ["status", "system_id"])
    op.create_index(op.f("ix_action_requests_system_id_at"), "action_requests", ["system_id", "at"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("executed_at", TS, nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    op.create_index(op.f("ix_approvals_decided_at"), "approvals", ["decided_at"])
    op.create_index(op.f("ix_approvals_requested_at"), "approvals", ["requested_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_approvals_requested_at"), table_name="approvals")
    op.drop_index(op.f("ix_approvals_decided_at"), table_name="approvals")
    op.drop_table("approvals")
    op.drop_index(op.f("ix_action_requests_system_id_at"), table_name="action_requests")
    op.drop_index(op.f("ix_action_requests_status_system_id"), table_name="action_requests")
    op.drop_table("action_requests")
    op.drop_index(op.f("ix_audit_user_name_at"), table_name="audit")
    op.drop_index(op.f("ix_audit_at"), table_name="audit")
    op.drop_table("audit")
    op.drop_index(op.f("ix_login_attempts_ip_at"), table_name="login_attempts")
    op.drop_index(op.f("ix_login_attempts_name_at"), table_name="login_attempts")
    op.drop_table("login_attempts")
    op.drop_index(op.f("ix_sessions_expires_at"), table_name="sessions")
    op.drop_index(op.f("ix_sessions_user_id"), table_name="sessions")
    op.drop_table("sessions")
    op.drop_table("users")
