"""Producing image events: what an upload service does, for the demo, the tests and operators' trials."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from consumers.clients import make_producer
from moderation.events import SCHEMA_VERSION
from moderation.settings import Settings


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
    futures = []
    for event in events:
        if isinstance(event, bytes):  # already-encoded (or deliberately broken) payloads pass through
            futures.append(producer.send(topic, value=event))
            continue
        value = json.dumps(event, separators=(",", ":")).encode()
        futures.append(producer.send(topic, key=str(event.get("content_id", "")).encode(), value=value))
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    return len(futures)


def produce_image_files(settings: Settings, paths: Iterable[Path], *, source: str, inline: bool) -> int:
    producer = make_producer(settings)
    try:
        events = [file_event(path, source=source, inline=inline) for path in paths]
        return send_events(producer, settings.kafka.input_topic, events)
    finally:
        producer.close(timeout=10)
