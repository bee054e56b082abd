"""Verdict storage: the verdicts table, the idempotent store over it, and the migrations that create it."""

from moderation.storage.migrate import alembic_config, current_revision, head_revision, upgrade
from moderation.storage.models import Base, VerdictRow, verdicts_table
from moderation.storage.store import StorageError, VerdictStore, create_engine_for, normalise_url

__all__ = [
    "Base",
    "StorageError",
    "VerdictRow",
    "VerdictStore",
    "alembic_config",
    "create_engine_for",
    "current_revision",
    "head_revision",
    "normalise_url",
    "upgrade",
    "verdicts_table",
]
