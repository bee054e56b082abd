"""Reviewer decisions against verdicts: storing them, a per-category precision report, labelled embeddings.

Outcomes arrive at least once and not necessarily in order (a reviewer can change their mind, and the
review tool may resend), so `OutcomeStore.save_many` keeps, per event, the decision with the latest
`decided_at`, whatever order the messages come in. An outcome may arrive before its verdict is written
(or for an event this database never saw): it is stored anyway, and the reports simply do not see it
until a verdict with that `event_id` exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, case, func, select

from moderation.review_outcome import CONFIRMED, OVERTURNED, SCHEMA_VERSION, ReviewOutcome
from moderation.storage.embeddings import same_image
from moderation.storage.errors import StorageError, storage_errors
from moderation.storage.models import (
    embeddings_table,
    review_decisions_table,
    review_items_table,
    review_outcomes_table,
    verdicts_table,
)
from moderation.storage.statements import chunks, dialect_insert
from moderation.verdict import EMBEDDING_DTYPE


@dataclass(frozen=True)
class ReviewCounts:
    """How many flagged verdicts there were, how many a reviewer decided, and how."""

    flagged: int = 0
    reviewed: int = 0
    confirmed: int = 0
    overturned: int = 0

    @property
    def precision(self) -> float | None:
        """Confirmed over reviewed: the share of reviewed flags that were right; None before any review."""
        return self.confirmed / self.reviewed if self.reviewed else None

    def __add__(self, other: ReviewCounts) -> ReviewCounts:
        return ReviewCounts(
            self.flagged + other.flagged, self.reviewed + other.reviewed,
            self.confirmed + other.confirmed, self.overturned + other.overturned,
        )


@dataclass(frozen=True)
class CategoryPrecision:
    """One row of the precision report: the flagged verdicts whose top category is `category`.

    `total` counts all of them, `uncertain` the ones sent to review because a score fell in the policy's
    uncertain band (so editors can see whether the band catches real problems). A confirmation counts as
    correct even when the reviewer named another category; `recategorised` says how many did.
    """

    category: str
    total: ReviewCounts
    uncertain: ReviewCounts
    recategorised: int = 0

    @property
    def precision(self) -> float | None:
        return self.total.precision

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON output, precisions included."""
        return {
            "category": self.category,
            **asdict(self.total),
            "precision": self.total.precision,
            "recategorised": self.recategorised,
            "uncertain": {**asdict(self.uncertain), "precision": self.uncertain.precision},
        }


