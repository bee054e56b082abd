"""Review publications: which verdicts' review messages the brokers acknowledged.

Written by hand and kept in step with moderation/storage/models.py (a test compares them). Additive: code
at 0002 runs on this schema unchanged (it never reads the table).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "review_publications",
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_review_publications")),
    )


def downgrade() -> None:
    op.drop_table("review_publications")
