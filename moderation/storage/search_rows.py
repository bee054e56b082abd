"""The reads behind search: verdicts with their embeddings for an index, new ones since a watermark, the
shown columns of the hits, and the stored embedding of one event or content id ("more like this").

An index item is a scored verdict (status ok) with a stored embedding, keyed by its verdict id: filters
(time, source, verdict) are about the event, and many events may share one image's embedding row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, or_, select

from moderation.storage.embeddings import ModelIds, _ids, same_image
from moderation.storage.errors import storage_errors
from moderation.storage.models import embeddings_table, verdicts_table
from moderation.storage.statements import chunks, stream_chunks
from moderation.verdict import EMBEDDING_DTYPE


@dataclass(frozen=True)
class IndexRows:
    """Index items, column-wise: row i of each belongs together."""

    ids: np.ndarray  # int64 verdict ids
    created_at: np.ndarray  # float64 POSIX seconds of the verdict
    sources: list[str]
    flagged: np.ndarray  # bool
    top_categories: list[str | None]
    actions: list[str | None]
    embeddings: np.ndarray  # float16 [n, dim]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ShownRow:
    """What a hit shows, read for the few hits only (the index keeps just what filters need)."""

    verdict_id: int
    event_id: str
    content_id: str
    source: str
    flagged: bool
    action: str | None
    top_category: str | None
    created_at: datetime


def scan_index_rows(
    engine: Engine,
    model_id: ModelIds,
    after_id: int | None = None,
    since: datetime | None = None,
    chunk_size: int = 50_000,
) -> Iterator[IndexRows]:
    """Index items of `model_id`: all, or those with a verdict id above `after_id` or created at/after `since`."""
    v, e = verdicts_table, embeddings_table
    query = (
        select(v.c.id, v.c.created_at, v.c.source, v.c.flagged, v.c.top_category, v.c.action, e.c.vector)
        .select_from(v.join(e, same_image(v, e)))
        .where(v.c.model_id.in_(_ids(model_id)), v.c.status == "ok")
    )
    newer = []
    if after_id is not None:
        newer.append(v.c.id > after_id)
    if since is not None:
        newer.append(v.c.created_at >= since)
    if newer:
        query = query.where(or_(*newer))
    yield from stream_chunks(engine, query, chunk_size, _index_rows, "could not read embeddings for search")


def _index_rows(rows: Sequence[Sequence[object]]) -> IndexRows:
    ids, created, sources, flagged, categories, actions, vectors = (list(c) for c in zip(*rows, strict=True))
    packed = b"".join(bytes(vector) for vector in vectors)  # type: ignore[call-overload]
    return IndexRows(
        ids=np.array(ids, dtype=np.int64),
        created_at=np.array([moment.timestamp() for moment in created], dtype=np.float64),  # type: ignore[attr-defined]
        sources=sources,  # type: ignore[arg-type]
        flagged=np.array(flagged, dtype=bool),
        top_categories=categories,  # type: ignore[arg-type]
        actions=actions,  # type: ignore[arg-type]
        embeddings=np.frombuffer(packed, dtype=EMBEDDING_DTYPE).reshape(len(vectors), -1),
    )


def shown_rows(engine: Engine, verdict_ids: Sequence[int]) -> dict[int, ShownRow]:
    """The shown columns of these verdicts, by id."""
    v = verdicts_table
    found: dict[int, ShownRow] = {}
    columns = (v.c.id, v.c.event_id, v.c.content_id, v.c.source, v.c.flagged, v.c.action, v.c.top_category,
               v.c.created_at)
    with storage_errors("could not read verdicts"), engine.connect() as conn:
        for batch in chunks([int(i) for i in verdict_ids], 500):
            for row in conn.execute(select(*columns).where(v.c.id.in_(batch))):
                found[int(row.id)] = ShownRow(
                    int(row.id), row.event_id, row.content_id, row.source, bool(row.flagged), row.action,
                    row.top_category, row.created_at,
                )
    return found


def stored_embedding(engine: Engine, model_id: ModelIds, key: str) -> tuple[int, np.ndarray] | None:
    """The verdict id and stored embedding of event id `key`, else of content id `key` (its newest scored
    verdict), under `model_id`; None when neither has one."""
    v, e = verdicts_table, embeddings_table
    base = (
        select(v.c.id, e.c.vector)
        .select_from(v.join(e, same_image(v, e)))
        .where(v.c.model_id.in_(_ids(model_id)), v.c.status == "ok")
        .order_by(v.c.id.desc())
        .limit(1)
    )
    with storage_errors("could not read embeddings"), engine.connect() as conn:
        for column in (v.c.event_id, v.c.content_id):
            row = conn.execute(base.where(column == key)).first()
            if row is not None:
                return int(row.id), np.frombuffer(row.vector, dtype=EMBEDDING_DTYPE)
    return None
