"""The audit log: one append-only row per decision, claim, media view, login and account change.

Writers add their row inside their own transaction (`record`), so an action and its audit row commit
together or not at all. Nothing here updates or deletes a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from moderation.storage.errors import storage_errors
from moderation.storage.models import review_audit_table

MAX_PAGE = 500


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    item_id: int | None
    event_id: str | None
    detail: dict[str, Any]


def record(
    conn: Connection,
    actor: str,
    action: str,
    *,
    item_id: int | None = None,
    event_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Append one audit row in `conn`'s transaction."""
    conn.execute(
        insert(review_audit_table).values(
            at=at or datetime.now(timezone.utc), actor=actor, action=action, item_id=item_id,
            event_id=event_id, detail=dict(detail or {}),
        )
    )


class AuditLog:
    """Reading the audit log, and writing a row that is an action on its own (a login, a media view)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, actor: str, action: str, **fields: Any) -> None:
        with storage_errors("could not write the audit log"), self._engine.begin() as conn:
            record(conn, actor, action, **fields)

    def entries(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        item_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first, `limit` at most (keyset paging: pass the last id seen as `before_id`)."""
        t = review_audit_table
        query = select(t).order_by(t.c.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
        if actor is not None:
            query = query.where(t.c.actor == actor)
        if action is not None:
            query = query.where(t.c.action == action)
        if item_id is not None:
            query = query.where(t.c.item_id == item_id)
        if before_id is not None:
            query = query.where(t.c.id < before_id)
        with storage_errors("could not read the audit log"), self._engine.connect() as conn:
            return [
                AuditEntry(r.id, r.at, r.actor, r.action, r.item_id, r.event_id, dict(r.detail or {}))
                for r in conn.execute(query)
            ]
