"""The review queue: claims with a lease, decisions, escalations, overrides and appeals, in SQL.

Every change is a compare-and-set UPDATE whose WHERE restates what the caller saw (pending, unclaimed or
claimed by this reviewer, the latest decision it replaces), checked by its row count. That is what keeps
two reviewers off one item on both databases: PostgreSQL re-checks the WHERE of a concurrent UPDATE once
the first commits, SQLite runs writers one at a time. The decision row, the item's new state, the audit
row and the reviewer-outcome row (what precision, tuning and backtests read) commit in one transaction.

A claim is a lease: `claimed_by` holds the item until `claim_expires_at`; after that the item is anyone's
again, so a reviewer who closes the tab does not take work with them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, true, update

from moderation.review.routing import APPEALS_QUEUE, ESCALATED_QUEUE, PRIORITY, ReviewReason
from moderation.review.values import (
    Actor,
    BulkResult,
    DecisionKind,
    Outcome,
    ReviewDecision,
    ReviewError,
    ReviewItem,
)
from moderation.review_outcome import CONFIRMED, OVERTURNED
from moderation.storage.audit_log import record
from moderation.storage.errors import storage_errors
from moderation.storage.models import review_decisions_table, review_items_table, verdicts_table
from moderation.storage.review_decisions import upsert_latest

DEFAULT_LEASE = timedelta(minutes=10)
MAX_REASON = 2000
MAX_BULK = 500
_CANDIDATES = 8  # items tried per round: enough to get past the few other reviewers take at the same moment
_ROUNDS = 5

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ItemFilter:
    """The list page's filters; None means any."""

    category: str | None = None
    reason: str | None = None  # escalate | block | review | uncertain | audit
    queue: str | None = None
    status: str | None = None  # pending | decided
    source: str | None = None
    since: datetime | None = None  # first queued at or after
    until: datetime | None = None  # first queued before