def upsert_latest(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Write outcome rows (one per event_id) in `conn`'s transaction, each replacing a stored one only if
    strictly later; returns how many were inserted or replaced. The review console calls it with its
    decisions, in the decision's own transaction."""
    if not rows:
        return 0
    insert_for, max_parameters = dialect_insert(conn.engine)
    table = review_outcomes_table
    written = 0
    for chunk in chunks(rows, max(1, max_parameters // len(rows[0]))):
        insert = insert_for(table).values(list(chunk))
        upsert = insert.on_conflict_do_update(
            index_elements=[table.c.event_id],
            set_={
                "outcome": insert.excluded.outcome,
                "category": insert.excluded.category,
                "reviewer": insert.excluded.reviewer,
                "decided_at": insert.excluded.decided_at,
                "received_at": func.now(),
            },
            where=table.c.decided_at < insert.excluded.decided_at,
        )
        # RETURNING lists exactly the rows inserted or updated (not those the WHERE skipped).
        written += len(conn.execute(upsert.returning(table.c.event_id)).all())
    return written


def _stored_outcome(row: Any) -> ReviewOutcome:
    return ReviewOutcome(
        schema_version=SCHEMA_VERSION, event_id=row.event_id, outcome=row.outcome,
        category=row.category, reviewer=row.reviewer, decided_at=row.decided_at.isoformat(),
    )


class OutcomeStore:
    """The review_outcomes table over one Engine (SQLite or PostgreSQL); tables come from migrations."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._insert, self._max_parameters = dialect_insert(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    def save_many(self, outcomes: Sequence[ReviewOutcome]) -> int:
        """Record `outcomes` in one transaction; return how many rows were inserted or replaced.

        Per event_id the decision with the latest `decided_at` wins: a stored one is replaced only by a
        strictly later one, so redelivery, and an older decision arriving late, change nothing.
        """
        latest: dict[str, ReviewOutcome] = {}
        for outcome in outcomes:
            # Within the batch too (one statement cannot update a row twice); on a tie the first stays.
            kept = latest.get(outcome.event_id)
            if kept is None or outcome.decided_at > kept.decided_at:
                latest[outcome.event_id] = outcome
        if not latest:
            return 0
        rows = [
            {
                "event_id": o.event_id, "outcome": o.outcome, "category": o.category,
                "reviewer": o.reviewer, "decided_at": o.decided_at,
            }
            for o in latest.values()
        ]
        with storage_errors(f"could not save {len(rows)} review outcomes"), self._engine.begin() as conn:
            return upsert_latest(conn, rows)

    def get(self, event_id: str) -> ReviewOutcome | None:
        """The decision stored for `event_id`, or None."""
        table = review_outcomes_table
        with storage_errors("could not read review outcomes"), self._engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.event_id == event_id)).first()
        return None if row is None else _stored_outcome(row)

    def precision_report(
        self, since: datetime | None = None, policy_version: str | None = None
    ) -> list[CategoryPrecision]:
        """Per top category of flagged verdicts (created at or after `since`, made under `policy_version`
        when given): flagged, reviewed, confirmed and overturned counts, in category order."""
        v, o = verdicts_table, review_outcomes_table
        conditions = [v.c.flagged, v.c.status == "ok"]
        if since is not None:
            conditions.append(v.c.created_at >= since)
        if policy_version is not None:
            conditions.append(v.c.policy_version == policy_version)

        def count_where(condition: Any) -> Any:
            return func.sum(case((condition, 1), else_=0))

        query = (
            select(
                v.c.top_category,
                v.c.uncertain,
                func.count(),
                func.count(o.c.event_id),
                count_where(o.c.outcome == CONFIRMED),
                count_where(o.c.outcome == OVERTURNED),
                count_where(
                    and_(o.c.outcome == CONFIRMED, o.c.category.is_not(None), o.c.category != v.c.top_category)
                ),
            )
            .select_from(v.outerjoin(o, o.c.event_id == v.c.event_id))
            .where(*conditions)
            .group_by(v.c.top_category, v.c.uncertain)
        )
        with storage_errors("could not build the precision report"), self._engine.connect() as conn:
            groups = conn.execute(query).all()
        totals: dict[str, ReviewCounts] = {}
        uncertain: dict[str, ReviewCounts] = {}
        recategorised: dict[str, int] = {}
        for category, is_uncertain, flagged, reviewed, confirmed, overturned, other in groups:
            name = str(category)
            counts = ReviewCounts(int(flagged), int(reviewed), int(confirmed or 0), int(overturned or 0))
            totals[name] = totals.get(name, ReviewCounts()) + counts
            if is_uncertain:
                uncertain[name] = uncertain.get(name, ReviewCounts()) + counts
            recategorised[name] = recategorised.get(name, 0) + int(other or 0)
        return [
            CategoryPrecision(name, totals[name], uncertain.get(name, ReviewCounts()), recategorised[name])
            for name in sorted(totals)
        ]

    def labelled_embeddings(
        self, model_id: str, since: datetime | None = None, *, skip_console_decided: bool = False
    ) -> tuple[np.ndarray, list[frozenset[str]], list[str]]:
        """Reviewed, flagged verdicts of `model_id` with a stored embedding, as labelled examples.

        Returns float16 embeddings [N, dim] ([0, 0] when there are none), per item the set of unsafe
        categories that truly apply, and its content id, in the order the verdicts were written. A
        confirmation labels the reviewer's category, or the flagged one; an overturn labels the reviewer's
        category if one was given, else nothing (a clean image). `since` filters on the verdict's creation.
        `skip_console_decided`: leave out events the console decided (`console_labelled_embeddings` has
        them with a label per category).
        """
        v, o, e = verdicts_table, review_outcomes_table, embeddings_table
        conditions = [v.c.model_id == model_id, v.c.flagged, v.c.status == "ok"]
        if since is not None:
            conditions.append(v.c.created_at >= since)
        if skip_console_decided:
            t = review_items_table
            conditions.append(~select(t.c.id).where(t.c.event_id == v.c.event_id, t.c.status == "decided").exists())
        query = (
            select(v.c.content_id, v.c.top_category, o.c.outcome, o.c.category, e.c.vector)
            .select_from(
                v.join(o, o.c.event_id == v.c.event_id).join(e, same_image(v, e))
            )
            .where(*conditions)
            .order_by(v.c.id)
        )
        with storage_errors("could not read labelled embeddings"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return np.empty((0, 0), dtype=EMBEDDING_DTYPE), [], []
        labels: list[frozenset[str]] = []
        for _, top_category, outcome, category in (row[:4] for row in rows):
            if outcome == CONFIRMED:
                labels.append(frozenset({category or top_category}))
            else:
                labels.append(frozenset({category}) if category else frozenset())
        vectors = [bytes(row.vector) for row in rows]
        return _stacked(vectors, model_id), labels, [row.content_id for row in rows]

    def console_labelled_embeddings(
        self, model_id: str, since: datetime | None = None
    ) -> tuple[np.ndarray, list[frozenset[str]], list[str]]:
        """The console's decided items of `model_id` with a stored embedding, as labelled examples: flagged,
        uncertain and audited ones alike (the audit sample is what teaches recall), each labelled with the
        categories its latest decision marked violating (the others it names, or all of them for a "not
        violating", are negatives). Escalations label nothing until decided. Same shapes as
        `labelled_embeddings`; `since` filters on the verdict's creation."""
        t, d, v, e = review_items_table, review_decisions_table, verdicts_table, embeddings_table
        conditions = [t.c.status == "decided", v.c.model_id == model_id, v.c.status == "ok",
                      d.c.outcome.in_(["violating", "not_violating"])]
        if since is not None:
            conditions.append(v.c.created_at >= since)
        query = (
            select(v.c.content_id, d.c.categories, e.c.vector)
            .select_from(
                t.join(d, d.c.decision_id == t.c.latest_decision_id)
                .join(v, v.c.event_id == t.c.event_id)
                .join(e, same_image(v, e))
            )
            .where(*conditions)
            .order_by(v.c.id)
        )
        with storage_errors("could not read labelled embeddings"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return np.empty((0, 0), dtype=EMBEDDING_DTYPE), [], []
        labels = [frozenset(str(name) for name, violating in (row.categories or {}).items() if violating)
                  for row in rows]
        return _stacked([bytes(row.vector) for row in rows], model_id), labels, [row.content_id for row in rows]


def _stacked(vectors: list[bytes], model_id: str) -> np.ndarray:
    dims = {len(vector) for vector in vectors}
    if len(dims) != 1:  # a model id names one architecture; mixed widths mean corrupt rows
        raise StorageError(f"embeddings of {model_id!r} have different sizes: {sorted(dims)} bytes")
    return np.frombuffer(b"".join(vectors), dtype=EMBEDDING_DTYPE).reshape(len(vectors), -1)
