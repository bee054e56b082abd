"""Offsets as Kafka takes them: per partition, the next offset to read after a set of records.

Written once for every consumer here (the worker's batches, the review-outcomes consumer): a commit is
always "past the last record of each partition", never a record's own offset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata


def next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, int]:
    """For each partition among `records`, the offset of the next record to read: its last one + 1."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, -1), record.offset + 1)
    return offsets


def to_commit(offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    """`offsets` in the form `commit`, `commit_async` and `send_offsets_to_transaction` take."""
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
