"""Rebalances: finish and commit every batch in flight before this member's partitions change hands.

kafka-python 3 runs rebalance listeners on its network thread (while the worker's thread waits inside
poll), where a blocking commit would deadlock; so the drain here waits and commits by awaiting, and
heartbeats go on meanwhile. What is still unfinished at the drain deadline is left uncommitted: the
partitions' new owner redelivers it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

from consumers.metrics import WorkerMetrics
from consumers.pipeline.lag import LagGauge
from consumers.pipeline.ledger import Ledger
from consumers.pipeline.stages import Supervisor

log = structlog.get_logger("moderation.worker")


class Rebalancing:
    """What this member does when the group rebalances, and how many partitions it owns."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        ledger: Ledger,
        lag: LagGauge,
        supervisor: Supervisor,
        metrics: WorkerMetrics,
        *,
        close_open_batch: Callable[[], None],
        drain_timeout_s: float,
    ) -> None:
        self.consumer = consumer
        self.ledger = ledger
        self.lag = lag
        self.supervisor = supervisor
        self.metrics = metrics
        self.close_open_batch = close_open_batch  # dispatches the batch being assembled
        self.drain_timeout_s = drain_timeout_s
        self.assigned_partitions = 0

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Finish and commit every batch in flight (until the drain deadline), then forget the partitions."""
        if self.supervisor.failure is not None or self.supervisor.abandon.is_set():
            return
        self.close_open_batch()
        deadline = time.monotonic() + self.drain_timeout_s
        while self.ledger.in_flight and self.supervisor.failure is None and time.monotonic() < deadline:
            delivered = self.ledger.next_delivered()
            if delivered is None:
                await _network_sleep(self.consumer, 0.02)
                continue
            await self.ledger.commit_async(self.consumer, delivered)
        self.assigned_partitions = 0
        self.metrics.partitions_assigned(0)
        self.ledger.forget_offsets()
        self.lag.forget(revoked)
        log.info("partitions revoked", partitions=len(revoked), unfinished_batches=self.ledger.in_flight)

    def assign(self, assigned: set[TopicPartition]) -> None:
        self.assigned_partitions = len(assigned)
        self.metrics.partitions_assigned(len(assigned))
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


class Listener(AsyncConsumerRebalanceListener):
    """kafka-python's hook, handing each rebalance to `Rebalancing` (looked up at each call)."""

    def __init__(self, rebalancing: Rebalancing) -> None:
        self.rebalancing = rebalancing

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.rebalancing.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.rebalancing.assign(assigned)


def _network_sleep(consumer: KafkaConsumer, seconds: float) -> Awaitable[None]:
    """A sleep the consumer's network loop can await, so heartbeats go on while a listener waits.

    kafka-python 3 drives listeners with its own event loop (not asyncio) and exposes no public sleep.
    """
    return consumer._net.sleep(seconds)  # noqa: SLF001 - see the docstring
