"""Kafka clients configured from settings: the group consumer, the producer, topic creation."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from consumers.errors import CommandError
from consumers.settings import KafkaSettings, Settings
from moderation.exceptions import ConfigurationError, ModerationError


class BrokerUnreachable(KafkaTimeoutError, ModerationError):
    """No bootstrap server answered within `bootstrap_timeout_ms`.

    Still a KafkaError, so a worker that renews its producer during an outage keeps retrying; and one of
    the project's errors, under the one root.
    """


@contextmanager
def bootstrapping(kafka: KafkaSettings) -> Iterator[None]:
    """Around a client's constructor, which blocks until a bootstrap server answers or the timeout ends."""
    try:
        yield
    except KafkaTimeoutError as exc:  # kafka-python's "Unable to bootstrap from [...]"
        raise BrokerUnreachable(f"no broker answered within {kafka.bootstrap_timeout_ms} ms") from exc


def kafka_failure(kafka: KafkaSettings, exc: KafkaError) -> CommandError:
    """A Kafka error as the one line a command ends with, naming the servers it tried."""
    servers = kafka.bootstrap_servers
    # A client built without `bootstrapping` fails the same way, with kafka-python's own message.
    unreachable = isinstance(exc, BrokerUnreachable) or (
        isinstance(exc, KafkaTimeoutError) and str(exc.args[0] if exc.args else "").startswith("Unable to bootstrap")
    )
    if unreachable:
        return CommandError(
            f"cannot reach Kafka at {servers} (no broker answered within {kafka.bootstrap_timeout_ms} ms): "
            "check MODERATION_KAFKA__BOOTSTRAP_SERVERS and that the brokers are up"
        )
    return CommandError(f"Kafka at {servers}: {exc}")


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
    with bootstrapping(kafka):
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
    with bootstrapping(settings.kafka):
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


def ensure_topics(settings: Settings, topics: list[str], partitions: int | None = None) -> None:
    """Create topics that do not exist yet, with `partitions` or else the brokers' defaults.

    The brokers' defaults (`num.partitions`, `default.replication.factor`, sent as -1: KIP-464) are the
    operators' choice for a cluster; a topic created here with a guessed count would override it. A client
    without the right to create topics fails with one line saying what to create.
    """
    with bootstrapping(settings.kafka):
        admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name=topic, num_partitions=partitions or -1, replication_factor=-1)
            for topic in topics
            if topic not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
            except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
                names = ", ".join(topic.name for topic in missing)
                raise ConfigurationError(
                    f"topics {names} do not exist and this client may not create them ({type(exc).__name__}): "
                    "create them before starting the workers"
                ) from exc
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
