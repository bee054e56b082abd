"""The tables: `verdicts` (one row per image event, the durable record of every decision we made), and
beside it `embeddings` (one per image content and model, for backtests and duplicate reuse),
`shadow_verdicts` (what candidate policies would have decided) and `review_outcomes` (what reviewers
decided about flagged items), `review_publications` (which verdicts' review messages were published).
The review console's tables: `review_items` (the queue, one row per event sent to human review, with
its claim and its reviewer copy of the image), `review_decisions` (append-only decision history, also the
outbox of the decisions topic), `review_audit` (append-only audit log), `console_users` and
`console_sessions`. `policies` keeps every policy verdicts were decided under, by hash.

The schema is declared here once, for the store's queries and as Alembic's `target_metadata`; the
migrations in `migrations/versions/` create it and must stay in step with it (a test compares them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names, so migrations (and SQLite's batch mode, which recreates tables)
# can refer to constraints by a name that is the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Event, content and model identifiers come from upstream systems we do not control: generous, not unlimited.
ID_LENGTH = 255
SHA256_HEX_LENGTH = 64


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always stored as UTC and always comes back timezone-aware, in UTC.

    PostgreSQL's `timestamptz` keeps the instant but returns it in the session's time zone; SQLite has
    no time zone support and SQLAlchemy silently drops `tzinfo`. Normalising to UTC on the way in and
    attaching UTC on the way out gives the same values on both. Naive datetimes are refused: we cannot
    know which instant they mean, and guessing would put wrong times in an audit record.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()!r}: timestamps must be timezone-aware")
        utc = value.astimezone(timezone.utc)
        # SQLite stores text without an offset; store the UTC wall time so values sort correctly.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# JSONB on PostgreSQL (indexable, compact); plain JSON (text) elsewhere.
ScoresJSON = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity for headroom.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class VerdictRow(Base):
    """A stored `moderation.verdict.Verdict`; `event_id` is the idempotency key for redelivered events."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False, unique=True)
    content_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    source: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    flagged: Mapped[bool] = mapped_column(Boolean, nullable=False)
    top_category: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(16))
    scores: Mapped[dict[str, Any]] = mapped_column(ScoresJSON, nullable=False)
    best_prompt: Mapped[str | None] = mapped_column(Text)
    policy_version: Mapped[str] = mapped_column(String(64), nullable=False)
    policy_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), nullable=False)
    model_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    image_ref: Mapped[str] = mapped_column(Text, nullable=False)  # URLs can be long
    image_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX_LENGTH))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    error_reason: Mapped[str | None] = mapped_column(String(128))
    error_detail: Mapped[str | None] = mapped_column(Text)
    load_ms: Mapped[float | None] = mapped_column(Float)
    score_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())
    uncertain: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    embedding_reused: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    audited: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    # The picture's PDQ perceptual hash (hex) and quality (moderation/perceptual.py); NULL when not computed.
    pdq_hash: Mapped[str | None] = mapped_column(String(64))
    pdq_quality: Mapped[int | None] = mapped_column(SmallInteger)

    __table_args__ = (
        # The one invariant the database can check cheaply: a status the code knows how to read back.
        CheckConstraint("status IN ('ok', 'error')", name="status"),
        # Trust-and-safety dashboard queries: everything about one piece of content, the newest
        # verdicts, the newest flagged verdicts, and error rates.
        Index("ix_verdicts_content_id", "content_id"),
        Index("ix_verdicts_created_at", "created_at"),
        Index("ix_verdicts_flagged_created_at", "flagged", "created_at"),
        Index("ix_verdicts_status", "status"),
        # The read API's filtered pages walk the newest ids first; for a filter that matches few rows these
        # take them straight to the matches (partial indexes: only the rows they select, so small).
        Index("ix_verdicts_source_id", "source", "id"),
        Index("ix_verdicts_flagged_category_id", "top_category", "id",
              postgresql_where=text("flagged"), sqlite_where=text("flagged")),
        Index("ix_verdicts_uncertain_id", "id", postgresql_where=text("uncertain"), sqlite_where=text("uncertain")),
        Index("ix_verdicts_audited_id", "id", postgresql_where=text("audited"), sqlite_where=text("audited")),
    )


class EmbeddingRow(Base):
    """The normalised image embedding of one image content under one model, as float16 bytes.

    Verdicts reach it through (model_id, image_sha256): many events with the same bytes share one row.
    """

    __tablename__ = "embeddings"

    model_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("model_id", "image_sha256", name="pk_embeddings"),
        Index("ix_embeddings_created_at", "created_at"),  # retention deletes by age
    )


