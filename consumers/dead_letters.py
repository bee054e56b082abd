"""Dead letters: the copy of a bad record that goes to the dead-letter topic instead of being dropped.

One builder for every consumer here (the worker's events, the review-outcomes consumer): the original
bytes untouched, why and where from in `dlq.*` headers, the record's own headers kept. A dead letter too
large to forward whole carries a prefix of the bytes, with the original size and hash in headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone

import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from consumers.messages import Headers, OutgoingMessage, header
from moderation.events import REASON_TOO_LARGE
from moderation.exceptions import EventError

log = structlog.get_logger("moderation.dead_letters")

# A dead letter that cannot carry the original bytes (over the producer's max_request_size, or refused by
# a broker whose message.max.bytes is lower) carries this much of them, with the size and hash in headers.
DEAD_LETTER_PREFIX_BYTES = 64 * 1024
_RECORD_OVERHEAD_BYTES = 1024  # batch and record framing, on top of key, value and headers


def dead_letter_message(
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    reason: str,
    detail: str,
    source_topic: str,
    partition: int,
    offset: int,
) -> OutgoingMessage:
    """The original bytes, untouched, with why and where from in headers (original headers kept)."""
    extra: Headers = [
        ("dlq.reason", reason.encode()),
        ("dlq.detail", detail[:2000].encode(errors="replace")),
        ("dlq.source.topic", source_topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.failed_at", datetime.now(timezone.utc).isoformat().encode()),
    ]
    return OutgoingMessage(topic=topic, key=key, value=value or b"", headers=[*headers, *extra])


def dead_letter_for(record: ConsumerRecord, error: EventError, topic: str, what: str = "event") -> OutgoingMessage:
    """The dead-letter copy of `record`, which breaks its contract as `error` says; logged as `what`."""
    log.warning(
        f"{what} dead-lettered", reason=error.reason, detail=error.detail[:300],
        topic=record.topic, partition=record.partition, offset=record.offset,
    )
    return dead_letter_message(
        topic, key=record.key, value=record.value, headers=list(record.headers or []),
        reason=error.reason, detail=error.detail, source_topic=record.topic,
        partition=record.partition, offset=record.offset,
    )


def is_dead_letter(message: OutgoingMessage) -> bool:
    return header(message.headers, "dlq.reason") is not None


def message_size(message: OutgoingMessage) -> int:
    """What the producer counts against max_request_size, near enough: key, value, headers, framing."""
    headers = sum(len(name) + len(value or b"") for name, value in message.headers)
    return len(message.key or b"") + len(message.value) + headers + _RECORD_OVERHEAD_BYTES


def truncated_dead_letter(message: OutgoingMessage, why: str) -> OutgoingMessage:
    """`message` (a dead letter) with a prefix of its value instead of all of it, reason `too_large`.

    Headers say what was cut: `dlq.original.size` and `dlq.original.sha256` of the whole value (so it can be
    matched with the producer's copy), and the original reason when it was another. The record's own
    headers are kept unless they alone are too large to forward.
    """
    original = message.value
    reason = header(message.headers, "dlq.reason") or REASON_TOO_LARGE
    detail = header(message.headers, "dlq.detail") or ""
    own = [(name, value) for name, value in message.headers if not name.startswith("dlq.")]
    kept = [(name, value) for name, value in message.headers if name.startswith("dlq.") and name not in (
        "dlq.reason", "dlq.detail")]
    if sum(len(name) + len(value or b"") for name, value in own) > DEAD_LETTER_PREFIX_BYTES:
        own = []
        kept.append(("dlq.headers_dropped", b"true"))
    note = f"{why}; this dead letter carries its first {min(len(original), DEAD_LETTER_PREFIX_BYTES)} bytes"
    if reason != REASON_TOO_LARGE:
        kept.append(("dlq.original.reason", reason.encode()))
    extra = [
        ("dlq.reason", REASON_TOO_LARGE.encode()),
        ("dlq.detail", f"{detail}; {note}"[:2000].encode(errors="replace")),
        ("dlq.original.size", str(len(original)).encode()),
        ("dlq.original.sha256", hashlib.sha256(original).hexdigest().encode()),
    ]
    return OutgoingMessage(
        topic=message.topic,
        key=(message.key or b"")[:DEAD_LETTER_PREFIX_BYTES] or None,
        value=original[:DEAD_LETTER_PREFIX_BYTES],
        headers=[*own, *kept, *extra],
    )


def fit(message: OutgoingMessage, limit: int) -> OutgoingMessage:
    """`message` if the producer takes it (`limit`: its max_request_size), else the prefix dead letter."""
    if message_size(message) <= limit:
        return message
    log.warning("dead letter too large to forward whole; sending a prefix", size=len(message.value), limit=limit)
    return truncated_dead_letter(message, f"the message ({len(message.value)} bytes) is over the "
                                 f"producer's max_request_size ({limit} bytes)")


def shrunk(outgoing: Sequence[OutgoingMessage], exc: KafkaError) -> list[OutgoingMessage] | None:
    """After the broker refused a message for its size: the dead letters cut to a prefix, or None when
    there is nothing left to cut (the refusal then stands)."""
    cut = [
        truncated_dead_letter(m, f"the broker refused it as too large ({type(exc).__name__})")
        if is_dead_letter(m) and len(m.value) > DEAD_LETTER_PREFIX_BYTES
        else m
        for m in outgoing
    ]
    return cut if cut != list(outgoing) else None
