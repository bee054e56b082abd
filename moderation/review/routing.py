"""Which verdicts go to human review, why, and in what order: the one place that ranks them.

The queue serves the most urgent first: content a policy escalates or blocks (a person confirms what
was already done), then content held for review, then scores the policy could not call (uncertain),
then the random audit sample of allowed content; oldest first within one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from moderation.verdict import MediaStatus, Verdict


class ReviewReason(str, Enum):
    ESCALATE = "escalate"
    BLOCK = "block"
    REVIEW = "review"
    UNCERTAIN = "uncertain"
    AUDIT = "audit"


PRIORITY = {reason: rank for rank, reason in enumerate(ReviewReason)}
AUDIT_QUEUE = "audit"
ESCALATED_QUEUE = "escalated"
APPEALS_QUEUE = "appeals"


def review_reason(verdict: Verdict) -> ReviewReason:
    """Why `verdict` goes to review; ValueError for one that does not (`Verdict.needs_review`)."""
    if not verdict.needs_review:
        raise ValueError(f"verdict {verdict.event_id!r} does not need review")
    if verdict.uncertain:
        return ReviewReason.UNCERTAIN
    if not verdict.flagged:
        return ReviewReason.AUDIT
    return ReviewReason(verdict.action)


def queue_name(reason: ReviewReason, category: str | None) -> str:
    """The queue an item enters: its category's, or the audit queue for the sample of allowed items."""
    if reason is ReviewReason.AUDIT or not category:
        return AUDIT_QUEUE
    return category


def queue_row(verdict: Verdict, now: datetime | None = None) -> dict[str, Any]:
    """The review_items row for a verdict that needs review, with its reviewer copy's state."""
    reason = review_reason(verdict)
    media = verdict.media
    return {
        "event_id": verdict.event_id,
        "content_id": verdict.content_id,
        "source": verdict.source,
        "reason": reason.value,
        "priority": PRIORITY[reason],
        "category": verdict.top_category,
        "queue": queue_name(reason, verdict.top_category),
        "status": "pending",
        "media_status": (media.status if media is not None else MediaStatus.OFF).value,
        "media_key": media.key if media is not None else None,
        "media_width": media.width if media is not None else None,
        "media_height": media.height if media is not None else None,
        "entered_at": now or datetime.now(timezone.utc),
    }
