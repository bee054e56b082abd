"""Audit sampling (moderation/audit.py) and the policy's media rule: which allowed images go to review
anyway, and which images may not be kept for reviewers."""

from __future__ import annotations

from functools import partial

import pytest

from moderation.audit import audit_draw, audit_fraction
from moderation.moderator import Moderator
from moderation.policy import parse_policy
from moderation.review.routing import PRIORITY, ReviewReason, queue_row, review_reason
from moderation.settings import ImageSettings
from tests.support.fakes import FakeScorer
from tests.unit.test_moderator import inline

AUDITED = parse_policy(
    """\
version: audited-1
audit_rate: 0.5
categories:
  safe: {prompts: [a blue picture, a green picture]}
  red: {prompts: [a red picture], threshold: 0.5, action: review}
  yellow: {prompts: [a yellow picture], threshold: 0.5, action: block, keep_media: false}
""",
    "audited.yaml",
)


def test_the_draw_is_fixed_by_the_event_id() -> None:
    assert [audit_draw(f"e{i}", 0.3) for i in range(200)] == [audit_draw(f"e{i}", 0.3) for i in range(200)]
    assert audit_fraction("e1") != audit_fraction("e2")


def test_rates_zero_and_one_are_never_and_always() -> None:
    ids = [f"event-{i}" for i in range(2000)]
    assert not any(audit_draw(i, 0.0) for i in ids)
    assert all(audit_draw(i, 1.0) for i in ids)


def test_the_sample_is_the_rate_and_grows_without_reshuffling() -> None:
    ids = [f"upload-{i}" for i in range(20_000)]
    low = {i for i in ids if audit_draw(i, 0.01)}
    high = {i for i in ids if audit_draw(i, 0.3)}
    assert 0.28 < len(high) / len(ids) < 0.32
    assert 100 < len(low) < 300
    assert low <= high  # raising the rate keeps what the lower one drew


def test_audit_rate_is_validated_and_left_out_of_the_hash_at_its_default() -> None:
    base = "version: v\ncategories:\n  safe: {prompts: [a]}\n  bad: {prompts: [b], threshold: 0.5, action: review}\n"
    with pytest.raises(Exception, match="audit_rate"):
        parse_policy(base + "audit_rate: 1.5\n")
    assert parse_policy(base + "audit_rate: 0.0\n").sha256 == parse_policy(base).sha256
    assert parse_policy(base + "audit_rate: 0.1\n").sha256 != parse_policy(base).sha256


def test_allowed_images_are_audited_by_the_rate_and_flagged_ones_never() -> None:
    moderator = Moderator(partial(FakeScorer, only_policy=AUDITED)(), AUDITED, ImageSettings())
    events = [inline("blue", f"b{i}") for i in range(40)] + [inline("red", f"r{i}") for i in range(10)]
    verdicts = moderator.moderate(events)
    allowed = [v for v in verdicts if not v.flagged]
    assert len(allowed) == 40
    audited = [v for v in allowed if v.audited]
    assert [v.event_id for v in audited] == [v.event_id for v in allowed if audit_draw(v.event_id, 0.5)]
    assert 8 < len(audited) < 32
    assert all(v.action == "allow" and v.needs_review for v in audited)
    assert not any(v.audited for v in verdicts if v.flagged)
    # Redelivered: the same events are drawn again.
    assert [v.audited for v in moderator.moderate(events)] == [v.audited for v in verdicts]


def test_keep_media_false_withholds_the_copy_near_its_category_only() -> None:
    moderator = Moderator(partial(FakeScorer, only_policy=AUDITED)(), AUDITED, ImageSettings())
    yellow, red, blue = moderator.moderate([inline("yellow", "y"), inline("red", "r"), inline("blue", "b")])
    assert yellow.top_category == "yellow" and not yellow.keep_media
    assert red.keep_media and blue.keep_media
    policy = AUDITED.policy
    assert policy.forbids_media({"safe": 0.6, "red": 0.0, "yellow": 0.5}, "safe")  # at the threshold
    assert not policy.forbids_media({"safe": 0.6, "red": 0.0, "yellow": 0.49}, "safe")


def test_review_reasons_rank_block_before_review_before_uncertain_before_audit() -> None:
    moderator = Moderator(partial(FakeScorer, only_policy=AUDITED)(), AUDITED, ImageSettings())
    yellow, red = moderator.moderate([inline("yellow", "y2"), inline("red", "r2")])
    assert review_reason(yellow) is ReviewReason.BLOCK and review_reason(red) is ReviewReason.REVIEW
    ranks = [PRIORITY[r] for r in (ReviewReason.ESCALATE, ReviewReason.BLOCK, ReviewReason.REVIEW,
                                    ReviewReason.UNCERTAIN, ReviewReason.AUDIT)]
    assert ranks == sorted(ranks) and len(set(ranks)) == 5
    row = queue_row(yellow)
    assert (row["reason"], row["queue"], row["status"], row["media_status"]) == ("block", "yellow", "pending", "off")
    blue = next(v for v in moderator.moderate([inline("blue", f"q{i}") for i in range(30)]) if v.audited)
    assert queue_row(blue)["queue"] == "audit" and queue_row(blue)["reason"] == "audit"
    allowed = next(v for v in moderator.moderate([inline("blue", f"n{i}") for i in range(30)]) if not v.audited)
    with pytest.raises(ValueError, match="does not need review"):
        review_reason(allowed)
