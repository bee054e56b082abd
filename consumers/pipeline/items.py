"""What the worker's stages hand each other, typed: a prepared record, then a delivered batch.

    record -> Prepared (loader pool) -> Batch of them (consumers/batching.py) -> ScoredBatch (scorer,
    consumers/delivery.py) -> Delivered (delivery thread) -> committed (consumer thread)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from consumers.delivery import BatchResult
from consumers.messages import OutgoingMessage
from moderation.events import ImageEvent


@dataclass(frozen=True)
class Prepared:
    """One record after the loader pool: a parsed event with its loaded image, or a dead letter."""

    record: ConsumerRecord
    event: ImageEvent | None = None
    loaded: object | None = None  # what Moderator.load_one returned: an image or a load failure
    dead_letter: OutgoingMessage | None = None


@dataclass(frozen=True)
class Delivered:
    """A batch whose verdicts are stored and whose messages the broker acknowledged: step 4 is next."""

    number: int
    result: BatchResult
    offsets: Mapping[TopicPartition, int] = field(default_factory=dict)  # next offset per partition

    @property
    def commit_needed(self) -> bool:
        """Else the batch's Kafka transaction carried its offsets, or it was fenced and is not ours to commit."""
        return not (self.result.offsets_committed or self.result.fenced)


def record_fields(record: ConsumerRecord) -> dict[str, object]:
    """Where a record came from, for log lines about it."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}
