"""What a worker really publishes on the real broker validates against the published schemas.

The unit tests (tests/unit/test_message_schemas.py) check the builders; this one reads back what reached
the review and dead-letter topics after a worker ran over flagged, clean, broken-image and broken events.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumers.messages import header
from moderation.schemas import load_schema
from tests.support.events import corpus
from tests.support.kafka import PipelineEnv, drain
from tests.support.schemas import assert_valid, headers_object

pytestmark = pytest.mark.kafka


def test_review_and_dead_letter_messages_on_the_broker_validate(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=8)
    events, expected = corpus(tmp_path / "images", per_colour=2)  # file:// and inline, JPEG and PNG
    for event in events:
        if isinstance(event, dict):
            assert_valid("image-event", event)  # what went in follows the contract too
    produced = env.produce(events)
    drain(env, sqlite_url, scorer, produced)
    kafka = env.settings.kafka

    review = env.read(kafka.review_topic)
    assert len(review) == sum(1 for outcome in expected.values() if outcome in ("review", "block"))
    fields = set(load_schema("review-message")["properties"])
    for record in review:
        body = json.loads(record.value)
        assert_valid("review-message", body)
        assert set(body) == fields
        assert header(record.headers, "event_id") == body["event_id"]
        assert record.key.decode() == body["content_id"]

    dead = env.read(kafka.dead_letter_topic)
    for record in dead:
        headers = headers_object(list(record.headers))
        assert_valid("dead-letter-headers", headers)
        assert headers["dlq.source.topic"] == kafka.input_topic
    reasons = Counter(header(r.headers, "dlq.reason") for r in dead)
    assert reasons == {"invalid_json": 1, "invalid_event": 1, "unsupported_schema_version": 1}
