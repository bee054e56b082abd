"""The decisions contract: what the console publishes for each review decision, for upload services.

Upload services consume the decisions topic to take content down or put it back. A message names the
decision (`decision_id`, the idempotency key: a redelivered message has the same one), the content, what
the reviewer found per category and the resulting `action`: `remove` when any category is violating,
`restore` otherwise (restoring what was never removed is a no-op for the service). An override is a later
decision on the same content, with `previous_decision_id` naming the one it replaces; keyed by
`content_id`, so one content's decisions stay in order on one partition. Reviewers' names and their
free-text reasons stay inside the console (they protect the reviewer and may quote the content).
"""

from __future__ import annotations

from typing import Any

from moderation.review.values import Outcome, ReviewDecision

SCHEMA_VERSION = 1
ACTION_REMOVE = "remove"
ACTION_RESTORE = "restore"


def decision_payload(decision: ReviewDecision, *, source: str, policy_version: str | None) -> dict[str, Any]:
    """The message value of one decision (not of an escalation, which decides nothing)."""
    if decision.outcome is Outcome.ESCALATED:
        raise ValueError(f"decision {decision.decision_id} is an escalation: nothing to publish")
    return {
        "schema_version": SCHEMA_VERSION,
        "decision_id": decision.decision_id,
        "event_id": decision.event_id,
        "content_id": decision.content_id,
        "source": source,
        "kind": decision.kind.value,  # decide | override
        "outcome": decision.outcome.value,  # violating | not_violating
        "action": ACTION_REMOVE if decision.outcome is Outcome.VIOLATING else ACTION_RESTORE,
        "categories": dict(decision.categories),  # category -> violating
        "violated": decision.violated,
        "previous_decision_id": decision.previous_decision_id,
        "policy_version": policy_version,
        "decided_at": decision.decided_at.isoformat(),
    }
