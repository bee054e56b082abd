"""Storage: verdicts (and their embeddings, shadow verdicts and review outcomes), the migrations that create them."""

from moderation.storage.embeddings import EmbeddingChunk, EmbeddingStore
from moderation.storage.migrate import alembic_config, current_revision, head_revision, upgrade
from moderation.storage.models import Base, VerdictRow, verdicts_table
from moderation.storage.store import StorageError, VerdictStore, create_engine_for, normalise_url

__all__ = [
    "Base",
    "EmbeddingChunk",
    "EmbeddingStore",
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
