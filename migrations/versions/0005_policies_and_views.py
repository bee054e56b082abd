"""Policies stored by hash, and the versioned read views dashboards build on (moderation_v1_*).

The views are the stable read interface promised in the README: within v1, columns are only ever added;
a change that would break a query gets a moderation_v2_* view beside the v1 one. Their SQL is written
here, frozen, per dialect (hour buckets are the one difference), never generated from the models.

Additive: code at 0004 runs on this schema unchanged (it never reads the new table or views).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from moderation.storage.migrate import declare_compatibility

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible_with = "0004"

# Flagged verdicts only have a category: an allowed image's top category (often an unsafe one that scored
# below its threshold) is not a finding, and dashboards must not count it as one.
_CATEGORY = "CASE WHEN v.flagged THEN v.top_category END"
# What happened to the content, for people: the latest decision wins over the model's verdict.
_STATE = """CASE
        WHEN d.outcome = 'violating' THEN 'removed'
        WHEN d.outcome = 'not_violating' THEN 'kept'
        WHEN v.status = 'error' THEN 'error'
        WHEN v.action IN ('block', 'escalate') THEN 'blocked'
        WHEN v.flagged THEN 'in_review'
        ELSE 'allowed'
    END"""

CONTENT_STATE = f"""
CREATE VIEW moderation_v1_content_state AS
SELECT
    v.content_id,
    v.event_id AS latest_event_id,
    v.source,
    v.status,
    v.flagged,
    {_CATEGORY} AS flagged_category,
    v.action,
    v.uncertain,
    v.audited,
    v.error_reason,
    v.policy_version,
    v.policy_hash,
    v.model_id,
    v.uploaded_at,
    v.created_at AS verdict_at,
    v.verdicts,
    d.decision_id AS latest_decision_id,
    d.kind AS decision_kind,
    d.outcome AS decision_outcome,
    d.decided_at,
    {_STATE} AS state
FROM (
    SELECT verdicts.*,
        row_number() OVER (PARTITION BY content_id ORDER BY id DESC) AS newest,
        count(*) OVER (PARTITION BY content_id) AS verdicts
    FROM verdicts
) AS v
LEFT JOIN (
    SELECT review_decisions.*,
        row_number() OVER (PARTITION BY content_id ORDER BY id DESC) AS newest
    FROM review_decisions
    WHERE kind <> 'escalate'
) AS d ON d.content_id = v.content_id AND d.newest = 1
WHERE v.newest = 1
"""

REVIEW_QUEUE = """
CREATE VIEW moderation_v1_review_queue AS
SELECT
    i.id AS item_id,
    i.event_id,
    i.content_id,
    i.source,
    i.queue,
    i.reason,
    i.priority,
    i.category,
    i.claimed_by,
    i.claim_expires_at,
    i.excluded_reviewer,
    i.media_status,
    i.entered_at,
    i.created_at AS queued_at,
    v.action,
    v.uncertain,
    v.audited,
    v.policy_version,
    v.uploaded_at
FROM review_items AS i
LEFT JOIN verdicts AS v ON v.event_id = i.event_id
WHERE i.status = 'pending'
"""

DECISIONS = """
CREATE VIEW moderation_v1_decisions AS
SELECT
    d.decision_id,
    d.item_id,
    d.event_id,
    d.content_id,
    i.source,
    i.category AS flagged_category,
    i.reason AS review_reason,
    d.reviewer,
    d.kind,
    d.outcome,
    d.categories,
    d.previous_decision_id,
    d.bulk_id,
    d.decided_at,
    d.published_at
FROM review_decisions AS d
JOIN review_items AS i ON i.id = d.item_id
"""

HOUR = {
    "postgresql": "date_trunc('hour', v.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "strftime('%Y-%m-%d %H:00:00', v.created_at)",
}

COUNTS_HOURLY = """
CREATE VIEW moderation_v1_counts_hourly AS
SELECT
    {hour} AS hour,
    v.source,
    v.status,
    {category} AS category,
    COALESCE(v.action, 'error') AS action,
    count(*) AS verdicts,
    sum(CASE WHEN v.uncertain THEN 1 ELSE 0 END) AS uncertain,
    sum(CASE WHEN v.audited THEN 1 ELSE 0 END) AS audited
FROM verdicts AS v
GROUP BY 1, 2, 3, 4, 5
"""

VIEWS = ("moderation_v1_content_state", "moderation_v1_review_queue", "moderation_v1_decisions",
         "moderation_v1_counts_hourly")


def upgrade() -> None:
    declare_compatibility(revision, compatible_with)
    op.create_table(
        "policies",
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("meaning", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("policy_hash", name=op.f("pk_policies")),
    )
    op.create_index(op.f("ix_policies_version"), "policies", ["version"])
    # The content-state view finds a content's latest decision by content id.
    op.create_index(op.f("ix_review_decisions_content_id"), "review_decisions", ["content_id"])
    dialect = op.get_bind().dialect.name
    for statement in (CONTENT_STATE, REVIEW_QUEUE, DECISIONS,
                      COUNTS_HOURLY.format(hour=HOUR[dialect], category=_CATEGORY)):
        op.execute(sa.text(statement))


def downgrade() -> None:
    for view in reversed(VIEWS):
        op.execute(sa.text(f"DROP VIEW IF EXISTS {view}"))
    op.drop_index(op.f("ix_review_decisions_content_id"), table_name="review_decisions")
    op.drop_index(op.f("ix_policies_version"), table_name="policies")
    op.drop_table("policies")
    op.execute(sa.text("DELETE FROM schema_compatibility WHERE revision = '0005'"))
