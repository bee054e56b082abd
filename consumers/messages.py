"""What we publish: review-topic messages for verdicts that need review (dead letters: consumers/dead_letters.py).

Review messages are keyed by ``content_id`` and carry the ``event_id`` in a header as well as in the
body, so a review tool can drop the repeats an at-least-once redelivery may cause.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from moderation.review.routing import review_reason
from moderation.verdict import MediaStatus, Verdict

REVIEW_SCHEMA_VERSION = 1

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


def review_payload(verdict: Verdict) -> dict[str, Any]:
    return {
        "schema_version": REVIEW_SCHEMA_VERSION,
        "event_id": verdict.event_id,
        "content_id": verdict.content_id,
        "source": verdict.source,
        "uploaded_at": verdict.uploaded_at.isoformat(),
        "top_category": verdict.top_category,
        "action": verdict.action,
        "uncertain": verdict.uncertain,  # sent to review because a score fell in the policy's uncertain band
        "audited": verdict.audited,  # not flagged: drawn by the policy's audit sampling
        "review_reason": review_reason(verdict).value,  # escalate | block | review | uncertain | audit
        "scores": verdict.scores,
        "best_prompt": verdict.best_prompt,
        "policy_version": verdict.policy_version,
        "policy_hash": verdict.policy_hash,
        "model_id": verdict.model_id,
        "image_ref": verdict.image_ref,
        # The reviewer copy's state: stored | withheld | off | failed (the console serves a stored one).
        "media_status": (verdict.media.status if verdict.media is not None else MediaStatus.OFF).value,
        "decided_at": (verdict.created_at or datetime.now(timezone.utc)).isoformat(),
    }


def review_message(topic: str, verdict: Verdict) -> OutgoingMessage:
    return OutgoingMessage(
        topic=topic,
        key=verdict.content_id.encode(),
        value=json.dumps(review_payload(verdict), separators=(",", ":")).encode(),
        headers=[
            ("event_id", verdict.event_id.encode()),
            ("policy_version", verdict.policy_version.encode()),
            ("content-type", b"application/json"),
        ],
    )


def header(headers: Headers | None, name: str) -> str | None:
    for key, raw in headers or []:
        if key == name:
            return raw.decode(errors="replace") if raw is not None else None
    return None
