"""What the read API asks of the database: filtered pages of verdicts and decisions (keyset paging, newest
first), one content's whole history, and hourly counts.

Pages are keyset pages on the primary key (`before`: the last id the caller saw), so page 1,000 costs
what page 1 does and rows written meanwhile neither repeat nor vanish. A category filter means the
*flagged* category, as in the moderation_v1_* views: an allowed image's top category is not a finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, and_, case, func, literal_column, select, text

from moderation.review.values import ReviewDecision
from moderation.storage.errors import storage_errors
from moderation.storage.models import review_decisions_table, verdicts_table
from moderation.storage.store import verdict_from_row
from moderation.verdict import Verdict

MAX_PAGE = 500
MAX_COUNT_ROWS = 50_000


@dataclass(frozen=True)
class VerdictFilter:
    """The verdict list's filters; None means any."""

    content_id: str | None = None
    source: str | None = None
    category: str | None = None  # the flagged category
    action: str | None = None
    status: str | None = None  # ok | error
    flagged: bool | None = None
    uncertain: bool | None = None
    audited: bool | None = None
    policy_version: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before


@dataclass(frozen=True)
class CountRow:
    hour: datetime
    source: str
    status: str
    category: str | None
    action: str
    verdicts: int
    uncertain: int
    audited: int


@dataclass(frozen=True)
class DecisionFilter:
    reviewer: str | None = None
    kind: str | None = None
    outcome: str | None = None
    content_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _hour(engine: Engine) -> Any:
    """The hour bucket of a verdict, as moderation_v1_counts_hourly computes it (UTC)."""
    if engine.dialect.name == "postgresql":
        return literal_column("date_trunc('hour', verdicts.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
    return func.strftime("%Y-%m-%d %H:00:00", verdicts_table.c.created_at)


class ApiReads:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def verdicts(
        self, where: VerdictFilter, *, limit: int = 100, before: int | None = None
    ) -> list[tuple[int, Verdict]]:
        """(id, verdict) pairs, newest first, at most `limit` (capped at MAX_PAGE), ids below `before`."""
        v = verdicts_table
        conditions = [
            column == value
            for column, value in (
                (v.c.content_id, where.content_id), (v.c.source, where.source), (v.c.action, where.action),
                (v.c.status, where.status), (v.c.flagged, where.flagged), (v.c.uncertain, where.uncertain),
                (v.c.audited, where.audited), (v.c.policy_version, where.policy_version),
            )
            if value is not None
        ]
        if where.category is not None:
            conditions += [v.c.flagged.is_(True), v.c.top_category == where.category]
        if where.since is not None:
            conditions.append(v.c.created_at >= where.since)
        if where.until is not None:
            conditions.append(v.c.created_at < where.until)
        if before is not None:
            conditions.append(v.c.id < before)
        query = select(v).where(*conditions).order_by(v.c.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
        with storage_errors("could not read verdicts"), self._engine.connect() as conn:
            return [(int(row["id"]), verdict_from_row(row)) for row in conn.execute(query).mappings()]

    def verdict(self, event_id: str) -> tuple[int, Verdict] | None:
        v = verdicts_table
        with storage_errors("could not read verdicts"), self._engine.connect() as conn:
            row = conn.execute(select(v).where(v.c.event_id == event_id)).mappings().first()
        return None if row is None else (int(row["id"]), verdict_from_row(row))

    def counts(
        self, since: datetime, until: datetime, *, source: str | None = None, category: str | None = None,
        action: str | None = None,
    ) -> list[CountRow]:
        """Verdicts per hour, source, status, flagged category and action in [since, until), oldest first.

        The same numbers as moderation_v1_counts_hourly, computed here with the time range applied before
        grouping (so the created_at index bounds the work, whatever the table's size)."""
        v = verdicts_table
        hour = _hour(self._engine).label("hour")
        category_column = case((v.c.flagged.is_(True), v.c.top_category), else_=None).label("category")
        action_column = func.coalesce(v.c.action, "error").label("action")
        conditions = [v.c.created_at >= since, v.c.created_at < until]
        if source is not None:
            conditions.append(v.c.source == source)
        if category is not None:
            conditions += [v.c.flagged.is_(True), v.c.top_category == category]
        if action is not None:
            conditions.append(func.coalesce(v.c.action, "error") == action)
        query = (
            select(
                hour, v.c.source, v.c.status, category_column, action_column, func.count().label("verdicts"),
                func.sum(_as_int(v.c.uncertain)).label("uncertain"), func.sum(_as_int(v.c.audited)).label("audited"),
            )
            .where(and_(*conditions))
            .group_by(text("1, 2, 3, 4, 5"))
            .order_by(text("1, 2, 3, 4, 5"))
            .limit(MAX_COUNT_ROWS + 1)
        )
        with storage_errors("could not count verdicts"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            CountRow(_as_datetime(r.hour), r.source, r.status, r.category, r.action, int(r.verdicts),
                     int(r.uncertain or 0), int(r.audited or 0))
            for r in rows
        ]

    def decisions(
        self, where: DecisionFilter, *, limit: int = 100, before: int | None = None
    ) -> list[tuple[int, ReviewDecision]]:
        """(id, decision) pairs, newest first, ids below `before`."""
        d = review_decisions_table
        conditions = [
            column == value
            for column, value in (
                (d.c.reviewer, where.reviewer), (d.c.kind, where.kind), (d.c.outcome, where.outcome),
                (d.c.content_id, where.content_id),
            )
            if value is not None
        ]
        if where.since is not None:
            conditions.append(d.c.decided_at >= where.since)
        if where.until is not None:
            conditions.append(d.c.decided_at < where.until)
        if before is not None:
            conditions.append(d.c.id < before)
        query = select(d).where(*conditions).order_by(d.c.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
        with storage_errors("could not read decisions"), self._engine.connect() as conn:
            return [(int(row["id"]), ReviewDecision.from_row(row)) for row in conn.execute(query).mappings()]

    def decisions_of_content(self, content_id: str, limit: int = 200) -> list[ReviewDecision]:
        d = review_decisions_table
        query = select(d).where(d.c.content_id == content_id).order_by(d.c.id).limit(limit)
        with storage_errors("could not read decisions"), self._engine.connect() as conn:
            return [ReviewDecision.from_row(row) for row in conn.execute(query).mappings()]


def _as_int(column: Any) -> Any:
    return case((column.is_(True), 1), else_=0)


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value))  # SQLite's strftime text
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


