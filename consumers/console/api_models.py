"""The read API's documents (v1): what each endpoint answers and accepts, as pydantic models, so the
OpenAPI document describes exactly what is served. Within v1, fields are only ever added."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moderation.review.values import ReviewDecision, ReviewItem
from moderation.storage.api_reads import CountRow
from moderation.storage.audit_log import AuditEntry
from moderation.storage.policies import StoredPolicy
from moderation.verdict import ShadowVerdict, Verdict


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(Document):
    parameter: str | None = Field(None, description="The query parameter or body field at fault, if one is.")
    message: str


class ErrorOut(Document):
    """Every 4xx and 5xx answer of the API."""

    error: str = Field(description="One line saying what was wrong.")
    problems: list[Problem] = Field(default_factory=list, description="Per parameter, for a 422.")


class VerdictOut(Document):
    id: int = Field(description="The row id: what `cursor` pages on.")
    event_id: str
    content_id: str
    source: str
    status: Literal["ok", "error"]
    flagged: bool
    category: str | None = Field(description="The flagged category (null when not flagged).")
    top_category: str | None = Field(description="The highest-scoring category, flagged or not.")
    action: str | None
    uncertain: bool
    audited: bool
    scores: dict[str, float]
    best_prompt: str | None
    policy_version: str
    policy_hash: str
    model_id: str
    image_ref: str
    image_sha256: str | None
    pdq_hash: str | None = Field(description="The picture's PDQ perceptual hash, 64 hex characters (null if none).")
    pdq_quality: int | None = Field(description="PDQ's quality of that hash, 0-100 (below 50 it never matches).")
    uploaded_at: datetime
    created_at: datetime | None
    error_reason: str | None
    error_detail: str | None

    @classmethod
    def of(cls, row_id: int, verdict: Verdict) -> VerdictOut:
        return cls(
            id=row_id, event_id=verdict.event_id, content_id=verdict.content_id, source=verdict.source,
            status=verdict.status.value, flagged=verdict.flagged,
            category=verdict.top_category if verdict.flagged else None, top_category=verdict.top_category,
            action=verdict.action, uncertain=verdict.uncertain, audited=verdict.audited, scores=verdict.scores,
            best_prompt=verdict.best_prompt, policy_version=verdict.policy_version, policy_hash=verdict.policy_hash,
            model_id=verdict.model_id, image_ref=verdict.image_ref, image_sha256=verdict.image_sha256,
            pdq_hash=verdict.pdq_hash, pdq_quality=verdict.pdq_quality,
            uploaded_at=verdict.uploaded_at, created_at=verdict.created_at, error_reason=verdict.error_reason,
            error_detail=verdict.error_detail,
        )


class Page(Document):
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last.")


class VerdictPage(Page):
    items: list[VerdictOut]


class ShadowOut(Document):
    event_id: str
    policy_version: str
    policy_hash: str
    flagged: bool
    top_category: str | None
    action: str | None
    uncertain: bool
    scores: dict[str, float]
    created_at: datetime | None

    @classmethod
    def of(cls, shadow: ShadowVerdict) -> ShadowOut:
        return cls(
            event_id=shadow.event_id, policy_version=shadow.policy_version, policy_hash=shadow.policy_hash,
            flagged=shadow.flagged, top_category=shadow.top_category, action=shadow.action,
            uncertain=shadow.uncertain, scores=shadow.scores, created_at=shadow.created_at,
        )


class ReviewItemOut(Document):
    id: int
    event_id: str
    content_id: str
    source: str
    reason: str = Field(description="Why it is in review: escalate, block, review, uncertain or audit.")
    priority: int
    category: str | None
    queue: str
    status: Literal["pending", "decided"]
    claimed_by: str | None
    claim_expires_at: datetime | None
    media: Literal["stored", "withheld", "off", "failed", "pruned"] = Field(
        description="The reviewer copy: stored (GET .../media), withheld by policy, off, failed or pruned."
    )
    entered_at: datetime
    decided_at: datetime | None
    latest_decision_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, item: ReviewItem) -> ReviewItemOut:
        return cls(
            id=item.id, event_id=item.event_id, content_id=item.content_id, source=item.source,
            reason=item.reason, priority=item.priority, category=item.category, queue=item.queue,
            status=item.status, claimed_by=item.claimed_by,  # type: ignore[arg-type]
            claim_expires_at=item.claim_expires_at, media=item.media_status,  # type: ignore[arg-type]
            entered_at=item.entered_at, decided_at=item.decided_at,
            latest_decision_id=item.latest_decision_id, created_at=item.created_at,
        )


class ReviewItemPage(Page):
    items: list[ReviewItemOut]


class DecisionOut(Document):
    decision_id: str
    item_id: int
    event_id: str
    content_id: str
    reviewer: str
    kind: Literal["decide", "override", "escalate"]
    outcome: Literal["violating", "not_violating", "escalated"]
    categories: dict[str, bool] = Field(description="Per category: violating (true) or not (false).")
    reason: str
    previous_decision_id: str | None
    bulk_id: str | None
    decided_at: datetime
    published_at: datetime | None

    @classmethod
    def of(cls, decision: ReviewDecision) -> DecisionOut:
        return cls(
            decision_id=decision.decision_id, item_id=decision.item_id, event_id=decision.event_id,
            content_id=decision.content_id, reviewer=decision.reviewer, kind=decision.kind.value,
            outcome=decision.outcome.value, categories=decision.categories, reason=decision.reason,
            previous_decision_id=decision.previous_decision_id, bulk_id=decision.bulk_id,
            decided_at=decision.decided_at, published_at=decision.published_at,
        )


class DecisionPage(Page):
    items: list[DecisionOut]


class ReviewItemDetail(Document):
    item: ReviewItemOut
    decisions: list[DecisionOut] = Field(description="Oldest first; the latest is the item's state.")


class ContentHistory(Document):
    """Everything known about one content id: every verdict (newest first), the shadow verdicts of those
    events, its review items and every decision (oldest first)."""

    content_id: str
    state: str = Field(description="As moderation_v1_content_state: removed, kept, error, blocked, in_review, allowed.")
    verdicts: list[VerdictOut]
    shadow_verdicts: list[ShadowOut]
    review_items: list[ReviewItemOut]
    decisions: list[DecisionOut]


class VerdictDetail(Document):
    verdict: VerdictOut
    shadow_verdicts: list[ShadowOut]
    review_item: ReviewItemOut | None
    decisions: list[DecisionOut]
    policy_url: str = Field(description="The exact policy this verdict was decided under.")


class CountOut(Document):
    hour: datetime
    source: str
    status: str
    category: str | None = Field(description="The flagged category; null for verdicts not flagged.")
    action: str
    verdicts: int
    uncertain: int
    audited: int

    @classmethod
    def of(cls, row: CountRow) -> CountOut:
        return cls(hour=row.hour, source=row.source, status=row.status, category=row.category, action=row.action,
                   verdicts=row.verdicts, uncertain=row.uncertain, audited=row.audited)


class CountsOut(Document):
    since: datetime
    until: datetime
    rows: list[CountOut]


class QueueOut(Document):
    queue: str
    pending: int
    oldest_entered_at: datetime | None
    oldest_age_s: float | None


class PolicySummary(Document):
    policy_hash: str
    version: str
    first_seen: datetime
    last_seen: datetime

    @classmethod
    def of(cls, stored: StoredPolicy) -> PolicySummary:
        return cls(policy_hash=stored.policy_hash, version=stored.version, first_seen=stored.first_seen,
                   last_seen=stored.last_seen)


class HeadOut(Document):
    category: str
    head_sha256: str = Field(description="The sha256 of the head file, as the policy pins it.")
    model_id: str = Field(description="The model whose embeddings it was trained on.")
    report: dict[str, Any] | None = Field(description="`moderation policy train`'s report: metrics against "
                                          "zero-shot, learning curve, calibration, suggested thresholds.")


class PolicyOut(PolicySummary):
    text: str = Field(description="The YAML exactly as the first worker under it read it.")
    meaning: dict[str, Any] = Field(description="What the hash covers: categories, prompts, thresholds, actions.")
    heads: list[HeadOut] = Field(description="The trained heads it pins (categories scored by a head).")

    @classmethod
    def of(cls, stored: StoredPolicy) -> PolicyOut:
        heads = [HeadOut(category=h.category, head_sha256=h.head_sha256, model_id=h.model_id, report=h.report)
                 for h in stored.heads]
        return cls(policy_hash=stored.policy_hash, version=stored.version, first_seen=stored.first_seen,
                   last_seen=stored.last_seen, text=stored.text, meaning=stored.meaning, heads=heads)


class AuditOut(Document):
    id: int
    at: datetime
    actor: str
    action: str
    item_id: int | None
    event_id: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls(id=entry.id, at=entry.at, actor=entry.actor, action=entry.action, item_id=entry.item_id,
                   event_id=entry.event_id, detail=entry.detail)


class AuditPage(Page):
    items: list[AuditOut]


class DecisionIn(Document):
    """A decision on a review item. `decide` needs the item claimed by the caller (POST .../claim first);
    `override` is for leads, on a decided item; `escalate` hands a claimed item to the leads."""

    kind: Literal["decide", "override", "escalate"] = "decide"
    categories: dict[str, bool] = Field(
        default_factory=dict, description="Per category: violating (true) or not (false); not for escalate."
    )
    reason: str = Field(min_length=1, max_length=2000, description="Required: why, for the audit log.")


class BulkDecisionIn(Document):
    """One decision for many pending items nobody else holds: one decision row each, one audit row for all."""

    item_ids: list[int] = Field(min_length=1, max_length=500)
    categories: dict[str, bool] = Field(description="Per category: violating (true) or not (false).")
    reason: str = Field(min_length=1, max_length=2000)


class BulkDecisionOut(Document):
    bulk_id: str
    decided: dict[str, str] = Field(description="Item id -> its new decision id.")
    refused: dict[str, str] = Field(description="Item id -> why it was left alone (claimed, decided, escalated).")


class AppealIn(Document):
    reason: str = Field(min_length=1, max_length=2000)


class WhoAmI(Document):
    username: str
    role: Literal["reviewer", "lead", "admin"]
    scope: Literal["read", "write"]
    via: Literal["token", "session"]
    token_name: str | None


class SearchHitOut(Document):
    rank: int
    score: float = Field(description="Cosine similarity to the query (higher is closer).")
    verdict_id: int
    event_id: str
    content_id: str
    source: str
    flagged: bool
    action: str | None
    top_category: str | None
    created_at: datetime
    review_item_id: int | None = Field(description="Its review item, when it went to review.")


class SearchOut(Document):
    query: Literal["text", "image", "like"]
    index_size: int = Field(description="Embeddings in the index searched.")
    hits: list[SearchHitOut]
