"""Delivery's edges: review messages acknowledged once, oversized dead letters, fenced batches, no vanishing.

The pipeline tests run against the real broker and databases; the size-refusal and fencing cases use a
producer double, because what they check is Delivery's own logic for errors this broker cannot be made to
return on demand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import IllegalGenerationError, MessageSizeTooLargeError
from sqlalchemy import delete

from consumers.clients import make_producer
from consumers.dead_letters import DEAD_LETTER_PREFIX_BYTES, dead_letter_message
from consumers.delivery import Delivery, ScoredBatch
from consumers.messages import OutgoingMessage, header
from consumers.metrics import WorkerMetrics
from consumers.pipeline.items import Delivered
from consumers.pipeline.ledger import Ledger
from consumers.producer import file_event, send_events
from consumers.settings import Settings
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import review_publications_table
from moderation.testmodel import make_colour_image
from moderation.verdict import Verdict, VerdictStatus
from tests.support.kafka import PipelineEnv, drain


def red_event(tmp_path: Path, name: str, **fields: Any) -> dict[str, Any]:
    path = tmp_path / f"{name}.png"
    make_colour_image("red", (120, 90), seed=len(name)).save(path, "PNG")
    return {**file_event(path, source="uploader", content_id=name), **fields}


def event_ids(messages: list[Any]) -> list[str | None]:
    return [header(m.headers, "event_id") for m in messages]


@pytest.mark.kafka
def test_a_resent_and_a_conflicting_event_publish_no_second_review_message(
    pipeline_env: Any, database_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(database_url, max_size=4, max_wait_ms=100)
    first = red_event(tmp_path, "photo-1")
    produced = env.produce([first])
    drain(env, database_url, scorer, produced)
    # Later, in batches of their own: the same event re-sent, then another image under its event_id.
    produced += env.produce([dict(first)])
    drain(env, database_url, scorer, produced)
    produced += env.produce([red_event(tmp_path, "photo-2", event_id=first["event_id"])])
    store = drain(env, database_url, scorer, produced)
    assert store.count() == 1
    assert event_ids(env.read(env.settings.kafka.review_topic)) == [first["event_id"]]
    dead = env.read(env.settings.kafka.dead_letter_topic)
    assert [header(d.headers, "dlq.reason") for d in dead] == ["event_id_conflict"]


@pytest.mark.kafka
def test_a_verdict_stored_without_its_acknowledgement_is_published_again_once(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    """The crash window: verdict stored and message sent, the acknowledgement not recorded."""
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=4, max_wait_ms=100)
    first = red_event(tmp_path, "photo-1")
    produced = env.produce([first])
    store = drain(env, sqlite_url, scorer, produced)
    assert store.reviews_published([first["event_id"]]) == {first["event_id"]}
    with store.engine.begin() as conn:
        conn.execute(delete(review_publications_table))
    produced += env.produce([dict(first), dict(first)])
    drain(env, sqlite_url, scorer, produced)
    produced += env.produce([dict(first)])
    drain(env, sqlite_url, scorer, produced)
    assert event_ids(env.read(env.settings.kafka.review_topic)) == [first["event_id"]] * 2


@pytest.mark.kafka
def test_an_input_message_too_large_to_forward_is_dead_lettered_as_a_prefix(
    pipeline_env: Any, sqlite_url: str, scorer: Any
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=4, max_wait_ms=100)
    huge = b"x" * (33 * 1024 * 1024)  # over the event limit (32 MiB) and the worker producer's 32 MiB
    producer = make_producer(env.settings, max_request_size=40 * 1024 * 1024)
    try:
        produced = send_events(producer, env.settings.kafka.input_topic, [huge])
    finally:
        producer.close(timeout=10)
    drain(env, sqlite_url, scorer, produced)  # returns only once the group committed past it
    dead = env.read(env.settings.kafka.dead_letter_topic)
    assert len(dead) == 1
    letter = dead[0]
    assert header(letter.headers, "dlq.reason") == "too_large"
    assert letter.value == huge[:DEAD_LETTER_PREFIX_BYTES]
    assert header(letter.headers, "dlq.original.size") == str(len(huge))
    assert header(letter.headers, "dlq.original.sha256") == hashlib.sha256(huge).hexdigest()
    assert "max_request_size" in (header(letter.headers, "dlq.detail") or "")


class Sent:
    """kafka-python's send future: `get` returns the metadata or raises the send's error."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    """Acknowledges sends at once; `refuse(message)` may return an error to fail its future with."""

    def __init__(self, refuse: Callable[[bytes], Exception | None] = lambda value: None) -> None:
        self.config = {"max_request_size": 32 * 1024 * 1024}
        self.refuse = refuse
        self.sent: list[tuple[str, bytes]] = []
        self.calls: list[str] = []

    def send(self, topic: str, *, key: bytes | None, value: bytes, headers: list[Any]) -> Sent:
        error = self.refuse(value)
        if error is None:
            self.sent.append((topic, value))
        return Sent(error)

    def flush(self, timeout: float) -> None:
        self.calls.append("flush")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        raise IllegalGenerationError("the group moved on")

    def commit_transaction(self) -> None:
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")


def record(value: bytes, offset: int = 0) -> ConsumerRecord:
    return ConsumerRecord(
        topic="images", partition=0, leader_epoch=-1, offset=offset, timestamp=0, timestamp_type=0,
        key=None, value=value, headers=[], checksum=None, serialized_key_size=-1,
        serialized_value_size=len(value), serialized_header_size=-1,
    )


def delivery_for(url: str, producer: FakeProducer, **kafka: Any) -> tuple[Delivery, VerdictStore]:
    upgrade(url)
    store = VerdictStore(create_engine_for(url))
    settings = Settings(kafka={"review_topic": "review", "dead_letter_topic": "dlq", **kafka})
    return Delivery(store=store, producer=producer, kafka=settings.kafka, on_step=lambda *_: None), store


def dead_letter(value: bytes) -> OutgoingMessage:
    return dead_letter_message(
        "dlq", key=None, value=value, headers=[("trace", b"t-1")], reason="invalid_json", detail="not JSON",
        source_topic="images", partition=0, offset=7,
    )


def test_a_dead_letter_the_broker_refuses_for_its_size_is_sent_as_a_prefix(sqlite_url: str) -> None:
    # A broker whose message.max.bytes (1 MB by default on Kafka) is lower than the producer's limit.
    producer = FakeProducer(lambda value: MessageSizeTooLargeError() if len(value) > 1_000_000 else None)
    delivery, _ = delivery_for(sqlite_url, producer)
    big = b"{" * 2_000_000
    result = delivery.deliver(ScoredBatch(number=1, size=1, dead_letters=(dead_letter(big),)))
    assert producer.sent == [("dlq", big[:DEAD_LETTER_PREFIX_BYTES])]
    assert result.dead_lettered == 1


def test_a_refusal_that_no_prefix_can_fix_is_raised_not_looped(sqlite_url: str) -> None:
    producer = FakeProducer(lambda value: MessageSizeTooLargeError())
    delivery, _ = delivery_for(sqlite_url, producer)
    with pytest.raises(MessageSizeTooLargeError):
        delivery.deliver(ScoredBatch(number=1, size=1, dead_letters=(dead_letter(b"{" * 2_000_000),)))
    assert producer.sent == []


def flagged_verdict(event_id: str) -> Verdict:
    return Verdict(
        event_id=event_id, content_id="c-1", source="s", status=VerdictStatus.OK, flagged=True,
        top_category="red", action="review", scores={"red": 0.9}, best_prompt="a red picture",
        policy_version="v1", policy_hash="0" * 64, model_id="sha256:m", image_ref="https://x/y.png",
        image_sha256="1" * 64, uploaded_at=datetime.now(timezone.utc),
    )


def test_a_fenced_transaction_is_neither_committed_nor_acknowledged(sqlite_url: str) -> None:
    producer = FakeProducer()
    delivery, store = delivery_for(sqlite_url, producer, delivery_mode="transactional")
    verdict = flagged_verdict("e-1")
    payload = json.dumps({"event_id": "e-1"}).encode()
    offsets = {TopicPartition("images", 0): 1}
    batch = ScoredBatch(number=1, size=1, verdicts=(verdict,), records=(record(payload),), offsets=offsets)
    result = delivery.deliver(batch, group=object())
    assert result.fenced and not result.offsets_committed
    assert "abort" in producer.calls and "commit" not in producer.calls
    assert store.reviews_published(["e-1"]) == set()  # the new owner publishes it again, and records it

    metrics = WorkerMetrics()
    counted = Ledger(metrics)  # only the bookkeeping under test, no clients
    counted.dispatched()
    counted.settle(Delivered(1, result, offsets), commit_s=0.0)
    assert metrics.registry.get_sample_value("moderation_batches_fenced_total") == 1
    assert metrics.registry.get_sample_value("moderation_batch_size_images_count") == 0  # no batch counted
    assert counted.totals.verdicts == 0 and counted.committed_offsets == {}


def test_a_verdict_without_its_record_is_refused_before_anything_is_stored(sqlite_url: str) -> None:
    producer = FakeProducer()
    delivery, store = delivery_for(sqlite_url, producer)
    with pytest.raises(ValueError, match="no record"):
        delivery.deliver(ScoredBatch(number=1, size=1, verdicts=(flagged_verdict("e-1"),)))
    assert store.count() == 0 and producer.sent == []
