"""Delivering a scored batch: persist verdicts, publish review and dead-letter messages, flush.

These are steps 1-3 of the delivery guarantee; step 4, the offset commit, belongs to the consumer's own
thread (`Worker`), because a kafka-python consumer must only be used from one thread. Each step starts
only when the one before succeeded, so a crash anywhere leaves the batch uncommitted and redelivered.

In transactional mode, steps 2-4 of a batch with messages to publish are one Kafka transaction (the
producer sends the offsets with the consumer's group metadata); step 1 stays outside it, idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata

from consumers.messages import OutgoingMessage, dead_letter_message, review_message
from moderation.exceptions import EventError
from moderation.settings import KafkaSettings
from moderation.storage import StorageError, VerdictStore
from moderation.verdict import Verdict, VerdictStatus

log = structlog.get_logger("moderation.delivery")

# The steps, in order; `on_step` hears each one (tests and metrics hook in here).
STEP_PERSISTED = "persisted"
STEP_FLUSHED = "flushed"
STEP_COMMITTED = "committed"

SEND_TIMEOUT_S = 60.0
COUNTERS = ("records", "verdicts", "flagged", "errors", "dead_lettered", "conflicts", "unstorable")
REASON_EVENT_ID_CONFLICT = "event_id_conflict"
REASON_UNSTORABLE = "unstorable"  # the database rejects the verdict's data itself: retrying cannot help
# Errors that mean this member's generation is over: retrying the transaction cannot succeed.
_GROUP_MOVED_ON = (
    CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError, FencedInstanceIdError
)


@dataclass
class BatchResult:
    records: int = 0
    verdicts: int = 0
    flagged: int = 0
    errors: int = 0
    dead_lettered: int = 0
    conflicts: int = 0  # events whose event_id was already stored for other content: dead-lettered
    unstorable: int = 0  # events whose verdict the database rejects (a data error): dead-lettered
    offsets_committed: bool = False  # transactional mode: the transaction carried the offsets
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    stored: list[Verdict] = field(default_factory=list)  # the verdicts as stored, one per event id
    persist_s: float = 0.0
    publish_s: float = 0.0  # sending and flushing

    def add(self, other: BatchResult) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


StepHook = Callable[[str, BatchResult], None]


def dead_letter_for(record: ConsumerRecord, error: EventError, topic: str) -> OutgoingMessage:
    """The dead-letter copy of a record that breaks the event contract."""
    log.warning(
        "event dead-lettered", reason=error.reason, detail=error.detail[:300],
        topic=record.topic, partition=record.partition, offset=record.offset,
    )
    return dead_letter_message(
        topic, key=record.key, value=record.value, headers=list(record.headers or []),
        reason=error.reason, detail=error.detail, source_topic=record.topic,
        partition=record.partition, offset=record.offset,
    )


class Delivery:
    def __init__(
        self, *, store: VerdictStore, producer: KafkaProducer, kafka: KafkaSettings, on_step: StepHook
    ) -> None:
        self.store = store
        self.producer = producer
        self.review_topic = kafka.review_topic
        self.dead_letter_topic = kafka.dead_letter_topic
        self.transactional = kafka.delivery_mode == "transactional"
        self.on_step = on_step

    def deliver(
        self,
        verdicts: Sequence[Verdict],
        dead_letters: Sequence[OutgoingMessage],
        result: BatchResult,
        records: Mapping[int, ConsumerRecord] | None = None,
        offsets: Mapping[TopicPartition, int] | None = None,
        group: Any = None,
    ) -> None:
        """Steps 1-3 for one batch. `records` maps a verdict's position to its record, so an event whose
        event_id turns out to be taken by other content can be dead-lettered with its original bytes.
        In transactional mode, `offsets` and the consumer's `group` metadata let step 4 join the
        transaction (then `result.offsets_committed` is set)."""
        # Step 1: write every verdict in one database transaction (idempotent on event_id). What comes
        # back is what is stored: for a redelivered event, the row written the first time. Repeats of
        # one event id inside the batch come back as the same stored verdict: act on it once.
        started = time.perf_counter()
        saved, unstorable = self._save(verdicts, records)
        stored = list({v.event_id: v for v in saved if v is not None}.values())
        result.persist_s = time.perf_counter() - started
        # An event_id already stored for another image: this event's image was never checked, and the
        # stored verdict is not about it. Dead-letter it (never silently dropped) and act on the stored one.
        conflicts = [
            dead_letter_for(records[i], EventError(REASON_EVENT_ID_CONFLICT, conflict), self.dead_letter_topic)
            for i, (attempt, kept) in enumerate(zip(verdicts, saved, strict=True))
            if kept is not None and (conflict := _conflict(attempt, kept)) and records is not None and i in records
        ]
        dead_letters = [*dead_letters, *conflicts, *unstorable]
        result.unstorable = len(unstorable)
        result.stored = stored
        result.verdicts = len(stored)
        result.flagged = sum(v.flagged for v in stored)
        result.errors = sum(v.status is VerdictStatus.ERROR for v in stored)
        result.dead_lettered = len(dead_letters)
        result.conflicts = len(conflicts)
        self.on_step(STEP_PERSISTED, result)

        started = time.perf_counter()
        # Step 2: publish flagged verdicts to the review topic and bad events to the dead-letter topic.
        outgoing = [review_message(self.review_topic, v) for v in stored if v.flagged] + list(dead_letters)
        if self.transactional and outgoing and offsets is not None and group is not None:
            # Steps 2-4 as one Kafka transaction: the messages and the batch's offsets commit together or
            # not at all, so read_committed consumers of the review topic see each message once.
            try:
                self._in_transaction(outgoing, offsets, group)
            except _GROUP_MOVED_ON as exc:
                # The group rebalanced under this batch: its messages were aborted with the transaction
                # and the partitions' new owner redelivers it. Nothing to commit from here.
                log.warning("transaction fenced by a rebalance; the new owner redelivers the batch", error=str(exc))
            result.offsets_committed = True
        else:
            # A batch with nothing to publish has nothing to make atomic: its offsets are committed by
            # the consumer, in both modes.
            futures = [self.producer.send(m.topic, key=m.key, value=m.value, headers=m.headers) for m in outgoing]
            # Step 3: flush the producer and check every send was acknowledged (raises if one failed).
            self.producer.flush(timeout=SEND_TIMEOUT_S)
            for future in futures:
                future.get(timeout=SEND_TIMEOUT_S)
        result.publish_s = time.perf_counter() - started
        self.on_step(STEP_FLUSHED, result)
        # Step 4, committing result.offsets, happens on the consumer's thread (Worker._commit_finished),
        # unless the transaction above carried them.

    def _save(
        self, verdicts: Sequence[Verdict], records: Mapping[int, ConsumerRecord] | None
    ) -> tuple[list[Verdict | None], list[OutgoingMessage]]:
        """Save the batch; if the database rejects its data (not a connection problem), find the verdicts
        it rejects by saving them one at a time and dead-letter their events (`unstorable`), so one bad
        row cannot hold its partition for ever. Returns, per input verdict, what is stored (None for the
        rejected) and the dead letters. Connection errors propagate: the batch is retried whole."""
        try:
            return list(self.store.save_batch(verdicts)), []
        except StorageError as exc:
            if not exc.permanent or records is None:
                raise
            log.error("the database rejects part of a batch; saving it verdict by verdict", error=str(exc))
        saved: list[Verdict | None] = []
        unstorable: list[OutgoingMessage] = []
        for i, verdict in enumerate(verdicts):
            try:
                saved.extend(self.store.save_batch([verdict]))
            except StorageError as exc:
                if not exc.permanent or i not in records:
                    raise
                saved.append(None)
                unstorable.append(
                    dead_letter_for(records[i], EventError(REASON_UNSTORABLE, str(exc)), self.dead_letter_topic)
                )
        return saved, unstorable

    def _in_transaction(
        self, outgoing: Sequence[OutgoingMessage], offsets: Mapping[TopicPartition, int], group: Any
    ) -> None:
        producer = self.producer
        producer.begin_transaction()
        try:
            futures = [producer.send(m.topic, key=m.key, value=m.value, headers=m.headers) for m in outgoing]
            producer.flush(timeout=SEND_TIMEOUT_S)
            for future in futures:
                future.get(timeout=SEND_TIMEOUT_S)
            producer.send_offsets_to_transaction(
                {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}, group
            )
            producer.commit_transaction()
        except KafkaError:
            try:
                producer.abort_transaction()
            except KafkaError as exc:  # the producer is unusable: the retry gets a new one (Worker)
                log.warning("could not abort the transaction", error=str(exc))
            raise


def _conflict(attempt: Verdict, kept: Verdict) -> str:
    """Why `kept` (the stored verdict for attempt's event_id) is not about attempt's image; "" if it is.

    A redelivered event carries the same content id and image reference, so it never conflicts.
    """
    if attempt.content_id != kept.content_id:
        return f"event_id {attempt.event_id!r} is stored for content {kept.content_id!r}, not {attempt.content_id!r}"
    if attempt.image_ref != kept.image_ref:
        stored, this = kept.image_ref[:200], attempt.image_ref[:200]
        return f"event_id {attempt.event_id!r} is stored for image {stored!r}, not {this!r}"
    return ""
