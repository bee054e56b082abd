"""Delivering a scored batch: persist verdicts, publish review and dead-letter messages, flush.

These are steps 1-3 of the delivery guarantee; step 4, the offset commit, belongs to the consumer's own
thread (`Worker`), because a kafka-python consumer must only be used from one thread. Each step starts
only when the one before succeeded, so a crash anywhere leaves the batch uncommitted and redelivered.

In transactional mode, steps 2-4 of a batch with messages to publish are one Kafka transaction (the
producer sends the offsets with the consumer's group metadata); step 1 stays outside it, idempotent.
"""

from __future__ import annotations

import hashlib
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
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    RecordListTooLargeError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata

from consumers.messages import OutgoingMessage, dead_letter_message, header, review_message
from moderation.events import REASON_TOO_LARGE
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
# A dead letter that cannot carry the original bytes (over the producer's max_request_size, or refused by
# a broker whose message.max.bytes is lower) carries this much of them, with the size and hash in headers.
DEAD_LETTER_PREFIX_BYTES = 64 * 1024
_RECORD_OVERHEAD_BYTES = 1024  # batch and record framing, on top of key, value and headers
# The broker refuses the message for its size: resending it unchanged can never succeed.
_REFUSED_FOR_SIZE = (MessageSizeTooLargeError, RecordListTooLargeError)
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
    # Transactional mode: the group rebalanced under the batch and its transaction was aborted. Nothing of
    # it is committed (the partitions' new owner redelivers it): not to be committed nor counted as done.
    fenced: bool = False
    truncated: int = 0  # dead letters that carry a prefix of the original bytes (too large to forward)
    reviews_published: int = 0  # review messages sent (a repeat of an acknowledged verdict sends none)
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


def message_size(message: OutgoingMessage) -> int:
    """What the producer counts against max_request_size, near enough: key, value, headers, framing."""
    headers = sum(len(name) + len(value or b"") for name, value in message.headers)
    return len(message.key or b"") + len(message.value) + headers + _RECORD_OVERHEAD_BYTES


def is_dead_letter(message: OutgoingMessage) -> bool:
    return header(message.headers, "dlq.reason") is not None


