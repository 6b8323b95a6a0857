"""API tokens: bearer tokens for scripts (`/api/v1`) and for Prometheus (`/metrics`), stored as their SHA-256
(cermin/ops/stateschema.py; cermin/ops/webstore.py; docs/dashboard.md "API tokens").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10

Types are spelled here, not imported from stateschema, so this revision creates the same table for ever.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.CheckConstraint("scope IN ('api', 'metrics')", name=op.f("ck_api_tokens_scope")),
        sa.CheckConstraint("(scope = 'api') = (user_id IS NOT NULL)", name=op.f("ck_api_tokens_api_user")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
