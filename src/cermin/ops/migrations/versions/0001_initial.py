"""The state store's first schema: tenants, repositories, systems, runs (+ latest_runs), claims, agents,
snapshots, drills, alarms, notifications (cermin/ops/stateschema.py; docs/agent.md "State store").

Revision ID: 0001
Revises:
Create Date: 2026-12-01

Types are spelled here, not imported from stateschema, so this revision creates the same tables for
ever; times are `DateTime(timezone=True)` (stateschema.UTCDateTime stores UTC in it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_agents")),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("system_id", sa.String(length=127), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index(op.f("ix_notifications_sent_at"), "notifications", ["sent_at"])
    op.create_index(
        op.f("ix_notifications_system_id_event_sent_at"), "notifications", ["system_id", "event", "sent_at"]
    )

    op.create_table(
        "repositories",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=1000), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("retired_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_repositories")),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("retired_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "systems",
        sa.Column("id", sa.String(length=127), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("policy", sa.String(length=63), nullable=False),
        sa.Column("rpo_s", sa.Integer(), nullable=False),
        sa.Column("rto_s", sa.Integer(), nullable=False),
        sa.Column("drill_every_s", sa.Integer(), nullable=False),
        sa.Column("verify_every_s", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("required", sa.JSON(), nullable=False),
        sa.Column("copies", sa.JSON(), nullable=False),
        sa.Column("schedule", sa.String(length=200), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("retired_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.id"], name=op.f("fk_systems_tenant_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_systems")),
    )
    op.create_index(op.f("ix_systems_tenant"), "systems", ["tenant"])

    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("system_id", sa.String(length=127), nullable=False),
        sa.Column("copy", sa.String(length=16), nullable=False),
        sa.Column("snapshot_id", sa.String(length=128), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["system_id"], ["systems.id"], name=op.f("fk_alarms_system_id_systems")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alarms")),
        sa.UniqueConstraint("system_id", "copy", "snapshot_id", name=op.f("uq_alarms_system_id_copy_snapshot_id")),
    )
    op.create_index(op.f("ix_alarms_acknowledged_at"), "alarms", ["acknowledged_at"])

    op.create_table(
        "claims",
        sa.Column("system_id", sa.String(length=127), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["system_id"], ["systems.id"], name=op.f("fk_claims_system_id_systems")),
        sa.PrimaryKeyConstraint("system_id", name=op.f("pk_claims")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("system_id", sa.String(length=127), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("copy", sa.String(length=16), server_default="", nullable=False),
        sa.Column("slot", TS, nullable=True),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("files", sa.BigInteger(), nullable=True),
        sa.Column("snapshot_id", sa.String(length=128), nullable=True),
        sa.Column("data_time", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["system_id"], ["systems.id"], name=op.f("fk_runs_system_id_systems")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("system_id", "kind", "copy", "slot", name=op.f("uq_runs_system_id_kind_copy_slot")),
    )
    op.create_index(op.f("ix_runs_started_at"), "runs", ["started_at"])
    op.create_index(op.f("ix_runs_system_id_started_at"), "runs", ["system_id", "started_at"])

    op.create_table(
        "drills",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("system_id", sa.String(length=127), nullable=False),
        sa.Column("snapshot_id", sa.String(length=128), nullable=False),
        sa.Column("copy", sa.String(length=16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
        sa.Column("rto_measured_s", sa.Float(), nullable=False),
        sa.Column("rto_target_s", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("files", sa.BigInteger(), nullable=True),
        sa.Column("bytes_per_s", sa.Float(), nullable=True),
        sa.Column("report_id", sa.String(length=200), nullable=True),
        sa.Column("report_digest", sa.String(length=128), nullable=True),
        sa.Column("signature_ok", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_drills_run_id_runs")),
        sa.ForeignKeyConstraint(["system_id"], ["systems.id"], name=op.f("fk_drills_system_id_systems")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drills")),
    )
    op.create_index(op.f("ix_drills_system_id_finished_at"), "drills", ["system_id", "finished_at"])

    op.create_table(
        "latest_runs",
        sa.Column("system_id", sa.String(length=127), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("copy", sa.String(length=16), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=True),
        sa.Column("last_at", TS, nullable=True),
        sa.Column("ok_id", sa.Integer(), nullable=True),
        sa.Column("ok_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["last_id"], ["runs.id"], name=op.f("fk_latest_runs_last_id_runs")),
        sa.ForeignKeyConstraint(["ok_id"], ["runs.id"], name=op.f("fk_latest_runs_ok_id_runs")),
        sa.ForeignKeyConstraint(["system_id"], ["systems.id"], name=op.f("fk_latest_runs_system_id_systems")),
        sa.PrimaryKeyConstraint("system_id", "kind", "copy", name=op.f("pk_latest_runs")),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("system_id", sa.String(length=127), nullable=False),
        sa.Column("copy", sa.String(length=16), nullable=False),
        sa.Column("snapshot_id", sa.String(length=128), nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("seen_at", TS, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("files", sa.BigInteger(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("retain_until", TS, nullable=True),
        sa.Column("gone_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_snapshots_run_id_runs")),
        sa.ForeignKeyConstraint(["system_id"], ["systems.id"], name=op.f("fk_snapshots_system_id_systems")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
        sa.UniqueConstraint("system_id", "copy", "snapshot_id", name=op.f("uq_snapshots_system_id_copy_snapshot_id")),
    )
    op.create_index(op.f("ix_snapshots_system_id_copy_time"), "snapshots", ["system_id", "copy", "time"])
    op.create_index(op.f("ix_snapshots_time"), "snapshots", ["time"])


def downgrade() -> None:
    op.drop_index(op.f("ix_snapshots_time"), table_name="snapshots")
    op.drop_index(op.f("ix_snapshots_system_id_copy_time"), table_name="snapshots")

    op.drop_table("snapshots")
    op.drop_table("latest_runs")
    op.drop_index(op.f("ix_drills_system_id_finished_at"), table_name="drills")

    op.drop_table("drills")
    op.drop_index(op.f("ix_runs_system_id_started_at"), table_name="runs")
    op.drop_index(op.f("ix_runs_started_at"), table_name="runs")

    op.drop_table("runs")
    op.drop_table("claims")
    op.drop_index(op.f("ix_alarms_acknowledged_at"), table_name="alarms")

    op.drop_table("alarms")
    op.drop_index(op.f("ix_systems_tenant"), table_name="systems")

    op.drop_table("systems")
    op.drop_table("tenants")
    op.drop_table("repositories")
    op.drop_index(op.f("ix_notifications_system_id_event_sent_at"), table_name="notifications")
    op.drop_index(op.f("ix_notifications_sent_at"), table_name="notifications")

    op.drop_table("notifications")
    op.drop_table("agents")
