"""Dynamic batching: a batch closes when it is full or `max_wait` after its first record, whichever first.

Each record is handed to the loader pool the moment it is polled, so by the time a batch closes most of
its images are already fetched, decoded and preprocessed; the batch itself is just the list of those
futures, in poll order, plus the records they came from (for offsets and dead-lettering).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from consumers.offsets import next_offsets


@dataclass
class Batch:
    """Records of one batch and the futures preparing them; `number` orders batches for commits."""

    number: int
    records: list[ConsumerRecord] = field(default_factory=list)
    prepared: list[Future[Any]] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.records)

    def next_offsets(self) -> dict[TopicPartition, int]:
        """For each partition, the offset of the next record to read: last record in the batch + 1."""
        return next_offsets(self.records)


class BatchAssembler:
    """Collects records into the open batch and says when it must close."""

    def __init__(self, max_size: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._numbers = 0
        self._open: Batch | None = None

    @property
    def open_batch(self) -> Batch | None:
        return self._open

    def room(self) -> int:
        """How many more records the open batch takes (a whole batch when none is open)."""
        return self.max_size - (len(self._open) if self._open else 0)

    def add(self, record: ConsumerRecord, prepared: Future[Any]) -> None:
        if self._open is None:
            self._numbers += 1
            self._open = Batch(number=self._numbers, opened_at=self._clock())
        self._open.records.append(record)
        self._open.prepared.append(prepared)

    def seconds_until_due(self) -> float | None:
        """Time left before the open batch must close; None when no batch is open."""
        if self._open is None:
            return None
        return max(0.0, self._open.opened_at + self.max_wait_s - self._clock())

    def due(self) -> bool:
        if self._open is None:
            return False
        return len(self._open) >= self.max_size or self._clock() >= self._open.opened_at + self.max_wait_s

    def close(self) -> Batch | None:
        """Close the open batch (if any) and return it."""
        batch, self._open = self._open, None
        return batch
