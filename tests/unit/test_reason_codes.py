"""The README's reason-code table is the code's: every code documented, nothing documented that is not raised."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from moderation.events import parse_event
from moderation.exceptions import EventError, ModerationError
from moderation.fetch import fetch_bytes
from moderation.settings import ImageSettings
from tests.support.paths import REPO

README = REPO / "README.md"
# Every module that defines reason codes (REASON_* constants): a new one must be added here and documented.
MODULES = [
    "moderation.events",
    "moderation.fetch",
    "moderation.images",
    "moderation.moderator",
    "moderation.review_outcome",
    "consumers.delivery",
]


def code_reasons() -> set[str]:
    reasons = set()
    for name in MODULES:
        module = importlib.import_module(name)
        reasons |= {
            value for key, value in vars(module).items() if key.startswith("REASON_") and isinstance(value, str)
        }
    return reasons


def documented_reasons() -> dict[str, str]:
    text = README.read_text()
    section = text[text.index("### Reason codes") :]
    section = section[: section.index("\n### ", 1)]
    return {match.group(1): match.group(2) for match in re.finditer(r"^\| `([a-z_]+)` \| ([^|]+) \|", section, re.M)}


def test_every_reason_code_is_documented_and_every_documented_code_exists() -> None:
    documented = documented_reasons()
    assert documented, "no reason-code table in the README"
    assert set(documented) == code_reasons()


def test_the_table_says_where_each_code_appears() -> None:
    where = documented_reasons()
    assert all("dead letter" in place or "error verdict" in place for place in where.values()), where
    assert "dead letter" in where["invalid_json"] and "error verdict" in where["fetch_failed"]


def event_bytes(**fields: object) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": "e-1",
            "content_id": "c-1",
            "source": "app",
            "uploaded_at": "2026-12-01T00:00:00Z",
            **fields,
        }
    ).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[]", "invalid_json"),
        (b"null", "invalid_json"),
        (b'"x"', "invalid_json"),
        (b"", "empty"),
        (b"{}", "invalid_event"),
        (event_bytes(schema_version=9, image_url="https://x/y.jpg"), "unsupported_schema_version"),
    ],
)
def test_bad_events_get_the_documented_code(raw: bytes, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw)
    assert caught.value.reason == reason
    assert reason in documented_reasons()


def test_the_examples_the_table_gives_for_urls(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    limits = ImageSettings(file_root=tmp_path)
    cases = {
        (tmp_path / "a-directory").as_uri(): "fetch_failed",
        "http://user:secret@example.com/x.jpg": "not_allowed",
        (tmp_path / "missing.jpg").as_uri(): "not_found",
    }
    for url, reason in cases.items():
        with pytest.raises(ModerationError) as caught:
            fetch_bytes(parse_event(event_bytes(image_url=url)), limits)
        assert caught.value.reason == reason, url  # type: ignore[attr-defined]