class ReviewQueue:
    """The review tables over one Engine; `clock` is injectable so tests can let leases run out."""

    def __init__(
        self, engine: Engine, *, lease: timedelta = DEFAULT_LEASE, clock: Clock = _utcnow,
        label_first: Sequence[str] = (),
    ) -> None:
        self._engine = engine
        self.lease = lease
        self._clock = clock
        # Categories a head is being trained for: their uncertain items are served before anything else,
        # where a reviewer's label teaches the head most (scores the policy could not call).
        self.label_first = tuple(dict.fromkeys(label_first))

    # -- reading ---------------------------------------------------------------------------------------

    def item(self, item_id: int) -> ReviewItem | None:
        with storage_errors("could not read the review queue"), self._engine.connect() as conn:
            row = conn.execute(select(review_items_table).where(review_items_table.c.id == item_id)).mappings().first()
        return None if row is None else ReviewItem.from_row(row)

    def item_for_event(self, event_id: str) -> ReviewItem | None:
        t = review_items_table
        with storage_errors("could not read the review queue"), self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.event_id == event_id)).mappings().first()
        return None if row is None else ReviewItem.from_row(row)

    def items(
        self, where: ItemFilter | None = None, *, limit: int = 50, before: int | None = None
    ) -> list[ReviewItem]:
        """Newest first, `limit` at most; keyset paging on the id (`before`: the last id seen)."""
        t = review_items_table
        where = where or ItemFilter()
        query = select(t).order_by(t.c.id.desc()).limit(max(1, min(limit, MAX_BULK)))
        conditions = [
            column == value
            for column, value in (
                (t.c.category, where.category), (t.c.reason, where.reason), (t.c.queue, where.queue),
                (t.c.status, where.status), (t.c.source, where.source),
            )
            if value is not None
        ]
        if where.since is not None:
            conditions.append(t.c.created_at >= where.since)
        if where.until is not None:
            conditions.append(t.c.created_at < where.until)
        if before is not None:
            conditions.append(t.c.id < before)
        with storage_errors("could not read the review queue"), self._engine.connect() as conn:
            return [ReviewItem.from_row(r) for r in conn.execute(query.where(*conditions)).mappings()]

    def item_ids_for_events(self, event_ids: Sequence[str]) -> dict[str, int]:
        """event id -> review item id, for those of `event_ids` that went to review."""
        t = review_items_table
        if not event_ids:
            return {}
        with storage_errors("could not read the review queue"), self._engine.connect() as conn:
            rows = conn.execute(select(t.c.event_id, t.c.id).where(t.c.event_id.in_(list(event_ids)[:1000])))
            return {str(event_id): int(item_id) for event_id, item_id in rows}

    def history(self, item_id: int) -> list[ReviewDecision]:
        """Every decision on the item, oldest first."""
        t = review_decisions_table
        with storage_errors("could not read review decisions"), self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.item_id == item_id).order_by(t.c.id)).mappings()
            return [ReviewDecision.from_row(r) for r in rows]

    def decision(self, decision_id: str) -> ReviewDecision | None:
        t = review_decisions_table
        with storage_errors("could not read review decisions"), self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.decision_id == decision_id)).mappings().first()
        return None if row is None else ReviewDecision.from_row(row)

    # -- claims ----------------------------------------------------------------------------------------

    def next_item(
        self, actor: Actor, *, queues: Sequence[str] | None = None, skip: Iterable[int] = ()
    ) -> ReviewItem | None:
        """The actor's claimed item if they hold one (one job per reviewer), else the first pending item in
        queue order they may take, claimed for them now. None when there is nothing for them."""
        now = self._clock()
        t = review_items_table
        passed = list(dict.fromkeys(skip))[:200]  # skipped in this sitting, then lost to faster reviewers
        with storage_errors("could not claim a review item"), self._engine.connect() as conn:
            held = conn.execute(
                select(t).where(t.c.status == "pending", t.c.claimed_by == actor.username, t.c.claim_expires_at > now)
                .where(t.c.id.not_in(passed) if passed else true())
                .order_by(t.c.priority, t.c.entered_at, t.c.id).limit(1)
            ).mappings().first()
        if held is not None:
            return ReviewItem.from_row(held)
        for _ in range(_ROUNDS):
            conditions = [t.c.status == "pending", _free(now), _allowed(actor)]
            if queues:
                conditions.append(t.c.queue.in_(list(queues)))
            if passed:
                conditions.append(t.c.id.not_in(passed))
            candidates = self._label_first_candidates(conditions) if self.label_first else []
            if not candidates:
                with storage_errors("could not claim a review item"), self._engine.connect() as conn:
                    candidates = conn.execute(
                        select(t.c.id).where(*conditions).order_by(t.c.priority, t.c.entered_at, t.c.id)
                        .limit(_CANDIDATES)
                    ).scalars().all()
            if not candidates:
                return None
            for item_id in candidates:
                claimed = self._try_claim(item_id, actor, now)
                if claimed is not None:
                    return claimed
            passed.extend(candidates)
        return None

    def _label_first_candidates(self, conditions: list[Any]) -> list[int]:
        """Pending uncertain items of the label-first categories, oldest first (the queue index's
        (status, priority, entered_at) prefix serves it: uncertain is one priority)."""
        t = review_items_table
        uncertain = PRIORITY[ReviewReason.UNCERTAIN]
        query = (
            select(t.c.id)
            .where(*conditions, t.c.priority == uncertain, t.c.category.in_(list(self.label_first)))
            .order_by(t.c.entered_at, t.c.id).limit(_CANDIDATES)
        )
        with storage_errors("could not claim a review item"), self._engine.connect() as conn:
            return list(conn.execute(query).scalars().all())

    def claim(self, item_id: int, actor: Actor) -> ReviewItem:
        """Claim one item (from the list page); ReviewError if someone else holds it or it is decided."""
        now = self._clock()
        claimed = self._try_claim(item_id, actor, now)
        if claimed is not None:
            return claimed
        item = self.item(item_id)
        if item is None:
            raise ReviewError(ReviewError.NOT_FOUND, f"no review item {item_id}")
        if item.status != "pending":
            raise ReviewError(ReviewError.CONFLICT, f"item {item_id} is decided already")
        if item.escalated and not actor.role.is_lead:
            raise ReviewError(ReviewError.FORBIDDEN, "escalated items are for leads")
        if item.excluded_reviewer == actor.username:
            raise ReviewError(ReviewError.FORBIDDEN, "an appeal goes to a reviewer other than the one who decided")
        raise ReviewError(ReviewError.CONFLICT, f"item {item_id} is claimed by {item.claimed_by}")

    def release(self, item_id: int, actor: Actor, *, why: str = "skip") -> bool:
        """Give a claimed item back to the queue (skip); False if the actor did not hold it."""
        t = review_items_table
        with storage_errors("could not release a review item"), self._engine.begin() as conn:
            released = conn.execute(
                update(t).where(t.c.id == item_id, t.c.claimed_by == actor.username, t.c.status == "pending")
                .values(claimed_by=None, claim_expires_at=None)
            ).rowcount == 1
            if released:
                record(conn, actor.username, why, item_id=item_id, at=self._clock())
        return released

    def _try_claim(self, item_id: int, actor: Actor, now: datetime) -> ReviewItem | None:
        t = review_items_table
        with storage_errors("could not claim a review item"), self._engine.begin() as conn:
            won = conn.execute(
                update(t)
                .where(t.c.id == item_id, t.c.status == "pending", or_(_free(now), t.c.claimed_by == actor.username))
                .where(_allowed(actor))
                .values(claimed_by=actor.username, claim_expires_at=now + self.lease)
            ).rowcount == 1
            if not won:
                return None
            row = conn.execute(select(t).where(t.c.id == item_id)).mappings().one()
            record(conn, actor.username, "claim", item_id=item_id, event_id=row["event_id"], at=now,
                   detail={"until": (now + self.lease).isoformat()})
        return ReviewItem.from_row(row)

    # -- decisions -------------------------------------------------------------------------------------

    def decide(
        self, item_id: int, actor: Actor, categories: Mapping[str, bool], reason: str
    ) -> ReviewDecision:
        """Decide a pending item the actor holds: per category violating or not, with a reason."""
        return self._decide(item_id, actor, categories, reason, DecisionKind.DECIDE, bulk_id=None)

    def escalate(self, item_id: int, actor: Actor, reason: str) -> ReviewDecision:
        """Hand a held item to the leads: it leaves this reviewer and waits, first, in the escalated queue."""
        return self._decide(item_id, actor, {}, reason, DecisionKind.ESCALATE, bulk_id=None)

    def override(self, item_id: int, actor: Actor, categories: Mapping[str, bool], reason: str) -> ReviewDecision:
        """A lead replaces the latest decision of a decided item."""
        if not actor.role.is_lead:
            raise ReviewError(ReviewError.FORBIDDEN, "only leads override decisions")
        return self._decide(item_id, actor, categories, reason, DecisionKind.OVERRIDE, bulk_id=None)

    def decide_many(
        self, item_ids: Sequence[int], actor: Actor, categories: Mapping[str, bool], reason: str
    ) -> BulkResult:
        """One decision for a selection of pending items nobody else holds, each its own decision row,
        the whole recorded as one audit row with the per-item results."""
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            raise ReviewError(ReviewError.INVALID, "select at least one item")
        if len(ids) > MAX_BULK:
            raise ReviewError(ReviewError.INVALID, f"at most {MAX_BULK} items at once, got {len(ids)}")
        reason = _checked_reason(reason)
        result = BulkResult(bulk_id=str(uuid.uuid4()))
        for item_id in ids:
            try:
                decision = self._decide(
                    item_id, actor, categories, reason, DecisionKind.DECIDE, bulk_id=result.bulk_id, audit=False
                )
            except ReviewError as exc:
                result.refused[item_id] = str(exc)
            else:
                result.decided[item_id] = decision.decision_id
        with storage_errors("could not write the audit log"), self._engine.begin() as conn:
            record(conn, actor.username, "bulk_decide", at=self._clock(), detail={
                "bulk_id": result.bulk_id, "reason": reason, "categories": dict(categories),
                "decided": {str(k): v for k, v in result.decided.items()},
                "refused": {str(k): v for k, v in result.refused.items()},
            })
        return result

    def appeal(self, item_id: int, actor: Actor, reason: str) -> ReviewItem:
        """Send a decided item back to review, to the appeals queue, for a reviewer other than the one who
        made its latest decision."""
        reason = _checked_reason(reason)
        now = self._clock()
        t = review_items_table
        with storage_errors("could not record the appeal"), self._engine.begin() as conn:
            item = conn.execute(select(t).where(t.c.id == item_id)).mappings().first()
            if item is None:
                raise ReviewError(ReviewError.NOT_FOUND, f"no review item {item_id}")
            if item["status"] != "decided":
                raise ReviewError(ReviewError.CONFLICT, f"item {item_id} is not decided: nothing to appeal")
            decided_by = conn.execute(
                select(review_decisions_table.c.reviewer)
                .where(review_decisions_table.c.decision_id == item["latest_decision_id"])
            ).scalar_one_or_none()
            changed = conn.execute(
                update(t).where(t.c.id == item_id, t.c.status == "decided",
                                t.c.latest_decision_id == item["latest_decision_id"])
                .values(status="pending", queue=APPEALS_QUEUE, excluded_reviewer=decided_by, entered_at=now,
                        claimed_by=None, claim_expires_at=None)
            ).rowcount == 1
            if not changed:
                raise ReviewError(ReviewError.CONFLICT, f"item {item_id} changed meanwhile; try again")
            record(conn, actor.username, "appeal", item_id=item_id, event_id=item["event_id"], at=now,
                   detail={"reason": reason, "decided_by": decided_by, "decision_id": item["latest_decision_id"]})
            row = conn.execute(select(t).where(t.c.id == item_id)).mappings().one()
        return ReviewItem.from_row(row)

    def _decide(
        self,
        item_id: int,
        actor: Actor,
        categories: Mapping[str, bool],
        reason: str,
        kind: DecisionKind,
        *,
        bulk_id: str | None,
        audit: bool = True,
    ) -> ReviewDecision:
        reason = _checked_reason(reason)
        now = self._clock()
        t, v = review_items_table, verdicts_table
        with storage_errors("could not record the decision"), self._engine.begin() as conn:
            found = conn.execute(
                select(t, v.c.scores, v.c.flagged, v.c.top_category.label("verdict_category"))
                .select_from(t.outerjoin(v, v.c.event_id == t.c.event_id)).where(t.c.id == item_id)
            ).mappings().first()
            if found is None:
                raise ReviewError(ReviewError.NOT_FOUND, f"no review item {item_id}")
            item = ReviewItem.from_row(found)
            chosen = _checked_categories(categories, found["scores"] or {}, kind)
            guard = self._guard(item, actor, kind, now, bulk=bulk_id is not None)
            decision_id = str(uuid.uuid4())
            outcome = _outcome(kind, chosen)
            if kind is DecisionKind.ESCALATE:
                values: dict[str, Any] = {"queue": ESCALATED_QUEUE, "priority": PRIORITY[ReviewReason.ESCALATE],
                                          "claimed_by": None, "claim_expires_at": None}
            else:
                values = {"status": "decided", "decided_at": now, "latest_decision_id": decision_id,
                          "claimed_by": None, "claim_expires_at": None, "excluded_reviewer": None}
            if conn.execute(update(t).where(t.c.id == item_id, guard).values(**values)).rowcount != 1:
                raise ReviewError(ReviewError.CONFLICT, f"item {item_id} changed meanwhile (claimed or decided)")
            row = {
                "decision_id": decision_id, "item_id": item_id, "event_id": item.event_id,
                "content_id": item.content_id, "reviewer": actor.username, "kind": kind.value,
                "outcome": outcome.value, "categories": chosen, "reason": reason,
                "previous_decision_id": item.latest_decision_id, "bulk_id": bulk_id, "decided_at": now,
                "published_at": None,
            }
            conn.execute(insert(review_decisions_table).values(**row))
            if audit:
                record(conn, actor.username, kind.value, item_id=item_id, event_id=item.event_id, at=now,
                       detail={"decision_id": decision_id, "outcome": outcome.value, "categories": chosen,
                               "reason": reason, "previous_decision_id": item.latest_decision_id})
            if kind is not DecisionKind.ESCALATE and found["flagged"]:
                upsert_latest(conn, [_reviewer_outcome(item, found["verdict_category"], chosen, actor, now)])
        return ReviewDecision.from_row(row)

    def _guard(self, item: ReviewItem, actor: Actor, kind: DecisionKind, now: datetime, *, bulk: bool) -> Any:
        """The WHERE that makes the decision's UPDATE a compare-and-set; ReviewError when it cannot hold."""
        t = review_items_table
        if kind is DecisionKind.OVERRIDE:
            if item.status != "decided":
                raise ReviewError(ReviewError.CONFLICT, f"item {item.id} is not decided: decide it, not override")
            return and_(t.c.status == "decided", t.c.latest_decision_id == item.latest_decision_id)
        if item.status != "pending":
            raise ReviewError(ReviewError.CONFLICT, f"item {item.id} is decided already")
        if item.escalated and not actor.role.is_lead:
            raise ReviewError(ReviewError.FORBIDDEN, "escalated items are for leads")
        if item.excluded_reviewer == actor.username:
            raise ReviewError(ReviewError.FORBIDDEN, "an appeal goes to a reviewer other than the one who decided")
        held = item.claimed_by == actor.username and item.claim_expires_at is not None and item.claim_expires_at > now
        if held:
            return and_(t.c.status == "pending", t.c.claimed_by == actor.username, t.c.claim_expires_at > now)
        free = item.claimed_by is None or item.claim_expires_at is None or item.claim_expires_at <= now
        if bulk and free:  # a bulk decision takes items nobody holds
            return and_(t.c.status == "pending", _free(now))
        if free:
            raise ReviewError(ReviewError.CONFLICT, f"claim item {item.id} first (or your claim ran out)")
        raise ReviewError(ReviewError.CONFLICT, f"item {item.id} is claimed by {item.claimed_by}")

    # -- the decisions topic's outbox ------------------------------------------------------------------

    def unpublished(self, limit: int = 100) -> list[tuple[ReviewDecision, str, str | None]]:
        """Decisions (not escalations) whose message the brokers have not acknowledged yet, oldest first,
        each with its item's source and the policy version of its verdict (for the message)."""
        d, i, v = review_decisions_table, review_items_table, verdicts_table
        query = (
            select(d, i.c.source, v.c.policy_version)
            .select_from(d.join(i, i.c.id == d.c.item_id).outerjoin(v, v.c.event_id == d.c.event_id))
            .where(d.c.published_at.is_(None), d.c.kind != DecisionKind.ESCALATE.value)
            .order_by(d.c.id).limit(limit)
        )
        with storage_errors("could not read review decisions"), self._engine.connect() as conn:
            return [
                (ReviewDecision.from_row(r), r["source"], r["policy_version"]) for r in conn.execute(query).mappings()
            ]

    def mark_published(self, decision_ids: Sequence[str]) -> None:
        t = review_decisions_table
        with storage_errors("could not record published decisions"), self._engine.begin() as conn:
            conn.execute(
                update(t).where(t.c.decision_id.in_(list(decision_ids)), t.c.published_at.is_(None))
                .values(published_at=self._clock())
            )

    def pending_counts(self) -> dict[str, tuple[int, datetime | None]]:
        """Per queue: how many items wait, and when the oldest of them entered."""
        with storage_errors("could not read the review queue"), self._engine.connect() as conn:
            return pending_by_queue(conn)


