"""Known-content banks: named sets of PDQ hashes (each with an action, a category and a match distance)
and their entries, never deleted by a disable, with `changed_at` for workers to poll.

Additive: code at 0008 runs on this schema unchanged (it never reads the new tables).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from moderation.storage.migrate import declare_compatibility

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with = "0008"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    declare_compatibility(revision, compatible_with)
    op.create_table(
        "banks",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("max_distance", sa.SmallInteger(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _when("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_banks")),
        sa.UniqueConstraint("name", name=op.f("uq_banks_name")),
        sa.CheckConstraint("action IN ('block', 'review')", name=op.f("ck_banks_action")),
        sa.CheckConstraint("max_distance >= 0 AND max_distance <= 128", name=op.f("ck_banks_max_distance")),
    )
    op.create_table(
        "bank_entries",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("bank_id", sa.BigInteger(), nullable=False),
        sa.Column("pdq_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), server_default="", nullable=False),
        sa.Column("source", sa.String(200), server_default="", nullable=False),
        sa.Column("added_by", sa.String(255), nullable=False),
        _when("added_at"),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        _when("changed_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_entries")),
        sa.UniqueConstraint("bank_id", "pdq_hash", name=op.f("uq_bank_entries_bank_id_pdq_hash")),
    )
    op.create_index(op.f("ix_bank_entries_changed_at"), "bank_entries", ["changed_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_bank_entries_changed_at"), table_name="bank_entries")
    op.drop_table("bank_entries")
    op.drop_table("banks")
    op.execute(sa.text("DELETE FROM schema_compatibility WHERE revision = '0009'"))
