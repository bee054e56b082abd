"""Review publications (which verdicts' review messages the brokers acknowledged) and schema compatibility.

Written by hand and kept in step with moderation/storage/models.py (a test compares them). Additive: code
at 0002 runs on this schema unchanged (it never reads the new tables), and says so in
`schema_compatibility`, which this migration creates: from here on every migration declares, with
`declare_compatibility`, the oldest code revision that can run on its schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from moderation.storage.migrate import declare_compatibility

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with = "0002"  # the oldest code revision that runs on this schema (see declare_compatibility)


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("compatible_with", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_compatibility")),
    )
    declare_compatibility(revision, compatible_with)
    op.create_table(
        "review_publications",
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_review_publications")),
    )


def downgrade() -> None:
    op.drop_table("review_publications")
    op.drop_table("schema_compatibility")
