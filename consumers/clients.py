"""Kafka clients configured from settings: the group consumer, the producer, topic creation."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from moderation.settings import Settings


def make_consumer(settings: Settings, **overrides: Any) -> KafkaConsumer:
    """A group member that never commits on its own: the worker commits after persisting."""
    kafka = settings.kafka
    options: dict[str, Any] = {
        **kafka.client_options(),
        "group_id": kafka.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",  # a new group must not skip events produced before it joined
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(kafka.session_timeout_ms // 3, 100),
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "max_poll_records": settings.batching.max_size,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,  # events may carry inline images
    }
    options.update(overrides)
    return KafkaConsumer(**options)


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent producer (acks=all) for review and dead-letter messages."""
    options: dict[str, Any] = {
        **settings.kafka.client_options(),
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": 32 * 1024 * 1024,  # a dead-lettered event is forwarded whole
        "retries": 5,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def make_worker_producer(settings: Settings) -> KafkaProducer:
    """The worker's producer: transactional (initialised) in transactional delivery mode, else idempotent.

    Each producer gets its own transactional.id: stale members are fenced through the consumer group's
    generation sent with the offsets (KIP-447), so the id need not be stable across restarts.
    """
    kafka = settings.kafka
    if kafka.delivery_mode != "transactional":
        return make_producer(settings)
    transactional_id = f"{kafka.transactional_id_prefix}-{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
    producer = make_producer(settings, transactional_id=transactional_id, enable_idempotence=True)
    producer.init_transactions()
    return producer


def ensure_topics(settings: Settings, topics: list[str], partitions: int = 4) -> None:
    """Create topics that do not exist yet (brokers that auto-create make this a no-op)."""
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name=topic, num_partitions=partitions, replication_factor=1)
            for topic in topics
            if topic not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
    finally:
        admin.close()


def read_topic(
    settings: Settings, topic: str, idle_s: float = 2.0, timeout_s: float = 30.0, **overrides: Any
) -> list[Any]:
    """Every record on `topic`, read from the beginning of each partition outside any group.

    Reads until nothing arrives for `idle_s` (the embedded broker's end offsets are not reliable).
    `overrides` are consumer options (e.g. ``isolation_level="read_committed"``).
    """
    options = {**settings.kafka.client_options(), "enable_auto_commit": False, "group_id": None, **overrides}
    consumer = KafkaConsumer(**options)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list[Any] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200)
            for batch in polled.values():
                records.extend(batch)
                quiet_since = time.monotonic()
        return records
    finally:
        consumer.close(autocommit=False)