class ShadowVerdictRow(Base):
    """A shadow policy's decision for one event; idempotent on (event_id, policy_hash)."""

    __tablename__ = "shadow_verdicts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    policy_version: Mapped[str] = mapped_column(String(64), nullable=False)
    policy_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), nullable=False)
    flagged: Mapped[bool] = mapped_column(Boolean, nullable=False)
    top_category: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    uncertain: Mapped[bool] = mapped_column(Boolean, nullable=False)
    scores: Mapped[dict[str, Any]] = mapped_column(ScoresJSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (
        UniqueConstraint("event_id", "policy_hash"),
        Index("ix_shadow_verdicts_policy_hash_created_at", "policy_hash", "created_at"),
    )


class ReviewOutcomeRow(Base):
    """A reviewer's decision on a flagged event: the latest decision per event is kept."""

    __tablename__ = "review_outcomes"

    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # confirmed | overturned
    category: Mapped[str | None] = mapped_column(String(64))  # the category that really applies, if another
    reviewer: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (CheckConstraint("outcome IN ('confirmed', 'overturned')", name="outcome"),)


class ReviewPublicationRow(Base):
    """A verdict whose review message was published and acknowledged by the brokers (flushed).

    A repeat of the event (a re-send with the same event_id, or a conflicting one) finds it here and
    publishes nothing more, so a second review message happens only in the crash window between the
    publish and this row. Kept apart from `verdicts` so recording it never rewrites a verdict row.
    """

    __tablename__ = "review_publications"

    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())


class ReviewItemRow(Base):
    """One event sent to human review: its place in the queue, its claim and its reviewer copy of the image.

    Written with its verdict, in the same transaction (so no flagged verdict lacks its queue row). The
    queue order is (priority, entered_at): block before review before uncertain before audit, oldest
    first. A claim is a lease: `claimed_by` holds the item until `claim_expires_at`, then anyone may take it.
    """

    __tablename__ = "review_items"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False, unique=True)
    content_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    source: Mapped[str] = mapped_column(String(128), nullable=False)
    reason: Mapped[str] = mapped_column(String(16), nullable=False)  # why it entered (review/routing.py)
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False)  # lower first
    category: Mapped[str | None] = mapped_column(String(64))  # the verdict's top category
    queue: Mapped[str] = mapped_column(String(64), nullable=False)  # the category, or audit/escalated/appeals
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # pending | decided
    claimed_by: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    excluded_reviewer: Mapped[str | None] = mapped_column(String(ID_LENGTH))  # an appeal: not the one who decided
    media_status: Mapped[str] = mapped_column(String(16), nullable=False)  # stored|withheld|off|failed|pruned
    media_key: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    media_width: Mapped[int | None] = mapped_column(Integer)
    media_height: Mapped[int | None] = mapped_column(Integer)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # (re-)entered the queue
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    latest_decision_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'decided')", name="status"),
        # The next item: pending, in queue order.
        Index("ix_review_items_status_priority_entered_at", "status", "priority", "entered_at"),
        # The stats page reads these without touching the table (index-only scans): waiting per queue,
        # sent to review per category and day.
        Index("ix_review_items_status_queue_entered_at", "status", "queue", "entered_at"),
        Index("ix_review_items_created_at_category_reason", "created_at", "category", "reason"),
        Index("ix_review_items_claimed_by", "claimed_by"),
    )


class ReviewDecisionRow(Base):
    """One decision on a review item, append-only: the latest per item is its state.

    `decision_id` is the idempotency key of its message on the decisions topic; `published_at` is set once
    the brokers acknowledged it (the rows still NULL there are the outbox).
    """

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    decision_id: Mapped[str] = mapped_column(String(36), nullable=False, unique=True)
    item_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    content_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    reviewer: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # decide | override | escalate | appeal
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # violating | not_violating | escalated
    categories: Mapped[dict[str, Any]] = mapped_column(ScoresJSON, nullable=False)  # category -> violating?
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    previous_decision_id: Mapped[str | None] = mapped_column(String(36))
    bulk_id: Mapped[str | None] = mapped_column(String(36))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("outcome IN ('violating', 'not_violating', 'escalated')", name="outcome"),
        Index("ix_review_decisions_item_id", "item_id"),
        Index("ix_review_decisions_content_id", "content_id"),
        Index("ix_review_decisions_reviewer_decided_at", "reviewer", "decided_at"),
        Index("ix_review_decisions_decided_at_reviewer_kind", "decided_at", "reviewer", "kind"),
        Index("ix_review_decisions_published_at", "published_at"),
    )


class ReviewAuditRow(Base):
    """The audit log, append-only: decisions, claims, media views, logins and account changes."""

    __tablename__ = "review_audit"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    item_id: Mapped[int | None] = mapped_column(BigInteger)
    event_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    detail: Mapped[dict[str, Any]] = mapped_column(ScoresJSON, nullable=False)

    __table_args__ = (
        Index("ix_review_audit_at", "at"),
        Index("ix_review_audit_actor_at", "actor", "at"),
        Index("ix_review_audit_item_id", "item_id"),
    )


