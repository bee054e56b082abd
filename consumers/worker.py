"""The worker: one consumer-group member running poll -> decode -> moderate -> persist -> publish -> commit.

Offsets are committed only after the batch's verdicts are committed in the database and every review
and dead-letter message is acknowledged by the broker (`Worker.finish`). A crash anywhere before the
offset commit means the batch is delivered again; verdict rows are idempotent on ``event_id`` and
review messages carry the event id, so a redelivery adds no row and repeats are recognisable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from consumers.messages import OutgoingMessage, dead_letter_message, review_message
from moderation.events import ImageEvent, parse_event
from moderation.exceptions import EventError
from moderation.moderator import Moderator
from moderation.settings import Settings
from moderation.storage import VerdictStore
from moderation.verdict import Verdict, VerdictStatus

log = structlog.get_logger("moderation.worker")

# The steps of `Worker.finish`, in order; `on_step` hears each one (tests and metrics hook in here).
STEP_PERSISTED = "persisted"
STEP_FLUSHED = "flushed"
STEP_COMMITTED = "committed"

SEND_TIMEOUT_S = 60.0
_COUNTERS = ("records", "verdicts", "flagged", "errors", "dead_lettered")

ParsedRecord = tuple[ConsumerRecord, ImageEvent]


@dataclass
class BatchResult:
    records: int = 0
    verdicts: int = 0
    flagged: int = 0
    errors: int = 0
    dead_lettered: int = 0
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        *,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        moderator: Moderator,
        store: VerdictStore,
        settings: Settings,
        on_step: Callable[[str, BatchResult], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.moderator = moderator
        self.store = store
        self.settings = settings
        self.on_step = on_step or (lambda step, result: None)
        self.totals = BatchResult()
        self._retry_delay_s = 0.5

    # -- the loop -------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Process batches until `stop` is set; the batch in flight is always finished first."""
        self.consumer.subscribe([self.settings.kafka.input_topic])
        log.info("worker started", topic=self.settings.kafka.input_topic, group=self.settings.kafka.consumer_group)
        while not stop.is_set():
            records = self.poll_batch(stop)
            if not records:
                continue
            try:
                result = self.process(records)
            except Exception as exc:  # noqa: BLE001 - never lose a batch: rewind and retry it
                self._rewind(records, exc)
                stop.wait(self._retry_delay_s)
                self._retry_delay_s = min(self._retry_delay_s * 2, 30.0)
                continue
            self._retry_delay_s = 0.5
            self._add_to_totals(result)
        log.info("worker stopping", **self._totals_fields())

    def poll_batch(self, stop: threading.Event) -> list[ConsumerRecord]:
        """Up to `batching.max_size` records; a batch closes `max_wait_ms` after its first record."""
        max_size = self.settings.batching.max_size
        max_wait_s = self.settings.batching.max_wait_ms / 1000.0
        records: list[ConsumerRecord] = []
        deadline: float | None = None
        while len(records) < max_size and not stop.is_set():
            if deadline is None:
                timeout_ms = 500  # idle: wake up regularly to notice `stop`
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                timeout_ms = max(int(remaining * 1000), 1)
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_size - len(records))
            for batch in polled.values():
                records.extend(batch)
            if records and deadline is None:
                deadline = time.monotonic() + max_wait_s
            if not records:
                return records  # return to the loop between idle polls
        return records

    # -- one batch ----------------------------------------------------------------------------------

    def process(self, records: Sequence[ConsumerRecord]) -> BatchResult:
        events, dead_letters = self.decode(records)
        verdicts = self.moderator.moderate([event for _, event in events])
        result = BatchResult(records=len(records), dead_lettered=len(dead_letters))
        self.finish(records, verdicts, dead_letters, result)
        return result

    def decode(self, records: Sequence[ConsumerRecord]) -> tuple[list[ParsedRecord], list[OutgoingMessage]]:
        """Parse every record; the ones that break the event contract become dead-letter messages."""
        events: list[ParsedRecord] = []
        dead_letters: list[OutgoingMessage] = []
        for record in records:
            try:
                events.append((record, parse_event(record.value)))
            except EventError as exc:
                log.warning(
                    "event dead-lettered", reason=exc.reason, detail=exc.detail[:300],
                    topic=record.topic, partition=record.partition, offset=record.offset,
                )
                dead_letters.append(
                    dead_letter_message(
                        self.settings.kafka.dead_letter_topic,
                        key=record.key, value=record.value, headers=list(record.headers or []),
                        reason=exc.reason, detail=exc.detail, source_topic=record.topic,
                        partition=record.partition, offset=record.offset,
                    )
                )
        return events, dead_letters

    def finish(
        self,
        records: Sequence[ConsumerRecord],
        verdicts: Sequence[Verdict],
        dead_letters: Sequence[OutgoingMessage],
        result: BatchResult,
    ) -> None:
        """The delivery guarantee, in four steps; each starts only when the one before succeeded."""
        # Step 1: write every verdict in one database transaction (idempotent on event_id). What comes
        # back is what is stored: for a redelivered event, the row written the first time.
        # Repeats of one event id inside the batch come back as the same stored verdict: act on it once.
        stored = list({v.event_id: v for v in self.store.save_batch(verdicts)}.values())
        result.verdicts = len(stored)
        result.flagged = sum(v.flagged for v in stored)
        result.errors = sum(v.status is VerdictStatus.ERROR for v in stored)
        self.on_step(STEP_PERSISTED, result)

        # Step 2: publish flagged verdicts to the review topic and bad events to the dead-letter topic.
        review_topic = self.settings.kafka.review_topic
        outgoing = [review_message(review_topic, v) for v in stored if v.flagged] + list(dead_letters)
        futures = [self.producer.send(m.topic, key=m.key, value=m.value, headers=m.headers) for m in outgoing]

        # Step 3: flush the producer and check every send was acknowledged (raises if one failed).
        self.producer.flush(timeout=SEND_TIMEOUT_S)
        for future in futures:
            future.get(timeout=SEND_TIMEOUT_S)
        self.on_step(STEP_FLUSHED, result)

        # Step 4: commit the offsets after the last record of each partition in this batch.
        result.offsets = next_offsets(records)
        self.consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in result.offsets.items()})
        self.on_step(STEP_COMMITTED, result)
        log.info(
            "batch done", records=result.records, verdicts=result.verdicts, flagged=result.flagged,
            errors=result.errors, dead_lettered=result.dead_lettered,
        )

    # -- helpers ------------------------------------------------------------------------------------

    def _rewind(self, records: Sequence[ConsumerRecord], exc: BaseException) -> None:
        """Seek back to the batch's first records so it is processed again; nothing was committed."""
        log.error("batch failed, will retry", error=f"{type(exc).__name__}: {exc}", retry_in_s=self._retry_delay_s)
        first: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:  # a revoked partition is redelivered to its new owner from the last commit
                self.consumer.seek(tp, offset)

    def _add_to_totals(self, result: BatchResult) -> None:
        for name in _COUNTERS:
            setattr(self.totals, name, getattr(self.totals, name) + getattr(result, name))

    def _totals_fields(self) -> dict[str, Any]:
        return {name: getattr(self.totals, name) for name in _COUNTERS}


def next_offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, int]:
    """For each partition, the offset of the next record to read: last processed + 1."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, -1), record.offset + 1)
    return offsets
