"""Review-topic messages for flagged verdicts (messages.py) and dead letters of bad events (dead_letters.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from consumers.dead_letters import dead_letter_message
from consumers.messages import (
    REVIEW_SCHEMA_VERSION,
    OutgoingMessage,
    header,
    review_message,
    review_payload,
)
from moderation.verdict import Verdict, VerdictStatus

UPLOADED = datetime(2024, 5, 17, 12, 30, tzinfo=timezone.utc)
CREATED = datetime(2024, 5, 17, 12, 30, 5, tzinfo=timezone.utc)


def flagged_verdict(**overrides: object) -> Verdict:
    verdict = Verdict(
        event_id="evt-123",
        content_id="content-\u00e9-42",
        source="uploads-eu",
        status=VerdictStatus.OK,
        flagged=True,
        top_category="nsfw",
        action="block",
        scores={"safe": 0.1, "nsfw": 0.85, "violent": 0.05},
        best_prompt="explicit content",
        policy_version="2024-06-01",
        policy_hash="ab" * 32,
        model_id="openai/clip-vit-base-patch32",
        image_ref="inline:sha256:" + "cd" * 32,
        image_sha256="cd" * 32,
        uploaded_at=UPLOADED,
        load_ms=1.5,
        score_ms=3.25,
        created_at=CREATED,
    )
    return replace(verdict, **overrides)


# --- review messages --------------------------------------------------------------------------------


def test_review_message_is_keyed_by_content_id() -> None:
    message = review_message("moderation.review", flagged_verdict())
    assert isinstance(message, OutgoingMessage)
    assert message.topic == "moderation.review"
    assert message.key == "content-\u00e9-42".encode()


def test_review_message_headers() -> None:
    message = review_message("moderation.review", flagged_verdict())
    assert header(message.headers, "event_id") == "evt-123"
    assert header(message.headers, "policy_version") == "2024-06-01"
    assert header(message.headers, "content-type") == "application/json"
    assert all(isinstance(name, str) and isinstance(value, bytes) for name, value in message.headers)


def test_review_message_body() -> None:
    verdict = flagged_verdict()
    body = json.loads(review_message("moderation.review", verdict).value)
    assert body["schema_version"] == REVIEW_SCHEMA_VERSION == 1
    assert body["event_id"] == "evt-123"
    assert body["content_id"] == "content-\u00e9-42"
    assert body["source"] == "uploads-eu"
    assert body["scores"] == {"safe": 0.1, "nsfw": 0.85, "violent": 0.05}
    assert body["top_category"] == "nsfw"
    assert body["action"] == "block"
    assert body["best_prompt"] == "explicit content"
    assert body["policy_version"] == "2024-06-01"
    assert body["policy_hash"] == "ab" * 32
    assert body["model_id"] == "openai/clip-vit-base-patch32"
    assert body["image_ref"] == "inline:sha256:" + "cd" * 32
    assert datetime.fromisoformat(body["uploaded_at"]) == UPLOADED
    assert datetime.fromisoformat(body["decided_at"]) == CREATED


def test_review_body_equals_review_payload() -> None:
    verdict = flagged_verdict()
    assert json.loads(review_message("t", verdict).value) == review_payload(verdict)


def test_review_body_never_carries_image_bytes_or_internal_fields() -> None:
    body = json.loads(review_message("t", flagged_verdict()).value)
    assert "image_base64" not in body
    assert "error_reason" not in body
    assert "load_ms" not in body


def test_decided_at_defaults_to_now_in_utc() -> None:
    before = datetime.now(timezone.utc)
    body = json.loads(review_message("t", flagged_verdict(created_at=None)).value)
    decided = datetime.fromisoformat(body["decided_at"])
    assert decided.tzinfo is not None
    assert before <= decided <= datetime.now(timezone.utc) + timedelta(seconds=1)


def test_uploaded_at_keeps_its_offset() -> None:
    uploaded = datetime(2024, 5, 17, 18, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    body = json.loads(review_message("t", flagged_verdict(uploaded_at=uploaded)).value)
    assert body["uploaded_at"] == "2024-05-17T18:00:00+05:30"


# --- dead-letter messages ---------------------------------------------------------------------------


def dlq(**overrides: object) -> OutgoingMessage:
    arguments: dict[str, object] = {
        "key": b"\x00raw-key\xff",
        "value": b"\xff\xfenot json at all\x00",
        "headers": [("trace-id", b"abc"), ("producer", b"upload-svc")],
        "reason": "invalid_json",
        "detail": "Expecting value: line 1 column 1 (char 0)",
        "source_topic": "images.uploaded",
        "partition": 3,
        "offset": 98765,
    }
    arguments.update(overrides)
    return dead_letter_message("images.uploaded.dlq", **arguments)  # type: ignore[arg-type]


def test_dead_letter_keeps_the_original_bytes_key_and_headers() -> None:
    message = dlq()
    assert message.topic == "images.uploaded.dlq"
    assert message.key == b"\x00raw-key\xff"
    assert message.value == b"\xff\xfenot json at all\x00"
    assert message.headers[:2] == [("trace-id", b"abc"), ("producer", b"upload-svc")]


def test_dead_letter_adds_dlq_headers() -> None:
    before = datetime.now(timezone.utc)
    message = dlq()
    assert header(message.headers, "dlq.reason") == "invalid_json"
    assert header(message.headers, "dlq.detail") == "Expecting value: line 1 column 1 (char 0)"
    assert header(message.headers, "dlq.source.topic") == "images.uploaded"
    assert header(message.headers, "dlq.source.partition") == "3"
    assert header(message.headers, "dlq.source.offset") == "98765"
    failed_at = datetime.fromisoformat(header(message.headers, "dlq.failed_at") or "")
    assert failed_at.tzinfo is not None
    assert before <= failed_at <= datetime.now(timezone.utc) + timedelta(seconds=1)
    names = [name for name, _ in message.headers]
    assert names == [
        "trace-id",
        "producer",
        "dlq.reason",
        "dlq.detail",
        "dlq.source.topic",
        "dlq.source.partition",
        "dlq.source.offset",
        "dlq.failed_at",
    ]


def test_dead_letter_truncates_a_huge_detail() -> None:
    detail = "x" * 1_000_000
    raw = dict(dlq(detail=detail).headers)["dlq.detail"]
    assert raw == b"x" * 2000


def test_dead_letter_detail_with_unencodable_characters_does_not_raise() -> None:
    raw = dict(dlq(detail="bad \udcff surrogate").headers)["dlq.detail"]
    assert raw.startswith(b"bad ")
    assert raw.endswith(b" surrogate")


def test_dead_letter_with_no_value_or_key() -> None:
    message = dlq(value=None, key=None, headers=[])
    assert message.value == b""
    assert message.key is None
    assert header(message.headers, "dlq.reason") == "invalid_json"
    assert all(name.startswith("dlq.") for name, _ in message.headers)


def test_dead_letter_does_not_mutate_the_callers_headers() -> None:
    original = [("trace-id", b"abc")]
    dlq(headers=original)
    assert original == [("trace-id", b"abc")]


# --- header() ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "name", "expected"),
    [
        ([("a", b"1"), ("b", b"2"), ("a", b"3")], "a", "1"),  # the first one wins
        ([("a", b"1")], "missing", None),
        (None, "a", None),
        ([], "a", None),
        ([("a", None)], "a", None),
        ([("a", b"\xff")], "a", "\ufffd"),
    ],
    ids=["first", "missing", "none", "empty", "null-value", "bad-utf8"],
)
def test_header(headers: list[tuple[str, bytes]] | None, name: str, expected: str | None) -> None:
    assert header(headers, name) == expected
