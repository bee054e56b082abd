"""Delivering a scored batch: the four steps of the delivery guarantee, written once, in `Delivery.deliver`.

1. store the reviewer copies of the items sent to review, then persist the verdicts and commit the
database transaction, 2. publish review messages and dead letters, 3. flush the producer and check every
send, 4. commit the offsets. Each step starts only when the one before succeeded, so a crash anywhere
leaves the batch uncommitted and redelivered (a copy written before the crash is found and reused then).

In transactional mode, steps 2-4 of a batch with messages to publish are one Kafka transaction (the
producer sends the offsets with the consumer's group metadata); step 1 stays outside it, idempotent.
Otherwise step 4 is the consumer's to run, on its own thread (a kafka-python consumer must only be used
from one thread): see consumers/pipeline/ledger.py. `Delivery` owns its producer: it replaces it after a
broker error and closes it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from consumers import dead_letters
from consumers.dead_letters import dead_letter_for
from consumers.messages import OutgoingMessage, review_message
from consumers.publishing import SEND_TIMEOUT_S, Sends, flush_and_check, send_all
from consumers.reviewer_copies import ReviewerCopies
from consumers.settings import KafkaSettings
from consumers.transaction import Transaction
from moderation.exceptions import EventError
from moderation.policy import LoadedPolicy
from moderation.settings import MediaSettings
from moderation.storage import StorageError, VerdictStore
from moderation.verdict import Verdict, VerdictStatus

log = structlog.get_logger("moderation.delivery")

# The steps, in order; `on_step` hears each one (tests and metrics hook in here).
STEP_PERSISTED = "persisted"
STEP_FLUSHED = "flushed"
STEP_COMMITTED = "committed"

COUNTERS = ("records", "verdicts", "flagged", "errors", "dead_lettered", "conflicts", "unstorable")
REASON_EVENT_ID_CONFLICT = "event_id_conflict"
REASON_UNSTORABLE = "unstorable"  # the database rejects the verdict's data itself: retrying cannot help
# The broker refuses the message for its size: resending it unchanged can never succeed.
_REFUSED_FOR_SIZE = (MessageSizeTooLargeError, RecordListTooLargeError)


@dataclass(frozen=True)
class ScoredBatch:
    """One batch after scoring: what delivery persists, publishes and commits."""

    number: int  # orders batches for commits
    size: int  # records polled into the batch, the dead-lettered ones included
    verdicts: tuple[Verdict, ...] = ()
    records: tuple[ConsumerRecord, ...] = ()  # each verdict's record, position for position
    dead_letters: tuple[OutgoingMessage, ...] = ()  # records that broke the event contract
    offsets: Mapping[TopicPartition, int] = field(default_factory=dict)  # next offset per partition
    # The uploads' bytes, verdict for verdict, for the reviewer copies; None (or an empty tuple) where none
    # were kept: media off, or a verdict that does not go to review.
    originals: tuple[bytes | None, ...] = field(default=(), repr=False)
    # The policies the batch was decided under (shadows too): stored by hash with the first verdicts.
    policies: tuple[LoadedPolicy, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # An event whose event_id turns out to be taken by other content (or whose verdict the database
        # rejects) is dead-lettered with its original bytes: a verdict without its record is a programming
        # error, refused before anything is written rather than letting such an event vanish.
        if len(self.records) < len(self.verdicts):
            unmatched = list(range(len(self.records), len(self.verdicts)))
            raise ValueError(f"verdicts at positions {unmatched[:5]} have no record to dead-letter from")
        if len(self.records) > len(self.verdicts):
            raise ValueError(f"{len(self.records)} records for {len(self.verdicts)} verdicts")
        if self.originals and len(self.originals) != len(self.verdicts):
            raise ValueError(f"{len(self.originals)} uploads' bytes for {len(self.verdicts)} verdicts")


@dataclass
class BatchResult:
    """What delivering one batch did, filled in step by step (the `on_step` hooks see it grow)."""

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
    stored: list[Verdict] = field(default_factory=list)  # the verdicts as stored, one per event id
    media: Counter[str] = field(default_factory=Counter)  # reviewer copies by MediaStatus value
    media_s: float = 0.0  # making and storing the reviewer copies
    persist_s: float = 0.0
    publish_s: float = 0.0  # sending and flushing

    def add(self, other: BatchResult) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


StepHook = Callable[[str, BatchResult], None]


class Delivery:
    """Steps 1-4 for each batch, through a store and a producer; the producer is this object's from now on."""

    def __init__(
        self,
        *,
        store: VerdictStore,
        producer: KafkaProducer,
        kafka: KafkaSettings,
        on_step: StepHook,
        renew: Callable[[], KafkaProducer] | None = None,
        copies: ReviewerCopies | None = None,
    ) -> None:
        self.store = store
        # None: media off (every item sent to review gets media status `off`).
        self.copies = copies or ReviewerCopies(None, MediaSettings(enabled=False))
        self._producer = producer
        self._renew = renew  # makes the producer that replaces this one after a broker error (None: never)
        self.review_topic = kafka.review_topic
        self.dead_letter_topic = kafka.dead_letter_topic
        self.transactional = kafka.delivery_mode == "transactional"
        self.on_step = on_step

    @property
    def producer(self) -> KafkaProducer:
        """The producer in use (a broker error may have replaced the first one)."""
        return self._producer

    def deliver(self, batch: ScoredBatch, group: Any = None) -> BatchResult:
        """The delivery guarantee for one batch, each step only once the one before succeeded:

        1. store the reviewer copies of the verdicts that need review (a store that cannot be written
           fails the attempt: `MediaError`), then persist the verdicts, each with its copy's state, and
           commit the database transaction
        2. publish the review messages and the dead letters
        3. flush the producer and check every send
        4. commit the offsets: with the messages, in one Kafka transaction (transactional mode, a batch with
           messages, `group` the consumer's group metadata: `offsets_committed` is set), or else by the
           consumer's own thread once this returns (consumers/pipeline/ledger.py)

        Then the review messages are recorded as acknowledged, unless a rebalance fenced the transaction.
        """
        # Step 1. Store the reviewer copies, then persist the verdicts and commit the database transaction
        # (both idempotent: copies on the image's hash, verdicts on event_id).
        result, bad = self._persist(batch)
        started = time.perf_counter()
        reviews, outgoing = self._outgoing(result.stored, bad)
        transaction = Transaction.begin(self._producer, outgoing, batch.offsets, group, self.transactional)
        try:
            # Step 2. Publish flagged verdicts to the review topic and bad events to the dead-letter topic.
            sends = send_all(self._producer, outgoing)
            # Step 3. Flush the producer and check every send was acknowledged (raises if one failed).
            self._confirm(sends, transaction)
            # Step 4. Commit the offsets: in the Kafka transaction, else on the consumer's thread after this.
            result.offsets_committed = transaction.commit()
        except KafkaError as exc:
            result.fenced = transaction.abort(exc)  # re-raises unless a rebalance fenced the transaction
        result.publish_s = time.perf_counter() - started
        if not result.fenced:
            self._acknowledge(result, reviews)
        return result

    def renew_producer(self) -> None:
        """Publish the retry through a new producer: an idempotent producer whose producer id the broker no
        longer knows (a broker that lost its state) refuses every later send. The old one is closed without
        waiting; the retry sends the whole batch's messages again, under the same keys and event ids."""
        if self._renew is None:
            return
        try:
            producer = self._renew()
        except KafkaError as exc:  # the broker is still away: keep the old one until the next failure
            log.warning("no new producer yet", error=str(exc))
            return
        old, self._producer = self._producer, producer
        threading.Thread(target=_close_replaced, args=(old,), name="producer-close", daemon=True).start()
        log.warning("producer replaced after a broker error")

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the producer in use (what it still holds gets `timeout_s` to reach the broker)."""
        self.copies.close()
        self._producer.close(timeout=timeout_s)

    def _persist(self, batch: ScoredBatch) -> tuple[BatchResult, list[OutgoingMessage]]:
        """Step 1, and the dead letters it adds. What comes back is what is stored: for a redelivered
        event, the row written the first time; repeats of one event id in the batch are acted on once."""
        started = time.perf_counter()
        verdicts, media = self.copies.attach(batch.verdicts, batch.originals)  # before any verdict is written
        batch = replace(batch, verdicts=verdicts, originals=())
        media_s = time.perf_counter() - started
        started = time.perf_counter()
        saved, unstorable = self._save(batch)
        # The stored rows carry no media: their copy's state is this attempt's, unless the row is another image's.
        with_media = [
            replace(kept, media=attempt.media) if kept is not None and not _conflict(attempt, kept) else kept
            for attempt, kept in zip(batch.verdicts, saved, strict=True)
        ]
        stored = list({v.event_id: v for v in with_media if v is not None}.values())
        persist_s = time.perf_counter() - started
        # An event_id already stored for another image: this event's image was never checked, and the
        # stored verdict is not about it. Dead-letter it (never silently dropped) and act on the stored one.
        conflicts = [
            self._dead_letter(batch.records[i], REASON_EVENT_ID_CONFLICT, conflict)
            for i, (attempt, kept) in enumerate(zip(batch.verdicts, saved, strict=True))
            if kept is not None and (conflict := _conflict(attempt, kept))
        ]
        bad = [*batch.dead_letters, *conflicts, *unstorable]
        result = BatchResult(
            records=batch.size, verdicts=len(stored), flagged=sum(v.flagged for v in stored),
            errors=sum(v.status is VerdictStatus.ERROR for v in stored), dead_lettered=len(bad),
            conflicts=len(conflicts), unstorable=len(unstorable), stored=stored, persist_s=persist_s,
            media=media, media_s=media_s,
        )
        self.on_step(STEP_PERSISTED, result)
        return result, bad

    def _save(self, batch: ScoredBatch) -> tuple[list[Verdict | None], list[OutgoingMessage]]:
        """Save the batch; if the database rejects its data (not a connection problem), find the verdicts
        it rejects by saving them one at a time and dead-letter their events (`unstorable`), so one bad
        row cannot hold its partition for ever. Returns, per input verdict, what is stored (None for the
        rejected) and the dead letters. Connection errors propagate: the batch is retried whole."""
        try:
            return list(self.store.save_batch(batch.verdicts, batch.policies)), []
        except StorageError as exc:
            if not exc.permanent:
                raise
            log.error("the database rejects part of a batch; saving it verdict by verdict", error=str(exc))
        saved: list[Verdict | None] = []
        unstorable: list[OutgoingMessage] = []
        for verdict, record in zip(batch.verdicts, batch.records, strict=True):
            try:
                saved.extend(self.store.save_batch([verdict], batch.policies))
            except StorageError as exc:
                if not exc.permanent:
                    raise
                saved.append(None)
                unstorable.append(self._dead_letter(record, REASON_UNSTORABLE, str(exc)))
        return saved, unstorable

    def _dead_letter(self, record: ConsumerRecord, reason: str, detail: str) -> OutgoingMessage:
        return dead_letter_for(record, EventError(reason, detail), self.dead_letter_topic)

    def _outgoing(
        self, stored: Sequence[Verdict], bad: Sequence[OutgoingMessage]
    ) -> tuple[list[Verdict], list[OutgoingMessage]]:
        """Step 2's messages: a review message per verdict that needs review (flagged or audited), except
        those acknowledged before (the event re-sent, or a conflicting event under its id), and the dead
        letters, cut to fit if need be."""
        flagged = [v for v in stored if v.needs_review]
        published = self.store.reviews_published([v.event_id for v in flagged]) if flagged else set()
        reviews = [v for v in flagged if v.event_id not in published]
        limit = int(self._producer.config.get("max_request_size", 1024 * 1024))
        outgoing = [
            *(review_message(self.review_topic, v) for v in reviews),
            *(dead_letters.fit(m, limit) for m in bad),
        ]
        return reviews, outgoing

    def _confirm(self, sends: Sends, transaction: Transaction) -> None:
        """Step 3. A dead letter the broker refuses for its size is sent again as a prefix, so one oversized
        message never holds its partition: alone, or (a refusal aborts a transaction) with all the rest."""
        if transaction.atomic:
            try:
                flush_and_check(self._producer, sends)
            except _REFUSED_FOR_SIZE as exc:
                cut = dead_letters.shrunk([m for m, _ in sends], exc)
                if cut is None:
                    raise
                log.warning("the broker refused a dead letter as too large; sending a prefix", error=str(exc))
                transaction.restart()
                flush_and_check(self._producer, send_all(self._producer, cut))
            return
        retry: list[OutgoingMessage] = []
        for message, exc in flush_and_check(self._producer, sends, tolerate=_REFUSED_FOR_SIZE):
            cut = dead_letters.shrunk([message], exc)
            if cut is None:
                raise exc
            log.warning("the broker refused a dead letter as too large; sending a prefix", error=str(exc))
            retry.extend(cut)
        if retry:
            self._confirm(send_all(self._producer, retry), transaction)

    def _acknowledge(self, result: BatchResult, reviews: Sequence[Verdict]) -> None:
        """Record the review messages as acknowledged: a repeat of these events publishes nothing more. A
        crash between the flush and this record is the one window in which one can be sent twice."""
        self.on_step(STEP_FLUSHED, result)
        if reviews:
            self.store.mark_reviews_published([v.event_id for v in reviews])


def _close_replaced(producer: KafkaProducer, attempts: int = 5) -> None:
    """Close a replaced producer off the delivery thread. kafka-python's close() flushes first and gives up
    on a timeout; what it holds expires after its delivery timeout (2 min), so a later attempt gets through."""
    for _ in range(attempts):
        try:
            producer.close(timeout=SEND_TIMEOUT_S)
            return
        except KafkaError as exc:
            log.debug("replaced producer still holds messages", error=str(exc))


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
