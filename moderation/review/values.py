"""The values the review queue hands out and takes in: who acts, the items, the decisions, what went wrong.

Kept apart from the SQL (moderation/storage/review_queue.py) so the console and the command line speak
about reviews without importing a store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from moderation.exceptions import ModerationError


class Role(str, Enum):
    REVIEWER = "reviewer"  # takes items from the queues and decides them
    LEAD = "lead"  # also: escalated items, overrides, appeals, the audit log, bulk decisions
    ADMIN = "admin"  # also: accounts

    @property
    def is_lead(self) -> bool:
        return self in (Role.LEAD, Role.ADMIN)


@dataclass(frozen=True)
class Actor:
    """Who does something: a console account (or a service name) and its role."""

    username: str
    role: Role


class DecisionKind(str, Enum):
    DECIDE = "decide"  # a reviewer's decision on a claimed item
    OVERRIDE = "override"  # a lead replaces the latest decision
    ESCALATE = "escalate"  # a reviewer hands the item to the leads' queue (no decision yet)


class Outcome(str, Enum):
    VIOLATING = "violating"
    NOT_VIOLATING = "not_violating"
    ESCALATED = "escalated"


class ReviewError(ModerationError):
    """A review action refused, with a machine-readable `code` the console turns into an HTTP status."""

    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # claimed by someone else, decided meanwhile, or a lease that ran out
    FORBIDDEN = "forbidden"  # the actor's role does not allow it
    INVALID = "invalid"  # a missing reason, an unknown category

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class ReviewItem:
    """One row of the queue, as the console shows it."""

    id: int
    event_id: str
    content_id: str
    source: str
    reason: str  # escalate | block | review | uncertain | audit (moderation/review/routing.py)
    priority: int
    category: str | None
    queue: str
    status: str  # pending | decided
    claimed_by: str | None
    claim_expires_at: datetime | None
    excluded_reviewer: str | None
    media_status: str
    media_key: str | None
    media_width: int | None
    media_height: int | None
    entered_at: datetime
    decided_at: datetime | None
    latest_decision_id: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> ReviewItem:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def escalated(self) -> bool:
        return self.queue == "escalated"

    @property
    def appealed(self) -> bool:
        return self.queue == "appeals"


@dataclass(frozen=True)
class ReviewDecision:
    """One row of an item's decision history (append-only)."""

    decision_id: str
    item_id: int
    event_id: str
    content_id: str
    reviewer: str
    kind: DecisionKind
    outcome: Outcome
    categories: dict[str, bool]  # category -> violating
    reason: str
    previous_decision_id: str | None
    bulk_id: str | None
    decided_at: datetime
    published_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> ReviewDecision:
        values = {name: row[name] for name in cls.__dataclass_fields__}
        values["kind"] = DecisionKind(values["kind"])
        values["outcome"] = Outcome(values["outcome"])
        values["categories"] = {str(k): bool(v) for k, v in (values["categories"] or {}).items()}
        return cls(**values)

    @property
    def violated(self) -> list[str]:
        return [name for name, violating in self.categories.items() if violating]


@dataclass(frozen=True)
class BulkResult:
    """What a bulk decision did, item by item: the decision id, or why the item was left alone."""

    bulk_id: str
    decided: dict[int, str] = field(default_factory=dict)  # item id -> decision id
    refused: dict[int, str] = field(default_factory=dict)  # item id -> why
