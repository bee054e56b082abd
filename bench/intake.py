"""(g) Kafka intake: how many small URL-carrying events one consumer process can poll and parse per second.

The intake must never be what limits a worker: a GPU worker scores thousands of images per second, and
each one is an event polled from Kafka and parsed against the contract first. This measures that part
alone, without the group protocol: a group-less consumer assigned every partition of a topic holding
M events, reading from the beginning; the clock runs from the first `poll` to the M-th parsed event.
kafka-python checks every record batch's CRC-32C; without the `crc32c` C extension it does so in pure
Python and caps intake near 5k/s on this machine, so the report says which implementation was used.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from common import say

CONSUMER_TUNING: dict[str, Any] = {
    "max_poll_records": 2000,
    "fetch_max_bytes": 64 * 1024 * 1024,
    "max_partition_fetch_bytes": 16 * 1024 * 1024,
    "fetch_min_bytes": 1,
    "fetch_max_wait_ms": 100,
    "receive_buffer_bytes": 4 * 1024 * 1024,
}
PRODUCER_TUNING: dict[str, Any] = {"linger_ms": 20, "batch_size": 256 * 1024, "acks": 1, "enable_idempotence": False}


def crc_implementation() -> dict[str, Any]:
    """Which CRC-32C kafka-python uses for record batches: the C extension or its pure-Python fallback."""
    from kafka.record import util

    c_version = None
    try:
        from importlib.metadata import version

        c_version = version("crc32c")
    except Exception:  # noqa: BLE001 - not installed
        c_version = None
    # calc_crc32c binds the implementation as a default argument at import time: that is what runs.
    bound = (util.calc_crc32c.__defaults__ or (None,))[0] or getattr(util, "_crc32c", None)
    uses_c = bound is not None and bound is getattr(util, "crc32c_c", None)
    return {
        "implementation": f"crc32c C extension {c_version}" if uses_c else "kafka-python's pure-Python CRC-32C",
        "c_extension": uses_c,
    }


def produce(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    """Write `count` events of ~300 bytes (https image URLs) with a throughput-tuned producer."""
    from kafka import KafkaProducer

    from consumers.producer import image_event

    now = datetime.now(timezone.utc)
    values = [
        json.dumps(
            image_event(
                content_id=f"photo-{i:08d}", source="uploads-bench", uploaded_at=now,
                image_url=f"https://cdn.example.com/u/{i:08d}/{uuid.uuid4().hex}.jpg",
            ),
            separators=(",", ":"),
        ).encode()
        for i in range(count)
    ]
    producer = KafkaProducer(bootstrap_servers=[bootstrap], **PRODUCER_TUNING)
    try:
        started = time.perf_counter()
        for i, value in enumerate(values):
            producer.send(topic, key=b"photo-%08d" % i, value=value)
        producer.flush()
        elapsed = time.perf_counter() - started
    finally:
        producer.close(timeout=10)
    return {"events": count, "mean_bytes": round(sum(map(len, values)) / count), "produce_per_s": count / elapsed}


def consume_rep(bootstrap: str, topic: str, count: int) -> float:
    """One pass over the topic from the beginning: poll + `parse_event` per record; events per second."""
    from kafka import KafkaConsumer, TopicPartition

    from moderation.events import parse_event

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=None, enable_auto_commit=False, **CONSUMER_TUNING)
    try:
        deadline = time.monotonic() + 30
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions or [])]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        parsed = 0
        started = time.perf_counter()
        deadline = time.monotonic() + 120
        while parsed < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    parse_event(record.value)
                    parsed += 1
        elapsed = time.perf_counter() - started
    finally:
        consumer.close(autocommit=False)
    if parsed < count:
        raise RuntimeError(f"intake read only {parsed} of {count} events within 120 s")
    return parsed / elapsed


def intake(bootstrap: str, count: int, reps: int) -> dict[str, Any]:
    """Produce `count` events once, then read them `reps` times; medians are taken by the caller."""
    topic = f"bench-intake-{uuid.uuid4().hex[:8]}"
    say(f"(g) intake: producing {count} small events")
    produced = produce(bootstrap, topic, count)
    rates = []
    for rep in range(reps):
        rates.append(consume_rep(bootstrap, topic, count))
        say(f"(g) intake rep {rep + 1}/{reps}: {rates[-1]:,.0f} events/s")
    return {**produced, "consume_parse_per_s": rates, "crc": crc_implementation(), "consumer": CONSUMER_TUNING}
