"""Dynamic batching rules: full or max-wait, whichever first; offsets per partition."""

from __future__ import annotations

from concurrent.futures import Future

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from consumers.batching import BatchAssembler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(partition: int, offset: int, topic: str = "t") -> ConsumerRecord:
    return ConsumerRecord(topic, partition, None, offset, 0, 0, None, b"{}", [], None, 0, 2, -1)


def done() -> Future[object]:
    future: Future[object] = Future()
    future.set_result(None)
    return future


def test_a_batch_closes_when_full() -> None:
    assembler = BatchAssembler(max_size=3, max_wait_s=10.0, clock=Clock())
    assert not assembler.due() and assembler.open_batch is None and assembler.room() == 3
    for offset in range(3):
        assert not assembler.due()
        assembler.add(record(0, offset), done())
    assert assembler.room() == 0
    assert assembler.due()
    batch = assembler.close()
    assert batch is not None and len(batch) == 3 and batch.number == 1
    assert assembler.open_batch is None and assembler.close() is None


def test_a_batch_closes_max_wait_after_its_first_record() -> None:
    clock = Clock()
    assembler = BatchAssembler(max_size=100, max_wait_s=0.2, clock=clock)
    assert assembler.seconds_until_due() is None
    assembler.add(record(0, 0), done())
    clock.now += 0.15
    assembler.add(record(0, 1), done())  # a later record does not restart the wait
    assert not assembler.due()
    assert abs((assembler.seconds_until_due() or 0) - 0.05) < 1e-9
    clock.now += 0.05
    assert assembler.due()
    assert assembler.seconds_until_due() == 0.0


def test_batches_are_numbered_in_order() -> None:
    assembler = BatchAssembler(max_size=1, max_wait_s=1.0, clock=Clock())
    numbers = []
    for offset in range(3):
        assembler.add(record(0, offset), done())
        numbers.append(assembler.close().number)  # type: ignore[union-attr]
    assert numbers == [1, 2, 3]


def test_next_offsets_are_last_plus_one_per_partition() -> None:
    assembler = BatchAssembler(max_size=10, max_wait_s=1.0, clock=Clock())
    for partition, offset in [(0, 5), (1, 9), (0, 6), (2, 0), (1, 10)]:
        assembler.add(record(partition, offset), done())
    batch = assembler.close()
    assert batch is not None
    assert batch.next_offsets() == {TopicPartition("t", 0): 7, TopicPartition("t", 1): 11, TopicPartition("t", 2): 1}
