"""schemas/*.json: the published message contracts, checked against what the code produces and accepts.

Produced messages (review, decision, dead-letter headers, review outcomes as the review tool writes them,
image events as consumers/producer.py builds them) must validate and carry exactly the fields the schema
lists. Read messages (image events, review outcomes) must be judged the same by the schema and by the
strict reader, except for the few rules listed here that only one side can express.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from consumers.dead_letters import (
    DEAD_LETTER_PREFIX_BYTES,
    dead_letter_message,
    fit,
    truncated_dead_letter,
)
from consumers.delivery import REASON_EVENT_ID_CONFLICT, REASON_UNSTORABLE
from consumers.messages import review_message, review_payload
from consumers.producer import image_event
from moderation import events, review_outcome
from moderation.events import parse_event
from moderation.exceptions import EventError
from moderation.review.decision_message import decision_payload
from moderation.review.values import DecisionKind, Outcome, ReviewDecision
from moderation.review_outcome import ReviewOutcome, parse_outcome
from moderation.schemas import MESSAGES, load_schema, schema_dir
from moderation.verdict import MediaStatus, ReviewMedia, Verdict, VerdictStatus
from tests.support.paths import REPO
from tests.support.schemas import assert_valid, headers_object, problems

CEST = timezone(timedelta(hours=2))
UPLOADED = datetime(2024, 11, 27, 18, 30, 15, 123456, tzinfo=CEST)


def roundtrip(payload: Any) -> Any:
    """What a consumer reads: the payload through JSON, as the code serialises it."""
    return json.loads(json.dumps(payload, separators=(",", ":")))


def listed_fields(name: str) -> set[str]:
    return set(load_schema(name)["properties"])


# --- the schemas themselves -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_schema_is_a_valid_2020_12_schema_with_every_field_described(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:moderation:schema:{name}:v1"
    assert schema["title"] and schema["description"]
    undescribed = [field for field, spec in schema["properties"].items() if not spec.get("description")]
    assert not undescribed
    assert set(schema["required"]) <= set(schema["properties"])


def test_the_schema_directory_holds_exactly_the_listed_messages() -> None:
    assert schema_dir() == REPO / "schemas"  # a checkout reads its own files, not an installed copy
    assert sorted(p.name for p in schema_dir().glob("*.json")) == sorted(f"{name}.v1.json" for name in MESSAGES)


def test_load_schema_names_the_known_messages_when_asked_for_another() -> None:
    with pytest.raises(KeyError, match="image-event"):
        load_schema("verdict")


def test_limits_in_the_schemas_are_the_codes_limits() -> None:
    event = load_schema("image-event")["properties"]
    assert event["schema_version"]["const"] == events.SCHEMA_VERSION
    assert (event["event_id"]["maxLength"], event["source"]["maxLength"], event["image_url"]["maxLength"]) == (
        255, 128, 4096)
    outcome = load_schema("review-outcome")["properties"]
    assert outcome["event_id"]["maxLength"] == outcome["reviewer"]["maxLength"] == review_outcome.ID_MAX_LENGTH
    assert outcome["schema_version"]["const"] == review_outcome.SCHEMA_VERSION
    assert load_schema("review-outcome")["required"] == [
        name for name, info in ReviewOutcome.model_fields.items() if info.is_required()]
    assert sorted(load_schema("image-event")["required"]) == sorted(
        name for name, info in events.ImageEvent.model_fields.items() if info.is_required())
    reasons = load_schema("dead-letter-headers")["properties"]["dlq.reason"]["enum"]
    assert set(reasons) == {*review_outcome.REASONS, events.REASON_INVALID_EVENT, REASON_EVENT_ID_CONFLICT,
                            REASON_UNSTORABLE}


# --- what the code produces validates -----------------------------------------------------------------


def make_verdict(event_id: str, **changes: Any) -> Verdict:
    """A flagged, fully populated verdict, as tests/integration/test_storage.py builds one."""
    verdict = Verdict(
        event_id=event_id, content_id=f"content-{event_id}", source="uploads", status=VerdictStatus.OK,
        flagged=True, top_category="violence", action="block",
        scores={"violence": 0.8123456789, "safe": 0.1876543211}, best_prompt="a photo of a violent scene",
        policy_version="2024-11-01", policy_hash="ab" * 32, model_id="openai/clip-vit-base-patch32",
        image_ref=f"https://images.example.com/{event_id}.jpg", image_sha256="cd" * 32, uploaded_at=UPLOADED,
        load_ms=12.5, score_ms=48.25,
    )
    return replace(verdict, **changes)


REVIEWED = {
    "block": make_verdict("e-block"),
    "review": make_verdict("e-review", action="review", media=ReviewMedia(MediaStatus.STORED, key="ab/cd.jpg")),
    "escalate": make_verdict("e-escalate", action="escalate", created_at=datetime.now(timezone.utc)),
    "uncertain": make_verdict("e-uncertain", action="review", uncertain=True,
                              media=ReviewMedia(MediaStatus.WITHHELD)),
    "audit": make_verdict("e-audit", flagged=False, action="allow", top_category="safe", audited=True,
                          media=ReviewMedia(MediaStatus.FAILED, detail="decode failed")),
    "inline": make_verdict("e-inline", image_ref="inline:sha256:" + "ef" * 32, media=ReviewMedia(MediaStatus.OFF)),
}


@pytest.mark.parametrize("case", sorted(REVIEWED))
def test_review_messages_validate_and_carry_exactly_the_listed_fields(case: str) -> None:
    verdict = REVIEWED[case]
    body = json.loads(review_message("review", verdict).value)
    assert_valid("review-message", body)
    assert set(body) == listed_fields("review-message")
    assert body == roundtrip(review_payload(verdict)) | {"decided_at": body["decided_at"]}


def test_error_verdicts_get_no_review_message() -> None:
    error = make_verdict("e-error", status=VerdictStatus.ERROR, flagged=False, top_category=None, action=None,
                         scores={}, best_prompt=None, error_reason="fetch_failed", error_detail="timed out")
    with pytest.raises(ValueError, match="does not need review"):
        review_payload(error)


def test_the_review_schema_refuses_what_the_code_never_sends() -> None:
    body = roundtrip(review_payload(REVIEWED["block"]))
    assert problems("review-message", {**body, "review_reason": "allow"})
    assert problems("review-message", {**body, "audited": True, "uncertain": False})  # an audit allows
    assert problems("review-message", {**body, "uncertain": True})  # an uncertain score is held for review
    assert problems("review-message", {**body, "decided_at": "2024-11-27T18:30:15"})  # naive
    assert problems("review-message", {k: v for k, v in body.items() if k != "media_status"})


def decision(kind: DecisionKind, categories: dict[str, bool], previous: str | None = None) -> ReviewDecision:
    violating = any(categories.values())
    return ReviewDecision(
        decision_id="5b0e3c2a-8f41-4d7e-b1c9-6a2d0e9f3b57" if previous is None
        else "7c3d1e20-4b5a-4f6e-8d9c-0a1b2c3d4e5f",
        item_id=7, event_id="0b9f4c1e-6d0a-4c53-9a55-2f1f0f6f2d11", content_id="photo-829311", reviewer="alice",
        kind=kind, outcome=Outcome.VIOLATING if violating else Outcome.NOT_VIOLATING, categories=categories,
        reason="nudity, clearly", previous_decision_id=previous, bulk_id=None,
        decided_at=datetime(2026, 12, 7, 10, 2, 11, tzinfo=timezone.utc),
    )


DECISIONS = {
    "decide-violating": (decision(DecisionKind.DECIDE, {"nsfw": True, "violent": False}), "2026-11-27.1"),
    "decide-clean": (decision(DecisionKind.DECIDE, {"nsfw": False}), None),
    "decide-after-appeal": (
        decision(DecisionKind.DECIDE, {"nsfw": False}, previous="5b0e3c2a-8f41-4d7e-b1c9-6a2d0e9f3b57"), "v2"),
    "override": (
        decision(DecisionKind.OVERRIDE, {"nsfw": True, "violent": True},
                 previous="5b0e3c2a-8f41-4d7e-b1c9-6a2d0e9f3b57"), "2026-11-27.1"),
}


@pytest.mark.parametrize("case", sorted(DECISIONS))
def test_decision_messages_validate_and_carry_exactly_the_listed_fields(case: str) -> None:
    made, policy_version = DECISIONS[case]
    body = roundtrip(decision_payload(made, source="uploads-eu", policy_version=policy_version))
    assert_valid("decision", body)
    assert set(body) == listed_fields("decision")
    assert "reviewer" not in body and "reason" not in body  # they stay inside the console


def test_the_decision_schema_holds_action_to_outcome_and_overrides_to_their_predecessor() -> None:
    made, version = DECISIONS["override"]
    body = roundtrip(decision_payload(made, source="uploads-eu", policy_version=version))
    assert problems("decision", {**body, "action": "restore"})
    assert problems("decision", {**body, "previous_decision_id": None})
    assert problems("decision", {**body, "decision_id": "5b0e3c2a"})
    with pytest.raises(ValueError, match="escalation"):
        decision_payload(replace(made, kind=DecisionKind.ESCALATE, outcome=Outcome.ESCALATED), source="s",
                         policy_version=None)


OWN_HEADERS = [("content-type", b"application/json"), ("traceparent", b"00-abc-def-01")]
DEAD_REASONS = [
    events.REASON_EMPTY, events.REASON_TOO_LARGE, events.REASON_INVALID_JSON, events.REASON_UNSUPPORTED_VERSION,
    events.REASON_INVALID_EVENT, REASON_EVENT_ID_CONFLICT, REASON_UNSTORABLE, review_outcome.REASON_INVALID_OUTCOME,
]


def dead_letter(reason: str, value: bytes = b'{"schema_version": 9}', detail: str = "why") -> Any:
    return dead_letter_message("dlq", key=b"content-1", value=value, headers=list(OWN_HEADERS), reason=reason,
                               detail=detail, source_topic="images", partition=3, offset=1234567)


@pytest.mark.parametrize("reason", DEAD_REASONS)
def test_dead_letter_headers_validate_for_every_reason(reason: str) -> None:
    headers = headers_object(dead_letter(reason, detail="x" * 5000).headers)
    assert_valid("dead-letter-headers", headers)
    assert {"content-type", "traceparent"} <= set(headers)  # the record's own headers are kept
    assert {name for name in headers if name.startswith("dlq.")} == set(load_schema("dead-letter-headers")["required"])


@pytest.mark.parametrize("reason", [events.REASON_TOO_LARGE, events.REASON_INVALID_EVENT])
def test_prefix_dead_letters_validate_with_the_original_size_and_hash(reason: str) -> None:
    big = dead_letter(reason, value=b"x" * (DEAD_LETTER_PREFIX_BYTES * 3))
    cut = fit(big, limit=DEAD_LETTER_PREFIX_BYTES * 2)
    assert cut is not big
    headers = headers_object(cut.headers)
    assert_valid("dead-letter-headers", headers)
    assert headers["dlq.original.size"] == str(DEAD_LETTER_PREFIX_BYTES * 3)
    assert ("dlq.original.reason" in headers) == (reason != events.REASON_TOO_LARGE)
    documented = listed_fields("dead-letter-headers")
    assert {name for name in headers if name.startswith("dlq.")} <= documented


def test_a_prefix_dead_letter_that_drops_the_records_own_headers_validates() -> None:
    huge_headers = [("blob", b"y" * (DEAD_LETTER_PREFIX_BYTES + 1))]
    message = dead_letter_message("dlq", key=None, value=b"z" * 10, headers=huge_headers, reason="invalid_json",
                                  detail="d", source_topic="images", partition=0, offset=0)
    headers = headers_object(truncated_dead_letter(message, "refused by the broker").headers)
    assert headers["dlq.headers_dropped"] == "true" and "blob" not in headers
    assert_valid("dead-letter-headers", headers)


def test_the_dead_letter_schema_refuses_what_the_code_never_sends() -> None:
    headers = headers_object(dead_letter(events.REASON_INVALID_JSON).headers)
    assert problems("dead-letter-headers", {**headers, "dlq.reason": "oops"})
    assert problems("dead-letter-headers", {**headers, "dlq.source.offset": "-1"})
    assert problems("dead-letter-headers", {**headers, "dlq.original.size": "10"})  # without its hash
    assert problems("dead-letter-headers", {**headers, "dlq.original.size": "10", "dlq.original.sha256": "0" * 64})


# Built as the review tool would (decided_at is ISO text: the model refuses anything else, datetimes too).
OUTCOMES = {
    "confirmed": ReviewOutcome(schema_version=1, event_id="e-1", outcome="confirmed",
                               decided_at=datetime(2026, 11, 28, 9, 12, tzinfo=timezone.utc).isoformat()),
    "overturned-other": ReviewOutcome(schema_version=1, event_id="e-" + "9" * 253, outcome="overturned",
                                      category="violent", reviewer="alice",
                                      decided_at=datetime(2026, 11, 28, 11, 12, 0, 5, tzinfo=CEST).isoformat()),
}


@pytest.mark.parametrize("case", sorted(OUTCOMES))
def test_review_outcomes_as_the_review_tool_writes_them_validate(case: str) -> None:
    body = json.loads(OUTCOMES[case].to_json())
    assert_valid("review-outcome", body)
    assert parse_outcome(OUTCOMES[case].to_json()) == OUTCOMES[case]


def test_image_events_as_the_producer_builds_them_validate() -> None:
    built = [
        image_event(content_id="photo-1", source="uploads-eu", image_url="https://cdn.example.com/1.jpg"),
        image_event(content_id="photo-2", source="uploads-eu", image_url="file:///srv/images/2.png",
                    event_id="e-2", uploaded_at=UPLOADED),
        image_event(content_id="photo-3", source="uploads-eu", image_bytes=b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
    ]
    for event in built:
        assert_valid("image-event", roundtrip(event))
        parse_event(json.dumps(event).encode())
        assert set(event) <= listed_fields("image-event")
    assert re.fullmatch(r"[0-9a-f-]{36}", built[0]["event_id"])  # a generated uuid4


# --- what the code accepts agrees with the schema ------------------------------------------------------

BASE_EVENT = {
    "schema_version": 1, "event_id": "0b9f4c1e-6d0a-4c53-9a55-2f1f0f6f2d11", "content_id": "photo-829311",
    "source": "uploads-eu", "uploaded_at": "2026-11-27T16:58:06Z", "image_url": "https://cdn.example.com/u/1.jpg",
}
INLINE = base64.b64encode(b"\xff\xd8\xff\xe0 not really a jpeg").decode()
DROP = object()  # a field to leave out


def event_with(**changes: Any) -> dict[str, Any]:
    merged = {**BASE_EVENT, **changes}
    return {name: value for name, value in merged.items() if value is not DROP}


VALID_EVENTS = {
    "url": event_with(),
    "http": event_with(image_url="http://cdn.example.com/u/1.jpg"),
    "upper-case scheme": event_with(image_url="HTTPS://cdn.example.com/u/1.jpg"),
    "file": event_with(image_url="file:///srv/images/1.jpg"),
    "file on localhost": event_with(image_url="file://localhost/srv/images/1.jpg"),
    "inline": event_with(image_url=DROP, image_base64=INLINE),
    "inline wrapped": event_with(image_url=DROP, image_base64=INLINE[:8] + "\n" + INLINE[8:] + "\n"),
    "inline empty": event_with(image_url=DROP, image_base64=""),  # valid: an error verdict, not_an_image
    "offset": event_with(uploaded_at="2026-11-27T18:58:06.250+02:00"),
    "nanoseconds": event_with(uploaded_at="2026-11-27T16:58:06.123456789Z"),
    "lower-case t and z": event_with(uploaded_at="2026-11-27t16:58:06z"),
    "unknown fields": event_with(uploader={"id": 7}, tags=["a"]),
    "longest ids": event_with(event_id="e" * 255, content_id="c" * 255, source="s" * 128),
    "non-ascii ids": event_with(event_id="événement-✓", content_id="写真-1"),
    "longest url": event_with(image_url="https://x.example/" + "a" * (4096 - 18)),
}

INVALID_EVENTS = {
    "version as text": event_with(schema_version="1"),
    "version true": event_with(schema_version=True),
    "version 2": event_with(schema_version=2),
    "version 0": event_with(schema_version=0),
    "no version": event_with(schema_version=DROP),
    "no event_id": event_with(event_id=DROP),
    "no content_id": event_with(content_id=DROP),
    "no source": event_with(source=DROP),
    "no uploaded_at": event_with(uploaded_at=DROP),
    "event_id a number": event_with(event_id=42),
    "content_id null": event_with(content_id=None),
    "source a list": event_with(source=["a"]),
    "empty event_id": event_with(event_id=""),
    "event_id too long": event_with(event_id="e" * 256),
    "content_id too long": event_with(content_id="c" * 256),
    "source too long": event_with(source="s" * 129),
    "NUL in event_id": event_with(event_id="e\x001"),
    "NUL in content_id": event_with(content_id="\x00"),
    "NUL in source": event_with(source="up\x00loads"),
    "NUL in url": event_with(image_url="https://x.example/\x00.jpg"),
    "url too long": event_with(image_url="https://x.example/" + "a" * 4096),
    "ftp url": event_with(image_url="ftp://x.example/1.jpg"),
    "url without scheme": event_with(image_url="cdn.example.com/1.jpg"),
    "url a number": event_with(image_url=7),
    "no image": event_with(image_url=DROP),
    "both images": event_with(image_base64=INLINE),
    "base64 not text": event_with(image_url=DROP, image_base64=123),
    "base64 alphabet": event_with(image_url=DROP, image_base64="a-k_"),
    "naive timestamp": event_with(uploaded_at="2026-11-27T16:58:06"),
    "a date only": event_with(uploaded_at="2026-11-27"),
    "hour 25": event_with(uploaded_at="2026-11-27T25:58:06Z"),
    "not a date": event_with(uploaded_at="yesterday"),
}

# Refused by the reader, but beyond what JSON Schema can say: the schema accepts them.
CODE_ONLY_REFUSALS = {
    "base64 padding": event_with(image_url=DROP, image_base64="aGk"),  # decodability is not a pattern
    "file url with a host": event_with(image_url="file://files.example.com/srv/1.jpg"),
    "version 1.0": event_with(schema_version=1.0),  # JSON Schema's 1.0 is the integer 1
}

# Accepted by the reader although the contract (README, schema) says otherwise: pydantic's lax parsing.
# Producers must not rely on them; they are listed so that tightening the reader shows up here.
READER_LENIENCE = {
    "unix timestamp": event_with(uploaded_at=1764262686),
    "time without seconds": event_with(uploaded_at="2026-11-27T16:58Z"),
    "space for T": event_with(uploaded_at="2026-11-27 16:58:06Z"),
    "offset without colon": event_with(uploaded_at="2026-11-27T16:58:06+0000"),
    "null beside the other image": event_with(image_url=None, image_base64=INLINE),
    "leading space in url": event_with(image_url=" https://cdn.example.com/u/1.jpg"),
}


def reader_refuses(raw: bytes, parse: Any = parse_event) -> str | None:
    try:
        parse(raw)
    except EventError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("case", sorted(VALID_EVENTS))
def test_valid_events_are_accepted_by_the_reader_and_the_schema(case: str) -> None:
    event = VALID_EVENTS[case]
    assert reader_refuses(json.dumps(event).encode()) is None
    assert_valid("image-event", event)


@pytest.mark.parametrize("case", sorted(INVALID_EVENTS))
def test_invalid_events_are_refused_by_the_reader_and_the_schema(case: str) -> None:
    event = INVALID_EVENTS[case]
    assert reader_refuses(json.dumps(event).encode()) in (events.REASON_INVALID_EVENT,
                                                          events.REASON_UNSUPPORTED_VERSION)
    assert problems("image-event", event)


@pytest.mark.parametrize("case", sorted(CODE_ONLY_REFUSALS))
def test_what_only_the_reader_can_refuse(case: str) -> None:
    event = CODE_ONLY_REFUSALS[case]
    assert reader_refuses(json.dumps(event).encode()) == events.REASON_INVALID_EVENT
    assert not problems("image-event", event)


def test_size_limits_are_the_readers_alone() -> None:
    # A message over the consumer's limit (32 MiB by default) is too_large whatever the schema says.
    event = event_with(image_url=DROP, image_base64=INLINE * 10)
    assert not problems("image-event", event)
    assert reader_refuses(json.dumps(event).encode(), lambda raw: parse_event(raw, max_bytes=100)) == "too_large"


@pytest.mark.parametrize("case", sorted(READER_LENIENCE))
def test_reader_lenience_beyond_the_contract_is_known(case: str) -> None:
    event = READER_LENIENCE[case]
    assert problems("image-event", event)
    assert reader_refuses(json.dumps(event).encode()) is None, "the reader refuses it now: move it to INVALID_EVENTS"


BASE_OUTCOME = {"schema_version": 1, "event_id": "0b9f4c1e-6d0a-4c53-9a55-2f1f0f6f2d11", "outcome": "confirmed",
                "decided_at": "2026-11-28T09:12:00Z"}


def outcome_with(**changes: Any) -> dict[str, Any]:
    merged = {**BASE_OUTCOME, **changes}
    return {name: value for name, value in merged.items() if value is not DROP}


VALID_OUTCOMES = {
    "confirmed": outcome_with(),
    "overturned, another category": outcome_with(outcome="overturned", category="violent", reviewer="alice"),
    "offset": outcome_with(decided_at="2026-11-28T10:12:00.5+01:00"),
    "unknown fields": outcome_with(queue="nsfw", note="seen twice"),
    "longest": outcome_with(event_id="e" * 255, reviewer="r" * 255, category="c" + "a" * 62),
}

INVALID_OUTCOMES = {
    "version as text": outcome_with(schema_version="1"),
    "version 2": outcome_with(schema_version=2),
    "no event_id": outcome_with(event_id=DROP),
    "no outcome": outcome_with(outcome=DROP),
    "no decided_at": outcome_with(decided_at=DROP),
    "unknown outcome": outcome_with(outcome="maybe"),
    "empty event_id": outcome_with(event_id=""),
    "event_id too long": outcome_with(event_id="e" * 256),
    "reviewer empty": outcome_with(reviewer=""),
    "reviewer too long": outcome_with(reviewer="r" * 256),
    "category upper case": outcome_with(category="Violent"),
    "category too long": outcome_with(category="c" * 64),
    "decided_at a number": outcome_with(decided_at=1764321120),
    "naive decided_at": outcome_with(decided_at="2026-11-28T09:12:00"),
    "event_id a number": outcome_with(event_id=5),
}

# Accepted by the reader beyond the contract (see READER_LENIENCE).
OUTCOME_READER_LENIENCE = {
    "null category": outcome_with(category=None),
    "null reviewer": outcome_with(reviewer=None),
    "time without seconds": outcome_with(decided_at="2026-11-28T09:12Z"),
}


@pytest.mark.parametrize("case", sorted(VALID_OUTCOMES))
def test_valid_outcomes_are_accepted_by_the_reader_and_the_schema(case: str) -> None:
    assert reader_refuses(json.dumps(VALID_OUTCOMES[case]).encode(), parse_outcome) is None
    assert_valid("review-outcome", VALID_OUTCOMES[case])


@pytest.mark.parametrize("case", sorted(INVALID_OUTCOMES))
def test_invalid_outcomes_are_refused_by_the_reader_and_the_schema(case: str) -> None:
    assert reader_refuses(json.dumps(INVALID_OUTCOMES[case]).encode(), parse_outcome) in (
        review_outcome.REASON_INVALID_OUTCOME, events.REASON_UNSUPPORTED_VERSION)
    assert problems("review-outcome", INVALID_OUTCOMES[case])


@pytest.mark.parametrize("case", sorted(OUTCOME_READER_LENIENCE))
def test_outcome_reader_lenience_beyond_the_contract_is_known(case: str) -> None:
    event = OUTCOME_READER_LENIENCE[case]
    assert problems("review-outcome", event)
    assert reader_refuses(json.dumps(event).encode(), parse_outcome) is None, "move it to INVALID_OUTCOMES"


def test_an_outcome_version_1_0_is_refused_by_the_reader_only() -> None:
    assert reader_refuses(json.dumps(outcome_with(schema_version=1.0)).encode(), parse_outcome) == "invalid_outcome"
    assert not problems("review-outcome", outcome_with(schema_version=1.0))


# --- the README's examples ------------------------------------------------------------------------------

README_EXAMPLES = {
    "### Image event": "image-event",
    "### Review message": "review-message",
    "### Review outcome": "review-outcome",
    "### Decision message": "decision",
}


def readme_json_blocks(heading: str) -> list[Any]:
    text = (REPO / "README.md").read_text()
    start = text.index(heading + " ")
    end = text.index("\n### ", start + 1)
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text[start:end], re.DOTALL)]


@pytest.mark.parametrize("heading", sorted(README_EXAMPLES))
def test_the_readme_examples_validate_against_their_schemas(heading: str) -> None:
    name = README_EXAMPLES[heading]
    blocks = readme_json_blocks(heading)
    assert blocks, f"no json example under {heading}"
    for block in blocks:
        assert_valid(name, block)
        if name in ("review-message", "decision"):
            assert set(block) == listed_fields(name)  # the example shows every field


def test_the_readme_links_every_schema() -> None:
    text = (REPO / "README.md").read_text()
    for name in MESSAGES:
        assert f"(schemas/{name}.v1.json)" in text
