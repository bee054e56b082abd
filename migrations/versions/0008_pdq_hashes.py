"""PDQ perceptual hashes with the verdicts: each picture's hash (64 hex characters) and quality (0-100), the
first step of known-content banks (pictures matched by hash before the model).

Additive: code at 0007 runs on this schema unchanged (it never reads the new columns, which are NULL
for its rows and for pictures not hashed).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from moderation.storage.migrate import declare_compatibility

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with = "0007"


def upgrade() -> None:
    declare_compatibility(revision, compatible_with)
    op.add_column("verdicts", sa.Column("pdq_hash", sa.String(64), nullable=True))
    op.add_column("verdicts", sa.Column("pdq_quality", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later have it), not a batch copy of the table:
    # copying would drop `verdicts` under the moderation_v1_* views, which SQLite then refuses.
    op.drop_column("verdicts", "pdq_quality")
    op.drop_column("verdicts", "pdq_hash")
    op.execute(sa.text("DELETE FROM schema_compatibility WHERE revision = '0008'"))
