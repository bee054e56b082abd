"""Producing image events: what an upload service does, for the demo, the tests and operators' trials."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from consumers.clients import make_producer
from consumers.errors import CommandError
from consumers.messages import OutgoingMessage
from consumers.publishing import publish
from consumers.settings import Settings
from moderation.events import SCHEMA_VERSION


def image_event(
    *,
    content_id: str,
    source: str,
    image_url: str | None = None,
    image_bytes: bytes | None = None,
    event_id: str | None = None,
    uploaded_at: datetime | None = None,
) -> dict[str, Any]:
    """One event in the documented contract; give exactly one of `image_url` and `image_bytes`."""
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id or str(uuid.uuid4()),
        "content_id": content_id,
        "source": source,
        "uploaded_at": (uploaded_at or datetime.now(timezone.utc)).isoformat(),
    }
    if image_bytes is not None:
        event["image_base64"] = base64.b64encode(image_bytes).decode()
    if image_url is not None:
        event["image_url"] = image_url
    return event


def file_event(path: Path, *, source: str, inline: bool = False, content_id: str | None = None) -> dict[str, Any]:
    path = path.resolve()
    content_id = content_id or path.name
    if inline:
        return image_event(content_id=content_id, source=source, image_bytes=path.read_bytes())
    return image_event(content_id=content_id, source=source, image_url=path.as_uri())


def send_events(producer: KafkaProducer, topic: str, events: Iterable[dict[str, Any] | bytes]) -> int:
    """Send events keyed by content id (so one item's events stay in order) and wait for every ack."""
    messages = [_message(topic, event) for event in events]
    publish(producer, messages, timeout_s=30)
    return len(messages)


def _message(topic: str, event: dict[str, Any] | bytes) -> OutgoingMessage:
    if isinstance(event, bytes):  # already-encoded (or deliberately broken) payloads pass through, unkeyed
        return OutgoingMessage(topic, None, event, [])
    value = json.dumps(event, separators=(",", ":")).encode()
    return OutgoingMessage(topic, str(event.get("content_id", "")).encode(), value, [])


def check_image_files(paths: Iterable[Path]) -> None:
    """Refuse the whole command if any path is not a regular file: half a list produced helps nobody."""
    for path in paths:
        if not path.exists():
            raise CommandError.user(f"{path}: no such file; nothing was produced")
        if not path.is_file():
            raise CommandError.user(f"{path}: not a regular file; nothing was produced")


def produce_image_files(settings: Settings, paths: Sequence[Path], *, source: str, inline: bool) -> int:
    """One event per file; every file is checked (and, inline, read) before the broker is contacted."""
    check_image_files(paths)
    events = [file_event(path, source=source, inline=inline) for path in paths]
    producer = make_producer(settings)
    try:
        return send_events(producer, settings.kafka.input_topic, events)
    finally:
        producer.close(timeout=10)
