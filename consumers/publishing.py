"""Sending messages and knowing each one arrived: send them all, flush the producer, check every send.

A flush alone proves nothing (kafka-python's flush returns once nothing is queued, delivered or failed),
so every send's own result is checked after it. Every publisher here (the worker's delivery, the
review-outcomes consumer) goes through these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from consumers.messages import OutgoingMessage

SEND_TIMEOUT_S = 60.0

Sends = list[tuple[OutgoingMessage, FutureRecordMetadata]]


def send_all(producer: KafkaProducer, messages: Sequence[OutgoingMessage]) -> Sends:
    """Hand every message to the producer, in order; nothing is known to have arrived yet."""
    return [(m, producer.send(m.topic, key=m.key, value=m.value, headers=m.headers)) for m in messages]


def flush_and_check(
    producer: KafkaProducer,
    sends: Sends,
    *,
    tolerate: tuple[type[KafkaError], ...] = (),
    timeout_s: float = SEND_TIMEOUT_S,
) -> list[tuple[OutgoingMessage, KafkaError]]:
    """Flush, then wait for every send's acknowledgement, in order. A send that failed raises its error,
    unless the error is one of `tolerate`: those come back, with their messages, for the caller to decide."""
    producer.flush(timeout=timeout_s)
    tolerated: list[tuple[OutgoingMessage, KafkaError]] = []
    for message, future in sends:
        try:
            future.get(timeout=timeout_s)
        except tolerate as exc:
            tolerated.append((message, exc))
    return tolerated


def publish(producer: KafkaProducer, messages: Sequence[OutgoingMessage], timeout_s: float = SEND_TIMEOUT_S) -> None:
    """Send `messages`, flush and check every send: returns only once the broker acknowledged them all."""
    flush_and_check(producer, send_all(producer, messages), timeout_s=timeout_s)
