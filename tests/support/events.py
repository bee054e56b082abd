"""Image events to moderate: one parsed event, a stream of colour files, and a mixed corpus with its outcomes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from consumers.producer import file_event, image_event
from moderation.events import ImageEvent
from moderation.testmodel import make_colour_image

# What the test policy (support.paths.POLICY) does with each flagged colour; the others are allowed.
FLAGGED_COLOURS = {"red": "review", "yellow": "block"}


def event(event_id: str, data: bytes, source: str = "uploads") -> ImageEvent:
    """A contract event carrying `data` inline."""
    return ImageEvent.model_validate({
        "schema_version": 1, "event_id": event_id, "content_id": f"content-{event_id}", "source": source,
        "uploaded_at": "2026-11-27T10:00:00Z", "image_base64": base64.b64encode(data).decode(),
    })


def colour_events(directory: Path, count: int) -> list[dict[str, Any]]:
    """`count` file:// events of PNGs cycling red, blue, yellow, green; the content id is the file stem."""
    directory.mkdir(parents=True, exist_ok=True)
    events = []
    for i in range(count):
        colour = ("red", "blue", "yellow", "green")[i % 4]
        path = directory / f"{i:03d}-{colour}.png"
        make_colour_image(colour, (96, 72), seed=i).save(path, "PNG")
        events.append(file_event(path, source="pipeline-test", content_id=path.stem))
    return events


def corpus(directory: Path, per_colour: int = 3) -> tuple[list[dict[str, Any] | bytes], dict[str, str]]:
    """Colour images (file:// and inline, JPEG and PNG), broken images and broken events.

    Returns the events to produce and, per content id, what should happen to it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    events: list[dict[str, Any] | bytes] = []
    expected: dict[str, str] = {}
    for colour in ("red", "blue", "green", "yellow"):
        for i in range(per_colour):
            fmt = "JPEG" if i % 2 == 0 else "PNG"
            path = directory / f"{colour}-{i}.{fmt.lower()}"
            make_colour_image(colour, (160 + 40 * i, 120 + 30 * i), seed=500 + i).save(path, fmt)
            events.append(file_event(path, source="test", inline=i % 2 == 1, content_id=path.stem))
            expected[path.stem] = FLAGGED_COLOURS.get(colour, "allow")
    truncated = directory / "truncated.jpg"
    truncated.write_bytes((directory / "red-0.jpeg").read_bytes()[:200])
    events.append(file_event(truncated, source="test", content_id="truncated"))
    events.append(image_event(content_id="text", source="test", image_bytes=b"not an image at all"))
    events.append(image_event(content_id="missing", source="test", image_url=(directory / "gone.png").as_uri()))
    expected.update({"truncated": "error:decode_failed", "text": "error:not_an_image", "missing": "error:not_found"})
    events.append(b"{not json")
    events.append(json.dumps({"schema_version": 1, "event_id": "no-fields"}).encode())
    future_version = {**image_event(content_id="v9", source="t", image_url="file:///x"), "schema_version": 9}
    events.append(json.dumps(future_version).encode())
    return events, expected
