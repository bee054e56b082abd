"""The worker: one consumer-group member running a pipeline that keeps the model busy.

    poll (this thread) -> prepare (loader pool, as each record arrives) -> score (scorer thread: one
      forward pass per batch) -> deliver (delivery thread: persist, publish, flush) -> commit offsets
      (this thread, batch by batch, in order)

While the model scores batch N, batch N+1 is being loaded and batch N-1 persisted. At most
`batching.max_batches_in_flight` batches are between poll and commit; beyond that the assigned partitions
are paused (the consumer keeps polling, so it stays in the group) instead of buffering without bound.
Offsets are committed only for batches whose verdicts are in the database and whose messages the broker
acknowledged. Database and broker errors while delivering are retried with backoff; anything else stops
the worker without committing the unfinished batches, which are then redelivered.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import structlog
from kafka import KafkaConsumer, KafkaProducer

from consumers.batching import Batch, BatchAssembler
from consumers.delivery import BatchResult, Delivery, ScoredBatch, StepHook
from consumers.metrics import WorkerMetrics
from consumers.pipeline.deliver import Deliver
from consumers.pipeline.items import Delivered
from consumers.pipeline.lag import LagGauge
from consumers.pipeline.ledger import Ledger
from consumers.pipeline.policies import PolicyRuntime
from consumers.pipeline.prepare import Prepare
from consumers.pipeline.rebalance import Listener, Rebalancing
from consumers.pipeline.score import Score
from consumers.pipeline.stages import Stage, Supervisor
from consumers.reviewer_copies import ReviewerCopies
from consumers.settings import Settings
from moderation.exceptions import ModerationError
from moderation.media import DirectoryMediaStore, MediaStore
from moderation.moderator import Moderator
from moderation.policy_book import PolicyFiles
from moderation.storage import VerdictStore
from moderation.threads import DaemonPool

log = structlog.get_logger("moderation.worker")

IDLE_POLL_S = 0.5  # nothing in flight: wake up this often to notice a stop request
BUSY_POLL_S = 0.02  # work in flight: come back quickly to commit what finished


class WorkerCrashed(ModerationError):
    """A pipeline stage failed in a way retrying cannot fix; unfinished batches were not committed."""


class Worker:
    """The poll loop and back-pressure; the stages, the ledger and the rebalance handling it wires up.

    Its `producer` becomes its delivery's, which closes it (`close`); `policies` are the files behind the
    moderator's book, checked between batches (None: nothing to watch). The consumer stays the caller's.
    Reviewer copies go to `media_store`, else to the settings' media directory (none with media off)."""

    def __init__(
        self,
        *,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        moderator: Moderator,
        store: VerdictStore,
        settings: Settings,
        on_step: StepHook | None = None,
        metrics: WorkerMetrics | None = None,
        producer_factory: Callable[[], KafkaProducer] | None = None,
        policies: PolicyFiles | None = None,
        media_store: MediaStore | None = None,
    ) -> None:
        self.consumer = consumer
        self.moderator = moderator
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        on_step = on_step or (lambda step, result: None)
        if media_store is None and settings.media.enabled:
            media_store = DirectoryMediaStore(settings.media_directory)
        copies = ReviewerCopies(media_store, settings.media)
        moderator.keep_bytes = copies.enabled  # the loaders keep the uploads' bytes only for the copies
        self.delivery = Delivery(
            store=store, producer=producer, kafka=settings.kafka, on_step=on_step, renew=producer_factory,
            copies=copies,
        )
        self.policy_runtime = PolicyRuntime(policies, moderator, self.metrics)
        batching = settings.batching
        self.assembler = BatchAssembler(batching.max_size, batching.max_wait_ms / 1000.0)
        self.max_in_flight = batching.max_batches_in_flight
        self.drain_timeout_s = batching.drain_timeout_s  # how long a stop or a rebalance waits for them
        threads = batching.loader_threads or 2 * (os.cpu_count() or 1)
        # Daemon threads: a loader stuck in a read must not keep the process alive past the drain deadline.
        self._loaders = DaemonPool(threads, "loader")
        self._prepare = Prepare(moderator, settings.kafka.dead_letter_topic)
        self.supervisor = Supervisor(self.metrics)
        self.ledger = Ledger(self.metrics, on_step)
        self.lag = LagGauge(consumer, self.metrics, self.ledger.committed_offsets)
        self.rebalancing = Rebalancing(
            consumer, self.ledger, self.lag, self.supervisor, self.metrics,
            close_open_batch=self._close_open_batch, drain_timeout_s=self.drain_timeout_s,
        )
        # The stages, last first: each hands what it makes to the next, the delivery stage to the ledger.
        self._deliver: Stage[ScoredBatch, Delivered] = Stage(
            "delivery", Deliver(self.delivery, consumer, self.metrics, self.supervisor.abandon),
            emit=self.ledger.delivered, supervisor=self.supervisor,
        )
        self._score: Stage[Batch, ScoredBatch] = Stage(
            "scorer", Score(moderator, self.policy_runtime, self.metrics),
            emit=self._deliver.put, supervisor=self.supervisor, then=self._deliver,
            # An idle worker notices policy edits too: the scorer checks the files whenever no batch came.
            idle=self.policy_runtime.check, idle_every_s=self.policy_runtime.interval_s,
        )
        self._paused = False
        self.pauses = 0  # how often back-pressure paused the partitions (for metrics and tests)
        self.last_poll_at = time.monotonic()  # liveness: a wedged loop stops moving this

    @property
    def in_flight(self) -> int:
        """Batches dispatched and not yet committed."""
        return self.ledger.in_flight

    @property
    def totals(self) -> BatchResult:
        """The counters of every batch this worker committed."""
        return self.ledger.totals

    @property
    def assigned_partitions(self) -> int:
        return self.rebalancing.assigned_partitions

    @property
    def failure(self) -> BaseException | None:
        """What stopped a stage (the worker then stops too), or None."""
        return self.supervisor.failure

    def close(self) -> None:
        """Close what the worker owns: its delivery's producer (the consumer is the caller's)."""
        self.delivery.close()

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; then finish and commit every batch in flight and return."""
        kafka = self.settings.kafka
        self.consumer.subscribe([kafka.input_topic], listener=Listener(self.rebalancing))
        stages = (self._score, self._deliver)
        for stage in stages:
            stage.start()
        log.info("worker started", topic=kafka.input_topic, group=kafka.consumer_group)
        drained = False
        try:
            while not stop.is_set() and self.failure is None:
                self._step()
            if self.failure is None:
                self._close_open_batch()
                drained = self._drain(self.drain_timeout_s)
        finally:
            if not drained:  # crashed, timed out or interrupted: drop unfinished work, commit nothing more
                self.supervisor.abandon.set()
            self._score.stop()
            for stage in stages:
                stage.join(self.drain_timeout_s if drained else 1.0)
            self._loaders.shutdown()
        if self.failure is not None:
            raise WorkerCrashed(f"{type(self.failure).__name__}: {self.failure}") from self.failure
        if not drained:
            raise WorkerCrashed(
                f"gave up after {self.drain_timeout_s:g} s on {self.in_flight} batches in flight: "
                "not committed, they will be redelivered"
            )
        log.info("worker stopping", **self.totals.counters())

    def _step(self) -> None:
        self.ledger.commit_delivered(self.consumer)
        self._apply_back_pressure()
        self.lag.update()
        if self.in_flight or self.assembler.open_batch:
            due_in = self.assembler.seconds_until_due()
            timeout_s = BUSY_POLL_S if due_in is None else min(BUSY_POLL_S, due_in)
        else:
            timeout_s = IDLE_POLL_S
        started = time.perf_counter()
        polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max(self.assembler.room(), 1))
        self.last_poll_at = time.monotonic()
        if polled:
            self.metrics.polled(sum(len(records) for records in polled.values()), time.perf_counter() - started)
        for records in polled.values():
            for record in records:
                self.assembler.add(record, self._loaders.submit(self._prepare, record))
                if self.assembler.due():
                    self._dispatch(self.assembler.close())
        if self.assembler.due():
            self._dispatch(self.assembler.close())

    def _close_open_batch(self) -> None:
        self._dispatch(self.assembler.close())

    def _dispatch(self, batch: Batch | None) -> None:
        if batch is None or not len(batch):
            return
        self.ledger.dispatched()
        self._score.put(batch)

    def _apply_back_pressure(self) -> None:
        assigned = self.consumer.assignment()
        if self.in_flight >= self.max_in_flight:
            unpaused = set(assigned) - set(self.consumer.paused())
            if unpaused:  # also covers partitions assigned while paused
                self.consumer.pause(*unpaused)
                if not self._paused:
                    self.pauses += 1
                    self.metrics.paused()
                    log.debug("pipeline full, partitions paused", in_flight=self.in_flight)
                self._paused = True
        elif self._paused:
            self.consumer.resume(*self.consumer.paused())
            self._paused = False

    def _drain(self, timeout_s: float) -> bool:
        """Wait until every dispatched batch is delivered and committed; False on timeout or crash."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and self.failure is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("gave up waiting for batches in flight", in_flight=self.in_flight)
                return False
            self.ledger.commit_delivered(self.consumer, block_s=min(remaining, 0.1))
        return self.failure is None
