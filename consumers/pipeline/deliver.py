"""The deliver stage, on the delivery thread: `Delivery.deliver` each batch, retried until it succeeds.

The database, the broker or the media store being away is no reason to drop a batch: keep it, back off, try again, with
a new producer after a broker error. Nothing is committed meanwhile, and the full pipeline pauses the
partitions upstream (consumers/pipeline/loop.py), so the member stays in its group while it waits.
"""

from __future__ import annotations

import threading

import structlog
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from consumers.delivery import Delivery, ScoredBatch
from consumers.metrics import WorkerMetrics
from consumers.pipeline.items import Delivered
from moderation.media import MediaError
from moderation.storage import StorageError

log = structlog.get_logger("moderation.worker")

FIRST_RETRY_S = 0.5
LONGEST_RETRY_S = 30.0


class Deliver:
    def __init__(
        self, delivery: Delivery, consumer: KafkaConsumer, metrics: WorkerMetrics, abandon: threading.Event
    ) -> None:
        self.delivery = delivery
        self.consumer = consumer  # only for its group metadata, which kafka-python guards with a lock
        self.metrics = metrics
        self.abandon = abandon

    def __call__(self, batch: ScoredBatch) -> Delivered | None:
        """The delivered batch, or None if the worker gave up on it first."""
        delay_s = FIRST_RETRY_S
        while not self.abandon.is_set():
            try:
                group = self.consumer.group_metadata() if self.delivery.transactional else None
                result = self.delivery.deliver(batch, group)
            except (StorageError, KafkaError, MediaError) as exc:
                log.error("delivery failed, retrying", batch=batch.number, error=str(exc), retry_in_s=delay_s)
                self.metrics.error(exc)
                if isinstance(exc, KafkaError):
                    self.delivery.renew_producer()
                self.abandon.wait(delay_s)
                delay_s = min(delay_s * 2, LONGEST_RETRY_S)
                continue
            return Delivered(batch.number, result, batch.offsets)
        return None
