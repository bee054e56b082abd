"""The review-outcomes consumer: reviewers' decisions from Kafka into the review_outcomes table.

It is its own consumer group (`<consumer_group>-outcomes`), so it never competes with the workers for
image events and can run as one small process beside them. Per polled batch it follows the workers'
delivery order: 1. store the valid outcomes in one DB transaction, 2. publish the invalid ones to the
dead-letter topic, 3. flush the producer, 4. commit the offsets. A database or broker failure is retried
with backoff and nothing is committed meanwhile, while the consumer keeps polling with its partitions
paused so it stays in the group; a crash redelivers the batch, which the upsert absorbs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError

from consumers.clients import make_consumer, make_producer
from consumers.dead_letters import dead_letter_for
from consumers.messages import OutgoingMessage
from consumers.offsets import next_offsets, to_commit
from consumers.publishing import publish
from consumers.settings import Settings
from moderation.exceptions import EventError
from moderation.review_outcome import ReviewOutcome, parse_outcome
from moderation.storage import StorageError, open_engine
from moderation.storage.review_decisions import OutcomeStore

log = structlog.get_logger("moderation.outcomes")

POLL_TIMEOUT_MS = 500  # how often an idle loop notices a stop request
MAX_POLL_RECORDS = 500  # outcomes are tiny: one transaction per few hundred


@dataclass
class OutcomeTotals:
    records: int = 0
    stored: int = 0  # rows inserted or replaced (repeats and older decisions are not counted)
    dead_lettered: int = 0
    batches: int = 0  # batches whose offsets were committed
    retries: int = 0  # failed delivery attempts (database or broker away)


def group_id(settings: Settings) -> str:
    return f"{settings.kafka.consumer_group}-outcomes"


class OutcomeConsumer:
    """Consume the review-outcomes topic until stopped; the clients and the store come in from outside."""

    def __init__(
        self,
        *,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        store: OutcomeStore,
        settings: Settings,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.topic = settings.kafka.review_outcomes_topic
        self.dead_letter_topic = settings.kafka.dead_letter_topic
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.totals = OutcomeTotals()
        self.polls_while_waiting = 0  # polls made during retry back-offs, to stay in the group

    def run(self, stop: threading.Event) -> OutcomeTotals:
        """Poll, deliver and commit batch by batch until `stop` is set; a batch in flight is finished first,
        unless it is waiting out a failure: then it is left uncommitted, to be redelivered."""
        self.consumer.subscribe([self.topic])
        log.info("outcomes consumer started", topic=self.topic, group=self.consumer.config["group_id"])
        while not stop.is_set():
            polled = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            records = [record for batch in polled.values() for record in batch]
            if records and self._deliver(records, stop):
                self._commit(records)
        log.info("outcomes consumer stopping", **vars(self.totals))
        return self.totals

    def _deliver(self, records: Sequence[ConsumerRecord], stop: threading.Event) -> bool:
        """Steps 1-3, retried until they succeed (True) or `stop` interrupts the waiting (False)."""
        outcomes: list[ReviewOutcome] = []
        dead_letters: list[OutgoingMessage] = []
        for record in records:
            try:
                outcomes.append(parse_outcome(record.value))
            except EventError as error:
                dead_letters.append(dead_letter_for(record, error, self.dead_letter_topic, what="review outcome"))
        delay_s = self.backoff_s
        while True:
            try:
                # Step 1: every valid outcome in one transaction (an upsert: repeats change nothing).
                stored = self.store.save_many(outcomes)
                # Step 2: the invalid ones to the dead-letter topic, original bytes untouched; step 3: flush
                # and check every send was acknowledged (raises if one failed).
                publish(self.producer, dead_letters)
            except (StorageError, KafkaError) as exc:
                self.totals.retries += 1
                log.error("outcome delivery failed, retrying", records=len(records), error=str(exc), retry_in_s=delay_s)
                if self._wait_in_group(delay_s, stop):
                    log.warning("stopping with an undelivered batch; it will be redelivered", records=len(records))
                    return False
                delay_s = min(delay_s * 2, self.max_backoff_s)
                continue
            self.totals.records += len(records)
            self.totals.stored += stored
            self.totals.dead_lettered += len(dead_letters)
            log.info("outcomes stored", records=len(records), stored=stored, dead_lettered=len(dead_letters))
            return True

    def _wait_in_group(self, seconds: float, stop: threading.Event) -> bool:
        """Back off for `seconds` while staying in the group: poll with every partition paused, so an
        outage longer than max_poll_interval_ms does not cost this member its partitions. True if `stop`
        was set meanwhile."""
        deadline = time.monotonic() + seconds
        try:
            while (remaining := deadline - time.monotonic()) > 0 and not stop.is_set():
                self.consumer.pause(*self.consumer.assignment())  # including any assigned meanwhile
                self.polls_while_waiting += 1
                polled = self.consumer.poll(timeout_ms=int(min(remaining, POLL_TIMEOUT_MS / 1000) * 1000))
                for tp, records in polled.items():  # fetched before the pause took effect: read them again
                    self.consumer.seek(tp, records[0].offset)
        finally:
            self.consumer.resume(*self.consumer.paused())
        return stop.is_set()

    def _commit(self, records: Sequence[ConsumerRecord]) -> None:
        """Step 4: commit past the last record of each partition in the batch."""
        try:
            self.consumer.commit(to_commit(next_offsets(records)))
        except CommitFailedError as exc:
            # The group rebalanced (or this member overran max_poll_interval_ms waiting on the database):
            # the next owner starts from the last commit and the upsert makes the repeat harmless.
            log.warning("offset commit refused after a rebalance", error=str(exc))
            return
        except KafkaError as exc:
            log.warning("offset commit failed; the next commit covers it", error=str(exc))
            return
        self.totals.batches += 1


def run_outcomes(settings: Settings, stop: threading.Event) -> OutcomeTotals:
    """Run the review-outcomes consumer until `stop` is set, then leave the group cleanly."""
    # The schema check comes first: review_outcomes arrived in revision 0002.
    with open_engine(settings.database_url, require_schema=True) as engine:
        store = OutcomeStore(engine)
        consumer = make_consumer(settings, group_id=group_id(settings), max_poll_records=MAX_POLL_RECORDS)
        try:
            producer = make_producer(settings)
            try:
                return OutcomeConsumer(consumer=consumer, producer=producer, store=store, settings=settings).run(stop)
            finally:
                producer.close(timeout=10)
        finally:
            consumer.close(autocommit=False)  # offsets were committed batch by batch; nothing unfinished

