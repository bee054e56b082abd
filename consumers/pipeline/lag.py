"""The consumer-lag gauge: per owned partition, its end offset minus the group's committed offset.

Refreshed from the poll loop at most every `every_s` (a cheap, local computation: the end offset comes
with each fetch). Where this member has committed nothing yet (after a restart or a rebalance), the
group's committed offset is looked up once, so the gauge shows the group's true lag from the start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from consumers.metrics import WorkerMetrics

log = structlog.get_logger("moderation.worker")

LOOKUP_TIMEOUT_MS = 2000  # the gauge may wait this long for the group's committed offset


class LagGauge:
    def __init__(
        self, consumer: KafkaConsumer, metrics: WorkerMetrics, committed: Mapping[TopicPartition, int],
        every_s: float = 1.0,
    ) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.committed = committed  # what this member committed (the ledger's, read-only here)
        self.every_s = every_s
        self._looked_up: dict[TopicPartition, int] = {}  # the group's offsets where this member committed none
        self._updated_at = 0.0
        self._reported: set[TopicPartition] = set()  # partitions with a lag series from this member

    def update(self) -> None:
        if time.monotonic() - self._updated_at < self.every_s:
            return
        self._updated_at = time.monotonic()
        assignment = self.consumer.assignment()
        # A rebalance can leave series behind (a refresh between the revoke and the new assignment still
        # sees the old one): a partition this member no longer owns is reported by its new owner.
        for tp in self._reported - assignment:
            self.metrics.forget_partition(tp.topic, tp.partition)
        self._reported &= assignment
        for tp in assignment:
            highwater = self.consumer.highwater(tp)
            if highwater is None:  # nothing fetched from it yet
                continue
            committed = self.committed.get(tp, self._looked_up.get(tp))
            if committed is None:
                committed = self._group_committed(tp)
                if committed is None:
                    continue
                self._looked_up[tp] = committed
            self.metrics.lag(tp.topic, tp.partition, max(0, highwater - committed))
            self._reported.add(tp)

    def forget(self, revoked: Iterable[TopicPartition]) -> None:
        """After a revocation: look the group's offsets up afresh, and drop the revoked partitions' series
        (another member reports them now: a stale series would double-count the lag)."""
        self._looked_up = {}
        self._updated_at = 0.0
        revoked = set(revoked)
        for tp in revoked:
            self.metrics.forget_partition(tp.topic, tp.partition)
        self._reported -= revoked

    def _group_committed(self, tp: TopicPartition) -> int | None:
        """Where the group stands on a partition this member has not committed on yet: its committed offset,
        or the partition's start if the group never committed there."""
        try:
            committed = self.consumer.committed(tp, timeout_ms=LOOKUP_TIMEOUT_MS)
            if committed is None:
                committed = self.consumer.beginning_offsets([tp], timeout_ms=LOOKUP_TIMEOUT_MS).get(tp)
        except KafkaError as exc:  # the coordinator is busy or away: try again at the next refresh
            log.debug("committed offset unknown for now", partition=f"{tp.topic}/{tp.partition}", error=str(exc))
            return None
        return committed
