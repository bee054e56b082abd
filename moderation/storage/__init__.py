"""Storage: verdicts (and their embeddings, shadow verdicts and review outcomes), the migrations that create them.

The modules, each owning one job: `errors` (StorageError and the one wrapping of database failures),
`engine` (URLs and engines), `statements` (SQL shapes the stores share), `connect` (open, check, dispose),
`migrate` (the schema), `models` (the tables), and one store per table: `store` (verdicts), `embeddings`,
`shadows`, `review_decisions`, `policy_versions`.
"""

from moderation.storage.connect import open_engine
from moderation.storage.embeddings import EmbeddingChunk, EmbeddingStore
from moderation.storage.engine import create_engine_for, normalise_url
from moderation.storage.errors import StorageError, storage_errors
from moderation.storage.migrate import alembic_config, current_revision, head_revision, upgrade
from moderation.storage.models import Base, VerdictRow, verdicts_table
from moderation.storage.store import VerdictStore

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
    "open_engine",
    "storage_errors",
    "upgrade",
    "verdicts_table",
]
