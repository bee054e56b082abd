"""Policy lifecycle: stored embeddings, shadow verdicts, review outcomes, uncertain and reused marks.

Written by hand and kept in step with moderation/storage/models.py (a test compares them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows were decided without an uncertain band and scored fresh: false is the truth for them.
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("uncertain", sa.Boolean(), server_default=sa.text("false"), nullable=False))
        batch.add_column(sa.Column("embedding_reused", sa.Boolean(), server_default=sa.text("false"), nullable=False))

    op.create_table(
        "embeddings",
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "image_sha256", name=op.f("pk_embeddings")),
    )
    op.create_index(op.f("ix_embeddings_created_at"), "embeddings", ["created_at"])

    op.create_table(
        "shadow_verdicts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("top_category", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("uncertain", sa.Boolean(), nullable=False),
        sa.Column("scores", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_verdicts")),
        sa.UniqueConstraint("event_id", "policy_hash", name=op.f("uq_shadow_verdicts_event_id_policy_hash")),
    )
    op.create_index(
        op.f("ix_shadow_verdicts_policy_hash_created_at"), "shadow_verdicts", ["policy_hash", "created_at"]
    )

    op.create_table(
        "review_outcomes",
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("category", sa.String(64), nullable=True),
        sa.Column("reviewer", sa.String(255), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_review_outcomes")),
        sa.CheckConstraint("outcome IN ('confirmed', 'overturned')", name=op.f("ck_review_outcomes_outcome")),
    )


def downgrade() -> None:
    op.drop_table("review_outcomes")
    op.drop_index(op.f("ix_shadow_verdicts_policy_hash_created_at"), table_name="shadow_verdicts")
    op.drop_table("shadow_verdicts")
    op.drop_index(op.f("ix_embeddings_created_at"), table_name="embeddings")
    op.drop_table("embeddings")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("embedding_reused")
        batch.drop_column("uncertain")
