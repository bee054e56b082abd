"""Reading stored image embeddings: lookups for duplicate reuse, bulk scans for backtests, retention.

Embeddings are written by `VerdictStore.save_batch`, in the same transaction as their verdicts. A scan
joins them to verdicts on (model_id, image_sha256) and reads them in large chunks straight from the
driver's cursor: a backtest over a million rows spends its time in the database, not in Python objects.
Reads for backtests and tuning take several model ids (a checkpoint's content-hash id and the names its
rows were stored under before), and `coverage` says what is stored when a read finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import ColumnElement, Engine, Table, and_, delete, func, outerjoin, select

from moderation.storage.errors import storage_errors
from moderation.storage.models import embeddings_table, verdicts_table
from moderation.storage.statements import stream_chunks
from moderation.verdict import EMBEDDING_DTYPE

_LOOKUP_CHUNK = 500


@dataclass(frozen=True)
class EmbeddingChunk:
    """Stored verdicts with their embeddings, column-wise (row i of each belongs together)."""

    content_ids: list[str]
    flagged: np.ndarray  # bool [n]
    top_categories: list[str | None]
    actions: list[str | None]
    embeddings: np.ndarray  # float16 [n, dim]

    def __len__(self) -> int:
        return len(self.content_ids)


@dataclass(frozen=True)
class ModelCoverage:
    """Under one model id: how many scored verdicts (status ok) match a filter, and how many of them
    have a stored embedding (the rest were pruned, or stored with embeddings switched off)."""

    model_id: str
    verdicts: int
    with_embeddings: int


ModelIds = str | Sequence[str]  # one model id, or several (a checkpoint's id and its legacy names)


def _ids(model_ids: ModelIds) -> list[str]:
    return [model_ids] if isinstance(model_ids, str) else list(dict.fromkeys(model_ids))


class EmbeddingStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get_many(self, model_id: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embeddings (float16 [dim]) of the given content hashes under `model_id`."""
        table = embeddings_table
        found: dict[str, np.ndarray] = {}
        with storage_errors("could not read embeddings"), self._engine.connect() as conn:
            for start in range(0, len(hashes), _LOOKUP_CHUNK):
                query = select(table.c.image_sha256, table.c.vector).where(
                    table.c.model_id == model_id, table.c.image_sha256.in_(hashes[start : start + _LOOKUP_CHUNK])
                )
                for content_hash, vector in conn.execute(query):
                    found[content_hash] = np.frombuffer(vector, dtype=EMBEDDING_DTYPE)
        return found

    def for_content_ids(self, model_id: ModelIds, content_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored embedding of each content id's scored verdicts under `model_id` (for labelled sets).

        `model_id` may be several ids; the newest verdict of a content id wins."""
        v, e = verdicts_table, embeddings_table
        ids = _ids(model_id)
        found: dict[str, np.ndarray] = {}
        with storage_errors("could not read embeddings"), self._engine.connect() as conn:
            for start in range(0, len(content_ids), _LOOKUP_CHUNK):
                query = (
                    select(v.c.content_id, e.c.vector)
                    .select_from(v.join(e, same_image(v, e)))
                    .where(v.c.model_id.in_(ids), v.c.content_id.in_(content_ids[start : start + _LOOKUP_CHUNK]))
                    .order_by(v.c.id)  # the newest verdict of a content id comes last and wins
                )
                for content_id, vector in conn.execute(query):
                    found[content_id] = np.frombuffer(vector, dtype=EMBEDDING_DTYPE)
        return found

    def count(self) -> int:
        with storage_errors("could not count embeddings"), self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(embeddings_table)).scalar_one())

    def prune(self, older_than: timedelta, now: datetime | None = None) -> int:
        """Delete embeddings stored before `now - older_than`; verdicts stay. Returns how many went."""
        cutoff = (now or datetime.now(timezone.utc)) - older_than
        with storage_errors("could not prune embeddings"), self._engine.begin() as conn:
            result = conn.execute(delete(embeddings_table).where(embeddings_table.c.created_at < cutoff))
        return int(result.rowcount or 0)

    def scan(
        self,
        model_id: ModelIds,
        since: datetime | None = None,
        sources: Sequence[str] = (),
        chunk_size: int = 100_000,
    ) -> Iterator[EmbeddingChunk]:
        """Every scored verdict (status ok) of `model_id` (one id or several) with a stored embedding, in chunks."""
        v, e = verdicts_table, embeddings_table
        conditions = [v.c.model_id.in_(_ids(model_id)), *_filters(since, sources)]
        query = (
            select(v.c.content_id, v.c.flagged, v.c.top_category, v.c.action, e.c.vector)
            .select_from(v.join(e, same_image(v, e)))
            .where(*conditions)
        )
        yield from stream_chunks(self._engine, query, chunk_size, _chunk, "could not read embeddings")

    def coverage(
        self,
        since: datetime | None = None,
        sources: Sequence[str] = (),
        content_ids: Sequence[str] | None = None,
    ) -> list[ModelCoverage]:
        """Per model id, the scored verdicts matching the filters and how many have an embedding, most first.

        What a backtest or a tuning run that found nothing reports: whether there was no traffic, no
        stored embeddings, or embeddings under another model's id."""
        v, e = verdicts_table, embeddings_table
        base = (
            select(v.c.model_id, func.count(), func.count(e.c.image_sha256))
            .select_from(outerjoin(v, e, same_image(v, e)))
            .group_by(v.c.model_id)
        )
        conditions = list(_filters(since, sources))
        batches = [None] if content_ids is None else [
            list(content_ids[start : start + _LOOKUP_CHUNK]) for start in range(0, len(content_ids), _LOOKUP_CHUNK)
        ]
        totals: dict[str, list[int]] = {}
        with storage_errors("could not count stored verdicts"), self._engine.connect() as conn:
            for batch in batches:
                where = conditions if batch is None else [*conditions, v.c.content_id.in_(batch)]
                for model, verdicts, embedded in conn.execute(base.where(*where)):
                    counts = totals.setdefault(str(model), [0, 0])
                    counts[0] += int(verdicts)
                    counts[1] += int(embedded)
        found = [ModelCoverage(model, verdicts, embedded) for model, (verdicts, embedded) in totals.items()]
        return sorted(found, key=lambda c: (-c.verdicts, c.model_id))


def _filters(since: datetime | None, sources: Sequence[str]) -> Iterator[ColumnElement[bool]]:
    v = verdicts_table
    yield v.c.status == "ok"
    if since is not None:
        yield v.c.created_at >= since
    if sources:
        yield v.c.source.in_(list(sources))


def same_image(v: Table, e: Table) -> ColumnElement[bool]:
    """The join of verdicts `v` to embeddings `e`: the same image content under the same model."""
    return and_(e.c.model_id == v.c.model_id, e.c.image_sha256 == v.c.image_sha256)


def _chunk(rows: Sequence[Sequence[object]]) -> EmbeddingChunk:
    content_ids, flagged, top_categories, actions, vectors = (list(column) for column in zip(*rows, strict=True))
    packed = b"".join(bytes(vector) for vector in vectors)  # type: ignore[call-overload]
    matrix = np.frombuffer(packed, dtype=EMBEDDING_DTYPE).reshape(len(vectors), -1)
    return EmbeddingChunk(
        content_ids=content_ids,  # type: ignore[arg-type]
        flagged=np.array(flagged, dtype=bool),
        top_categories=top_categories,  # type: ignore[arg-type]
        actions=actions,  # type: ignore[arg-type]
        embeddings=matrix,
    )