class ConsoleUserRow(Base):
    """A console account: a built-in login (argon2 hash) or a name a trusted proxy vouches for (no hash)."""

    __tablename__ = "console_users"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    preferences: Mapped[dict[str, Any]] = mapped_column(ScoresJSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (CheckConstraint("role IN ('reviewer', 'lead', 'admin')", name="role"),)


class ConsoleSessionRow(Base):
    """A server-side login session: the cookie carries a random token, the table only its sha256."""

    __tablename__ = "console_sessions"

    token_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (Index("ix_console_sessions_username", "username"),)


class PolicyRow(Base):
    """Every policy a verdict was decided under (or a shadow recorded), by hash: its text and meaning, so any
    verdict can be explained with the exact thresholds and prompts that produced it.

    Written with the first verdicts decided under it, in their transaction; `last_seen` is refreshed by the
    workers about once a minute while it is in force.
    """

    __tablename__ = "policies"

    policy_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)  # the YAML the first worker read
    meaning: Mapped[dict[str, Any]] = mapped_column(ScoresJSON, nullable=False)  # what the hash covers
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (Index("ix_policies_version", "version"),)


class PolicyHeadRow(Base):
    """Every trained head a stored policy pins, by the sha256 of its file: the file itself (a few KB), the
    model whose embeddings it was trained on and the training report, so a policy version with heads can be
    explained and reproduced from the database alone. Written with the policy's row, in its transaction."""

    __tablename__ = "policy_heads"

    head_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), primary_key=True)
    category: Mapped[str] = mapped_column(String(63), nullable=False)
    model_id: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # the safetensors file
    report: Mapped[dict[str, Any] | None] = mapped_column(ScoresJSON, nullable=True)  # `policy train`'s report
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())


class BankRow(Base):
    """A bank of known content: perceptual hashes whose matches are decided without the model."""

    __tablename__ = "banks"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    action: Mapped[str] = mapped_column(String(16), nullable=False)  # block | review
    category: Mapped[str] = mapped_column(String(64), nullable=False)  # the verdict's category on a match
    max_distance: Mapped[int] = mapped_column(SmallInteger, nullable=False)  # PDQ bits; 31 recommended
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_by: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (
        CheckConstraint("action IN ('block', 'review')", name="action"),
        CheckConstraint("max_distance >= 0 AND max_distance <= 128", name="max_distance"),
    )


class BankEntryRow(Base):
    """One hash in a bank. Never deleted by a disable: `enabled` false stops it matching, and `changed_at`
    (bumped by every change) is what workers poll to pick up edits without reloading every entry."""

    __tablename__ = "bank_entries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    bank_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    pdq_hash: Mapped[str] = mapped_column(String(64), nullable=False)  # 64 lowercase hex characters
    label: Mapped[str] = mapped_column(String(200), nullable=False, server_default="")
    source: Mapped[str] = mapped_column(String(200), nullable=False, server_default="")
    added_by: Mapped[str] = mapped_column(String(ID_LENGTH), nullable=False)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # removed: kept so workers see it go
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, server_default=func.now())

    __table_args__ = (
        UniqueConstraint("bank_id", "pdq_hash"),
        Index("ix_bank_entries_changed_at", "changed_at"),
    )


class ApiTokenRow(Base):
    """A bearer token of the read API: it acts as one console account (its role) within a scope (read, or
    read and write). Only the token's sha256 is kept; `prefix` (its first characters) lets people tell
    tokens apart in lists and logs."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    scope: Mapped[str] = mapped_column(String(8), nullable=False)
    token_sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_by: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("scope IN ('read', 'write')", name="scope"),
        Index("ix_api_tokens_username", "username"),
    )


class SchemaCompatibilityRow(Base):
    """Per schema revision, the oldest code revision that can run on it (see storage/migrate.py).

    Written by each migration, read by releases older than the schema, which lack its migration file.
    """

    __tablename__ = "schema_compatibility"

    revision: Mapped[str] = mapped_column(String(32), primary_key=True)
    compatible_with: Mapped[str] = mapped_column(String(32), nullable=False)


# The Core tables, for bulk statements that need no ORM identity tracking.
verdicts_table: Table = Base.metadata.tables["verdicts"]
embeddings_table: Table = Base.metadata.tables["embeddings"]
shadow_verdicts_table: Table = Base.metadata.tables["shadow_verdicts"]
review_outcomes_table: Table = Base.metadata.tables["review_outcomes"]
review_publications_table: Table = Base.metadata.tables["review_publications"]
review_items_table: Table = Base.metadata.tables["review_items"]
review_decisions_table: Table = Base.metadata.tables["review_decisions"]
review_audit_table: Table = Base.metadata.tables["review_audit"]
console_users_table: Table = Base.metadata.tables["console_users"]
console_sessions_table: Table = Base.metadata.tables["console_sessions"]
policies_table: Table = Base.metadata.tables["policies"]
policy_heads_table: Table = Base.metadata.tables["policy_heads"]
api_tokens_table: Table = Base.metadata.tables["api_tokens"]
banks_table: Table = Base.metadata.tables["banks"]
bank_entries_table: Table = Base.metadata.tables["bank_entries"]
