"""The review queue's side of media retention: which items' reviewer copies may go, and which are still used.

Only `media_status`, `media_key` and the item's age and status are read or written here; the queue itself
(claims, decisions) is moderation/review/'s. A copy's key is the upload's hash, so one file can belong to
several items: it may be deleted only once no item still `stored` names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, select, update

from moderation.storage.errors import storage_errors
from moderation.storage.models import review_items_table
from moderation.storage.statements import chunks
from moderation.verdict import MediaStatus

_CHUNK = 500


class ReviewMediaStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def prune_before(self, cutoff: datetime, include_pending: bool = False) -> list[str]:
        """Mark `pruned` the stored copies of items created before `cutoff` and decided (any item with
        `include_pending`), in one transaction; return their keys (repeats included)."""
        items = review_items_table
        conditions = [items.c.media_status == MediaStatus.STORED.value, items.c.created_at < cutoff]
        if not include_pending:
            conditions.append(items.c.status == "decided")
        with storage_errors("could not prune review media"), self._engine.begin() as conn:
            rows = conn.execute(select(items.c.id, items.c.media_key).where(*conditions)).all()
            for id_chunk in chunks([row.id for row in rows], _CHUNK):
                conn.execute(
                    update(items)
                    .where(items.c.id.in_(id_chunk), items.c.media_status == MediaStatus.STORED.value)
                    .values(media_status=MediaStatus.PRUNED.value)
                )
        return [row.media_key for row in rows if row.media_key is not None]

    def in_use(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` an item still holds as its stored copy (pending or decided)."""
        items = review_items_table
        found: set[str] = set()
        with storage_errors("could not read review media"), self._engine.connect() as conn:
            for key_chunk in chunks(list(dict.fromkeys(keys)), _CHUNK):
                query = select(items.c.media_key).where(
                    items.c.media_key.in_(key_chunk), items.c.media_status == MediaStatus.STORED.value
                )
                found.update(conn.execute(query).scalars())
        return found
