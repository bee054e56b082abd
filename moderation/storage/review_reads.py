"""What the review console reads besides the queue: an item's whole history and the stats page's numbers.

The stats are computed from the review tables (one row per item sent to review, one per decision), not
from the verdicts table, so their cost grows with what people review, not with everything uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Date, Engine, and_, case, cast, func, literal_column, select

from moderation.storage.errors import storage_errors
from moderation.storage.models import (
    review_decisions_table,
    review_items_table,
    shadow_verdicts_table,
    verdicts_table,
)
from moderation.storage.review_queue import pending_by_queue
from moderation.storage.store import verdict_from_row
from moderation.verdict import ShadowVerdict, Verdict

MAX_HISTORY = 200


@dataclass(frozen=True)
class CategoryPrecision:
    category: str
    decided: int
    violating: int

    @property
    def precision(self) -> float | None:
        return self.violating / self.decided if self.decided else None


@dataclass(frozen=True)
class Stats:
    pending: dict[str, tuple[int, datetime | None]]  # queue -> (items waiting, oldest entered)
    decisions_per_day: dict[str, dict[date, int]]  # reviewer -> day -> decisions
    flagged_per_day: dict[str, dict[date, int]]  # category -> day -> items sent to review (audits apart)
    precision: list[CategoryPrecision]  # flagged items' latest decisions, per category
    audit: CategoryPrecision  # the audit sample: decided, and how many were violating (what the policy missed)
    since: datetime


class ReviewReads:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def verdicts_of(self, content_id: str) -> list[Verdict]:
        """Every verdict of one content id, newest first (uploads of the same content, policy changes)."""
        v = verdicts_table
        query = select(v).where(v.c.content_id == content_id).order_by(v.c.id.desc()).limit(MAX_HISTORY)
        with storage_errors("could not read verdicts"), self._engine.connect() as conn:
            return [verdict_from_row(row) for row in conn.execute(query).mappings()]

    def shadows_of(self, event_id: str) -> list[ShadowVerdict]:
        s = shadow_verdicts_table
        query = select(s).where(s.c.event_id == event_id).order_by(s.c.id).limit(MAX_HISTORY)
        with storage_errors("could not read shadow verdicts"), self._engine.connect() as conn:
            return [
                ShadowVerdict(
                    event_id=r["event_id"], policy_version=r["policy_version"], policy_hash=r["policy_hash"],
                    flagged=bool(r["flagged"]), top_category=r["top_category"], action=r["action"],
                    uncertain=bool(r["uncertain"]), scores=dict(r["scores"]), created_at=r["created_at"],
                )
                for r in conn.execute(query).mappings()
            ]

    def stats(self, days: int = 30, now: datetime | None = None) -> Stats:
        now = now or datetime.now(timezone.utc)
        since = now - timedelta(days=days)
        i, d = review_items_table, review_decisions_table
        day_of = _day(self._engine)
        with storage_errors("could not compute the review stats"), self._engine.connect() as conn:
            pending = pending_by_queue(conn)
            per_reviewer: dict[str, dict[date, int]] = {}
            for reviewer, day, n in conn.execute(
                select(d.c.reviewer, day_of(d.c.decided_at), func.count())
                .where(d.c.decided_at >= since, d.c.kind != "escalate")
                .group_by(d.c.reviewer, day_of(d.c.decided_at))
            ):
                per_reviewer.setdefault(str(reviewer), {})[_as_date(day)] = int(n)
            flagged: dict[str, dict[date, int]] = {}
            for category, day, n in conn.execute(
                select(i.c.category, day_of(i.c.created_at), func.count())
                .where(i.c.created_at >= since, i.c.reason != "audit")
                .group_by(i.c.category, day_of(i.c.created_at))
            ):
                flagged.setdefault(str(category), {})[_as_date(day)] = int(n)
            violating = case((d.c.outcome == "violating", 1), else_=0)
            latest = (
                select(i.c.category, i.c.reason, func.count(), func.sum(violating))
                .select_from(i.join(d, and_(d.c.decision_id == i.c.latest_decision_id)))
                .where(i.c.status == "decided", i.c.decided_at >= since)
                .group_by(i.c.category, i.c.reason)
            )
            by_category: dict[str, list[int]] = {}
            audit = [0, 0]
            for category, reason, n, bad in conn.execute(latest):
                if reason == "audit":
                    audit[0] += int(n)
                    audit[1] += int(bad or 0)
                    continue
                counts = by_category.setdefault(str(category), [0, 0])
                counts[0] += int(n)
                counts[1] += int(bad or 0)
        return Stats(
            pending=pending,
            decisions_per_day=per_reviewer,
            flagged_per_day=flagged,
            precision=[CategoryPrecision(c, n, bad) for c, (n, bad) in sorted(by_category.items())],
            audit=CategoryPrecision("audit", audit[0], audit[1]),
            since=since,
        )


def _day(engine: Engine) -> Any:
    """The calendar day (UTC) of a timestamp column, in the dialect's words."""
    if engine.dialect.name == "postgresql":
        # A literal, not a bound parameter: GROUP BY must repeat the SELECT's expression exactly.
        return lambda column: cast(func.timezone(literal_column("'UTC'"), column), Date)
    return lambda column: func.date(column)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
