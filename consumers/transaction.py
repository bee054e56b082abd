"""Steps 2-4 of one batch as one Kafka transaction, or as plain sends whose offsets the consumer commits.

In transactional mode a batch with messages to publish sends them and its offsets (with the consumer's
group metadata, KIP-447) in one transaction: they commit together or not at all, so read_committed
readers of the review topic see each message once. A rebalance under the batch fences the transaction:
its messages are aborted and the partitions' new owner redelivers it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from consumers.messages import OutgoingMessage
from consumers.offsets import to_commit

log = structlog.get_logger("moderation.delivery")

# Errors that mean this member's generation is over: retrying the transaction cannot succeed.
_GROUP_MOVED_ON = (
    CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError, FencedInstanceIdError
)


class Transaction:
    """Steps 2-4 of a batch as one Kafka transaction, or (`atomic` false) as plain sends whose offsets the
    consumer commits afterwards. A batch with nothing to publish has nothing to make atomic."""

    def __init__(
        self, producer: KafkaProducer, offsets: Mapping[TopicPartition, int], group: Any, atomic: bool
    ) -> None:
        self.producer = producer
        self.offsets = offsets
        self.group = group
        self.atomic = atomic

    @classmethod
    def begin(
        cls, producer: KafkaProducer, outgoing: Sequence[OutgoingMessage], offsets: Mapping[TopicPartition, int],
        group: Any, transactional: bool,
    ) -> Transaction:
        """Begun (in transactional mode, for a batch with messages): read_committed consumers of the review
        topic then see each message once."""
        atomic = transactional and bool(outgoing) and bool(offsets) and group is not None
        if atomic:
            producer.begin_transaction()
        return cls(producer, offsets, group, atomic)

    def restart(self) -> None:
        """Abort and begin again (the broker refused part of the transaction)."""
        self._abort_quietly()
        self.producer.begin_transaction()

    def commit(self) -> bool:
        """Commit the offsets with the messages; False when they are left to the consumer."""
        if not self.atomic:
            return False
        self.producer.send_offsets_to_transaction(to_commit(self.offsets), self.group)
        self.producer.commit_transaction()
        return True

    def abort(self, exc: KafkaError) -> bool:
        """After `exc`: abort the transaction; True if the group rebalanced under it (fenced), else raise."""
        if not self.atomic:
            raise exc
        self._abort_quietly()
        if not isinstance(exc, _GROUP_MOVED_ON):
            raise exc
        # Its messages were aborted with the transaction and the partitions' new owner redelivers the
        # batch. Nothing to commit, nothing done here.
        log.warning("transaction fenced by a rebalance; the new owner redelivers the batch", error=str(exc))
        return True

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort_transaction()
        except KafkaError as exc:  # the producer is unusable: the retry gets a new one (renew_producer)
            log.warning("could not abort the transaction", error=str(exc))
