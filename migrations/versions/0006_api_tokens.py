"""The read API: tokens for service accounts (only their sha256 is kept), each acting as one console
account with a scope (read, or read and write), revocable and optionally expiring; and the indexes that
keep its filtered verdict pages fast when a filter matches few rows (by source, by flagged category, the
uncertain and the audited ones).

Additive: code at 0005 runs on this schema unchanged (it never reads the new table; the indexes only cost
writes a little). On a large PostgreSQL table, create the indexes CONCURRENTLY by hand before upgrading
(same names) to avoid holding the write lock while they build: this migration then skips them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from moderation.storage.migrate import declare_compatibility

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with = "0005"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_VERDICT_INDEXES = (  # name, columns, partial index condition
    ("ix_verdicts_source_id", ["source", "id"], None),
    ("ix_verdicts_flagged_category_id", ["top_category", "id"], "flagged"),
    ("ix_verdicts_uncertain_id", ["id"], "uncertain"),
    ("ix_verdicts_audited_id", ["id"], "audited"),
)


def _when(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    declare_compatibility(revision, compatible_with)
    op.create_table(
        "api_tokens",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _when("created_at"),
        _when("expires_at", nullable=True),
        _when("last_used_at", nullable=True),
        _when("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
        sa.CheckConstraint("scope IN ('read', 'write')", name=op.f("ck_api_tokens_scope")),
    )
    op.create_index(op.f("ix_api_tokens_username"), "api_tokens", ["username"])
    for name, columns, where in _VERDICT_INDEXES:
        op.create_index(op.f(name), "verdicts", columns, if_not_exists=True,
                        postgresql_where=sa.text(where) if where else None,
                        sqlite_where=sa.text(where) if where else None)


def downgrade() -> None:
    for name, _, _ in reversed(_VERDICT_INDEXES):
        op.drop_index(op.f(name), table_name="verdicts")
    op.drop_index(op.f("ix_api_tokens_username"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.execute(sa.text("DELETE FROM schema_compatibility WHERE revision = '0006'"))