def truncated_dead_letter(message: OutgoingMessage, why: str) -> OutgoingMessage:
    """`message` (a dead letter) with a prefix of its value instead of all of it, reason `too_large`.

    Headers say what was cut: `dlq.original.size` and `dlq.original.sha256` of the whole value (so it can be
    matched with the producer's copy), and the original reason when it was another. The record's own
    headers are kept unless they alone are too large to forward.
    """
    original = message.value
    reason = header(message.headers, "dlq.reason") or REASON_TOO_LARGE
    detail = header(message.headers, "dlq.detail") or ""
    own = [(name, value) for name, value in message.headers if not name.startswith("dlq.")]
    kept = [(name, value) for name, value in message.headers if name.startswith("dlq.") and name not in (
        "dlq.reason", "dlq.detail")]
    if sum(len(name) + len(value or b"") for name, value in own) > DEAD_LETTER_PREFIX_BYTES:
        own = []
        kept.append(("dlq.headers_dropped", b"true"))
    note = f"{why}; this dead letter carries its first {min(len(original), DEAD_LETTER_PREFIX_BYTES)} bytes"
    if reason != REASON_TOO_LARGE:
        kept.append(("dlq.original.reason", reason.encode()))
    extra = [
        ("dlq.reason", REASON_TOO_LARGE.encode()),
        ("dlq.detail", f"{detail}; {note}"[:2000].encode(errors="replace")),
        ("dlq.original.size", str(len(original)).encode()),
        ("dlq.original.sha256", hashlib.sha256(original).hexdigest().encode()),
    ]
    return OutgoingMessage(
        topic=message.topic,
        key=(message.key or b"")[:DEAD_LETTER_PREFIX_BYTES] or None,
        value=original[:DEAD_LETTER_PREFIX_BYTES],
        headers=[*own, *kept, *extra],
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
        records: Mapping[int, ConsumerRecord],
        offsets: Mapping[TopicPartition, int] | None = None,
        group: Any = None,
    ) -> None:
        """Steps 1-3 for one batch. `records` maps each verdict's position to its record, so an event whose
        event_id turns out to be taken by other content (or whose verdict the database rejects) can be
        dead-lettered with its original bytes; a verdict without its record is a programming error,
        refused before anything is written rather than letting such an event vanish.
        In transactional mode, `offsets` and the consumer's `group` metadata let step 4 join the
        transaction (then `result.offsets_committed` is set)."""
        # Step 1: write every verdict in one database transaction (idempotent on event_id). What comes
        # back is what is stored: for a redelivered event, the row written the first time. Repeats of
        # one event id inside the batch come back as the same stored verdict: act on it once.
        if unmatched := [i for i in range(len(verdicts)) if i not in records]:
            raise ValueError(f"verdicts at positions {unmatched[:5]} have no record to dead-letter from")
        started = time.perf_counter()
        saved, unstorable = self._save(verdicts, records)
        stored = list({v.event_id: v for v in saved if v is not None}.values())
        result.persist_s = time.perf_counter() - started
        # An event_id already stored for another image: this event's image was never checked, and the
        # stored verdict is not about it. Dead-letter it (never silently dropped) and act on the stored one.
        conflicts = [
            dead_letter_for(records[i], EventError(REASON_EVENT_ID_CONFLICT, conflict), self.dead_letter_topic)
            for i, (attempt, kept) in enumerate(zip(verdicts, saved, strict=True))
            if kept is not None and (conflict := _conflict(attempt, kept))
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
        # Step 2: publish flagged verdicts to the review topic and bad events to the dead-letter topic. A
        # verdict whose review message was acknowledged before (the event re-sent, or a conflicting event
        # under its id) is not published again.
        flagged = [v for v in stored if v.flagged]
        published = self.store.reviews_published([v.event_id for v in flagged]) if flagged else set()
        reviews = [review_message(self.review_topic, v) for v in flagged if v.event_id not in published]
        limit = int(self.producer.config.get("max_request_size", 1024 * 1024))
        outgoing = [*reviews, *(self._fit(m, limit) for m in dead_letters)]
        result.truncated = sum(header(m.headers, "dlq.original.size") is not None for m in outgoing)
        if self.transactional and outgoing and offsets is not None and group is not None:
            # Steps 2-4 as one Kafka transaction: the messages and the batch's offsets commit together or
            # not at all, so read_committed consumers of the review topic see each message once.
            try:
                self._publish_in_transaction(outgoing, offsets, group)
            except _GROUP_MOVED_ON as exc:
                # The group rebalanced under this batch: its messages were aborted with the transaction
                # and the partitions' new owner redelivers it. Nothing to commit, nothing done here.
                log.warning("transaction fenced by a rebalance; the new owner redelivers the batch", error=str(exc))
                result.fenced = True
            else:
                result.offsets_committed = True
        else:
            # A batch with nothing to publish has nothing to make atomic: its offsets are committed by
            # the consumer, in both modes.
            # Step 3: flush the producer and check every send was acknowledged (raises if one failed).
            self._publish(outgoing)
        result.publish_s = time.perf_counter() - started
        if result.fenced:
            return
        result.reviews_published = len(reviews)
        self.on_step(STEP_FLUSHED, result)
        # Acknowledged: a repeat of these events publishes nothing more. A crash between the flush above
        # and this record is the one window in which a review message can be sent twice.
        if reviews:
            self.store.mark_reviews_published([v.event_id for v in flagged if v.event_id not in published])
        # Step 4, committing result.offsets, happens on the consumer's thread (Worker._commit_finished),
        # unless the transaction above carried them.

    @staticmethod
    def _fit(message: OutgoingMessage, limit: int) -> OutgoingMessage:
        """A dead letter the producer would refuse for its size, cut down to one it can send."""
        if message_size(message) <= limit:
            return message
        log.warning("dead letter too large to forward whole; sending a prefix", size=len(message.value), limit=limit)
        return truncated_dead_letter(message, f"the message ({len(message.value)} bytes) is over the "
                                     f"producer's max_request_size ({limit} bytes)")

    @staticmethod
    def _shrunk(outgoing: Sequence[OutgoingMessage], exc: KafkaError) -> list[OutgoingMessage] | None:
        """After the broker refused a message for its size: the dead letters cut to a prefix, or None when
        there is nothing left to cut (the refusal then stands)."""
        shrunk = [
            truncated_dead_letter(m, f"the broker refused it as too large ({type(exc).__name__})")
            if is_dead_letter(m) and len(m.value) > DEAD_LETTER_PREFIX_BYTES
            else m
            for m in outgoing
        ]
        return shrunk if shrunk != list(outgoing) else None

    def _publish(self, outgoing: Sequence[OutgoingMessage]) -> None:
        """Send, flush and check every message; a dead letter the broker refuses for its size is sent
        again as a prefix, so one oversized message never holds its partition."""
        producer = self.producer
        futures = [(m, producer.send(m.topic, key=m.key, value=m.value, headers=m.headers)) for m in outgoing]
        producer.flush(timeout=SEND_TIMEOUT_S)
        retry: list[OutgoingMessage] = []
        for message, future in futures:
            try:
                future.get(timeout=SEND_TIMEOUT_S)
            except _REFUSED_FOR_SIZE as exc:
                shrunk = self._shrunk([message], exc)
                if shrunk is None:
                    raise
                log.warning("the broker refused a dead letter as too large; sending a prefix", error=str(exc))
                retry.extend(shrunk)
        if retry:
            self._publish(retry)

    def _publish_in_transaction(
        self, outgoing: Sequence[OutgoingMessage], offsets: Mapping[TopicPartition, int], group: Any
    ) -> None:
        try:
            self._in_transaction(outgoing, offsets, group)
        except _REFUSED_FOR_SIZE as exc:  # the transaction was aborted: run it again with the prefixes
            shrunk = self._shrunk(outgoing, exc)
            if shrunk is None:
                raise
            log.warning("the broker refused a dead letter as too large; sending a prefix", error=str(exc))
            self._in_transaction(shrunk, offsets, group)

    def _save(
        self, verdicts: Sequence[Verdict], records: Mapping[int, ConsumerRecord]
    ) -> tuple[list[Verdict | None], list[OutgoingMessage]]:
        """Save the batch; if the database rejects its data (not a connection problem), find the verdicts
        it rejects by saving them one at a time and dead-letter their events (`unstorable`), so one bad
        row cannot hold its partition for ever. Returns, per input verdict, what is stored (None for the
        rejected) and the dead letters. Connection errors propagate: the batch is retried whole."""
        try:
            return list(self.store.save_batch(verdicts)), []
        except StorageError as exc:
            if not exc.permanent:
                raise
            log.error("the database rejects part of a batch; saving it verdict by verdict", error=str(exc))
        saved: list[Verdict | None] = []
        unstorable: list[OutgoingMessage] = []
        for i, verdict in enumerate(verdicts):
            try:
                saved.extend(self.store.save_batch([verdict]))
            except StorageError as exc:
                if not exc.permanent:
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
