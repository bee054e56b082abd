"""The review console: the queue (review_items), decision history, the audit log, console accounts and
sessions, and the verdicts' audited mark.

Written by hand and kept in step with moderation/storage/models.py (a test compares them). Additive: code
at 0003 runs on this schema unchanged (it never reads the new tables, and `audited` has a default); such
a worker just adds nothing to the queue, so upgrade the workers before opening the console.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from moderation.storage.migrate import declare_compatibility

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with = "0003"  # the oldest code revision that runs on this schema (see declare_compatibility)

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when(name: str, nullable: bool = False, default: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.func.now() if default else None, nullable=nullable
    )


def upgrade() -> None:
    declare_compatibility(revision, compatible_with)
    # Rows written before audit sampling existed were never audited: false is the truth for them.
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("audited", sa.Boolean(), server_default=sa.text("false"), nullable=False))

    op.create_table(
        "review_items",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("content_id", sa.String(255), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("category", sa.String(64), nullable=True),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        _when("claim_expires_at", nullable=True),
        sa.Column("excluded_reviewer", sa.String(255), nullable=True),
        sa.Column("media_status", sa.String(16), nullable=False),
        sa.Column("media_key", sa.String(255), nullable=True),
        sa.Column("media_width", sa.Integer(), nullable=True),
        sa.Column("media_height", sa.Integer(), nullable=True),
        _when("entered_at"),
        _when("decided_at", nullable=True),
        sa.Column("latest_decision_id", sa.String(36), nullable=True),
        _when("created_at", default=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
        sa.UniqueConstraint("event_id", name=op.f("uq_review_items_event_id")),
        sa.CheckConstraint("status IN ('pending', 'decided')", name=op.f("ck_review_items_status")),
    )
    op.create_index(
        op.f("ix_review_items_status_priority_entered_at"), "review_items", ["status", "priority", "entered_at"]
    )
    op.create_index(
        op.f("ix_review_items_status_queue_entered_at"), "review_items", ["status", "queue", "entered_at"]
    )
    op.create_index(
        op.f("ix_review_items_created_at_category_reason"), "review_items", ["created_at", "category", "reason"]
    )
    op.create_index(op.f("ix_review_items_claimed_by"), "review_items", ["claimed_by"])

    op.create_table(
        "review_decisions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("content_id", sa.String(255), nullable=False),
        sa.Column("reviewer", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("categories", _JSON, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("previous_decision_id", sa.String(36), nullable=True),
        sa.Column("bulk_id", sa.String(36), nullable=True),
        _when("decided_at"),
        _when("published_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_decisions")),
        sa.UniqueConstraint("decision_id", name=op.f("uq_review_decisions_decision_id")),
        sa.CheckConstraint(
            "outcome IN ('violating', 'not_violating', 'escalated')", name=op.f("ck_review_decisions_outcome")
        ),
    )
    op.create_index(op.f("ix_review_decisions_item_id"), "review_decisions", ["item_id"])
    op.create_index(op.f("ix_review_decisions_reviewer_decided_at"), "review_decisions", ["reviewer", "decided_at"])
    op.create_index(
        op.f("ix_review_decisions_decided_at_reviewer_kind"), "review_decisions", ["decided_at", "reviewer", "kind"]
    )
    op.create_index(op.f("ix_review_decisions_published_at"), "review_decisions", ["published_at"])

    op.create_table(
        "review_audit",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        _when("at"),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=True),
        sa.Column("event_id", sa.String(255), nullable=True),
        sa.Column("detail", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_audit")),
    )
    op.create_index(op.f("ix_review_audit_at"), "review_audit", ["at"])
    op.create_index(op.f("ix_review_audit_actor_at"), "review_audit", ["actor", "at"])
    op.create_index(op.f("ix_review_audit_item_id"), "review_audit", ["item_id"])

    op.create_table(
        "console_users",
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("preferences", _JSON, nullable=False),
        _when("created_at", default=True),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_console_users")),
        sa.CheckConstraint("role IN ('reviewer', 'lead', 'admin')", name=op.f("ck_console_users_role")),
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        _when("created_at"),
        _when("expires_at"),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_console_sessions")),
    )
    op.create_index(op.f("ix_console_sessions_username"), "console_sessions", ["username"])


def downgrade() -> None:
    op.drop_index(op.f("ix_console_sessions_username"), table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("console_users")
    for name in ("item_id", "actor_at", "at"):
        op.drop_index(op.f(f"ix_review_audit_{name}"), table_name="review_audit")
    op.drop_table("review_audit")
    for name in ("published_at", "decided_at_reviewer_kind", "reviewer_decided_at", "item_id"):
        op.drop_index(op.f(f"ix_review_decisions_{name}"), table_name="review_decisions")
    op.drop_table("review_decisions")
    for name in ("claimed_by", "created_at_category_reason", "status_queue_entered_at", "status_priority_entered_at"):
        op.drop_index(op.f(f"ix_review_items_{name}"), table_name="review_items")
    op.drop_table("review_items")
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("audited")
    op.execute(sa.text("DELETE FROM schema_compatibility WHERE revision = '0004'"))
