"""Batches between dispatch and commit, and step 4 for those whose offsets the consumer commits.

A kafka-python consumer must only be used from one thread, so the delivery thread hands each delivered
batch here and the consumer's own thread commits it: from the poll loop (`commit_delivered`), or from
the rebalance listener on the network thread (`commit_async`). Batches are settled in the order they
were delivered, which is the order they were polled: delivery is one thread working in order.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Mapping
from types import MappingProxyType

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from consumers.delivery import STEP_COMMITTED, BatchResult, StepHook
from consumers.metrics import WorkerMetrics
from consumers.offsets import to_commit
from consumers.pipeline.items import Delivered

log = structlog.get_logger("moderation.worker")


class Ledger:
    """How many batches are in flight, which are delivered, what this member committed, what it did."""

    def __init__(self, metrics: WorkerMetrics, on_step: StepHook | None = None) -> None:
        self.metrics = metrics
        self.on_step: StepHook = on_step or (lambda step, result: None)
        self.totals = BatchResult()  # the counters of every batch committed
        self._delivered: queue.Queue[Delivered] = queue.Queue()
        # Changed by the consumer's thread, or by the rebalance listener on the network thread while the
        # consumer's thread waits inside poll(): never by both at once.
        self._in_flight = 0
        self._committed: dict[TopicPartition, int] = {}

    @property
    def in_flight(self) -> int:
        """Batches dispatched to the scorer and not yet settled."""
        return self._in_flight

    @property
    def committed_offsets(self) -> Mapping[TopicPartition, int]:
        """The offsets this member committed since its partitions were last assigned (read-only)."""
        return MappingProxyType(self._committed)

    def dispatched(self) -> None:
        self._in_flight += 1
        self.metrics.in_flight(self._in_flight)

    def delivered(self, batch: Delivered) -> None:
        """From the delivery thread: steps 1-3 are done."""
        self._delivered.put(batch)

    def next_delivered(self, block_s: float = 0.0) -> Delivered | None:
        try:
            return self._delivered.get(timeout=block_s) if block_s else self._delivered.get_nowait()
        except queue.Empty:
            return None

    def commit_delivered(self, consumer: KafkaConsumer, block_s: float = 0.0) -> int:
        """Step 4 on the consumer's thread, for every batch delivered so far (waiting up to `block_s` for
        the first); returns how many were settled."""
        settled = 0
        while (batch := self.next_delivered(block_s)) is not None:
            block_s = 0.0
            started = time.perf_counter()
            if batch.commit_needed:
                try:
                    consumer.commit(to_commit(batch.offsets))
                except KafkaError as exc:
                    self._commit_failed(exc)
            self.settle(batch, time.perf_counter() - started)
            settled += 1
        return settled

    async def commit_async(self, consumer: KafkaConsumer, batch: Delivered) -> None:
        """Step 4 from a rebalance listener, where a blocking commit would deadlock the network thread."""
        started = time.perf_counter()
        if batch.commit_needed:
            try:
                await consumer.commit_async(to_commit(batch.offsets))
            except KafkaError as exc:
                self._commit_failed(exc)
        self.settle(batch, time.perf_counter() - started)

    def settle(self, batch: Delivered, commit_s: float) -> None:
        """The batch is out of flight: count it as done, unless it was fenced."""
        self._in_flight -= 1
        self.metrics.in_flight(self._in_flight)
        result = batch.result
        if result.fenced:  # nothing of it was committed: the new owner redelivers, commits and counts it
            self.metrics.batch_fenced()
            log.info("batch fenced, left to the partitions' new owner", batch=batch.number, records=result.records)
            return
        self._committed.update(batch.offsets)
        self.metrics.batch_committed(result, commit_s)
        self.totals.add(result)
        self.on_step(STEP_COMMITTED, result)
        log.info("batch done", batch=batch.number, **result.counters())

    def forget_offsets(self) -> None:
        """The partitions were revoked: what this member committed on them is no longer its to report."""
        self._committed.clear()

    def _commit_failed(self, exc: KafkaError) -> None:
        self.metrics.error(exc)
        if isinstance(exc, CommitFailedError):
            # The group rebalanced: these partitions now belong to another member, which starts from
            # the last commit. Rows are idempotent, so the redelivery only repeats review messages.
            log.warning("offset commit refused after a rebalance", error=str(exc))
        else:
            log.warning("offset commit failed; the next commit covers it", error=str(exc))