def pending_by_queue(conn: Connection) -> dict[str, tuple[int, datetime | None]]:
    """Per queue: how many items wait, and when the oldest of them entered."""
    t = review_items_table
    query = (
        select(t.c.queue, func.count(), func.min(t.c.entered_at))
        .where(t.c.status == "pending").group_by(t.c.queue)
    )
    return {str(queue): (int(n), aware(oldest)) for queue, n, oldest in conn.execute(query)}


def aware(value: Any) -> datetime | None:
    """A timestamp from an aggregate, which bypasses the column type (SQLite hands back naive text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _free(now: datetime) -> Any:
    t = review_items_table
    return or_(t.c.claimed_by.is_(None), t.c.claim_expires_at <= now)


def _allowed(actor: Actor) -> Any:
    """What the actor may take: not the escalated queue unless a lead, never an appeal of their own decision."""
    t = review_items_table
    conditions = [or_(t.c.excluded_reviewer.is_(None), t.c.excluded_reviewer != actor.username)]
    if not actor.role.is_lead:
        conditions.append(t.c.queue != ESCALATED_QUEUE)
    return and_(*conditions)


def _checked_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ReviewError(ReviewError.INVALID, "a reason is required")
    if len(reason) > MAX_REASON:
        raise ReviewError(ReviewError.INVALID, f"the reason is longer than {MAX_REASON} characters")
    return reason.replace("\x00", "")


def _checked_categories(
    categories: Mapping[str, bool], scores: Mapping[str, Any], kind: DecisionKind
) -> dict[str, bool]:
    if kind is DecisionKind.ESCALATE:
        return {}
    if not categories:
        raise ReviewError(ReviewError.INVALID, "decide at least one category (violating or not)")
    known = set(scores)
    unknown = sorted(set(categories) - known) if known else []
    if unknown:
        raise ReviewError(ReviewError.INVALID, f"unknown categories {unknown}: the policy had {sorted(known)}")
    return {str(name): bool(violating) for name, violating in categories.items()}


def _outcome(kind: DecisionKind, categories: Mapping[str, bool]) -> Outcome:
    if kind is DecisionKind.ESCALATE:
        return Outcome.ESCALATED
    return Outcome.VIOLATING if any(categories.values()) else Outcome.NOT_VIOLATING


def _reviewer_outcome(
    item: ReviewItem, flagged_category: str | None, categories: Mapping[str, bool], actor: Actor, now: datetime
) -> dict[str, Any]:
    """The review_outcomes row of a decision on a flagged item (the contract of moderation/review_outcome.py):
    confirmed when any category violates (naming it when it is not the flagged one), else overturned."""
    violated = [name for name, violating in categories.items() if violating]
    if violated:
        category = None if flagged_category in violated else violated[0]
        outcome = CONFIRMED
    else:
        category, outcome = None, OVERTURNED
    return {"event_id": item.event_id, "outcome": outcome, "category": category,
            "reviewer": actor.username, "decided_at": now}
