"""Trained heads: every head file a stored policy pins (its bytes, the model it was trained on, its training
report), so a policy version with heads is explained and reproduced from the database alone.

Additive: code at 0006 runs on this schema unchanged (it never reads the new table).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from moderation.storage.migrate import declare_compatibility

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with = "0006"


def upgrade() -> None:
    declare_compatibility(revision, compatible_with)
    op.create_table(
        "policy_heads",
        sa.Column("head_sha256", sa.String(64), nullable=False),
        sa.Column("category", sa.String(63), nullable=False),
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("report", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("head_sha256", name=op.f("pk_policy_heads")),
    )


def downgrade() -> None:
    op.drop_table("policy_heads")
    op.execute(sa.text("DELETE FROM schema_compatibility WHERE revision = '0007'"))
