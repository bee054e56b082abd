"""Property-based tests of `moderation.events.parse_event`: whatever the bytes, an event or a known reason.

A raw message comes from any producer on the topic. `parse_event` must return an `ImageEvent` or raise
`EventError` with one of the documented dead-letter reasons; anything else would escape into the worker,
stop it, and come back after every restart. Valid events, however odd their text, must survive the
trip through JSON unchanged.
"""

from __future__ import annotations

import base64
import json
import string
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from moderation.events import (
    REASON_EMPTY,
    REASON_INVALID_EVENT,
    REASON_INVALID_JSON,
    REASON_TOO_LARGE,
    REASON_UNSUPPORTED_VERSION,
    SCHEMA_VERSION,
    ImageEvent,
    parse_event,
)
from moderation.exceptions import EventError

REASONS = {REASON_EMPTY, REASON_TOO_LARGE, REASON_INVALID_JSON, REASON_UNSUPPORTED_VERSION, REASON_INVALID_EVENT}
REQUIRED = ("schema_version", "event_id", "content_id", "source", "uploaded_at")
FIELDS = (*REQUIRED, "image_url", "image_base64")

# Nothing written into the working tree: no example database (failures print how to reproduce them), and
# Hypothesis' own caches go to the temporary directory.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "moderation-hypothesis")
PROPERTIES = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(raw: bytes | None, **kwargs: Any) -> ImageEvent | EventError:
    """What parse_event makes of `raw`; any exception other than EventError fails the test."""
    try:
        event = parse_event(raw, **kwargs)
    except EventError as exc:
        assert exc.reason in REASONS, exc
        assert isinstance(exc.detail, str)
        return exc
    assert isinstance(event, ImageEvent)
    return event


# --- strategies -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


def max_length(field: str) -> int:
    """The contract's own limit on a string field, so the strategies follow it when it changes."""
    return next(c.max_length for c in ImageEvent.model_fields[field].metadata if getattr(c, "max_length", None))


def identifiers(field: str) -> st.SearchStrategy[str]:
    # Any Unicode but lone surrogates (not UTF-8) and NUL (refused: PostgreSQL text cannot hold it).
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=max_length(field))


@given(st.sampled_from(["event_id", "content_id", "source"]), st.text(max_size=20), st.text(max_size=20))
def test_a_nul_in_an_identifier_is_an_invalid_event(field: str, before: str, after: str) -> None:
    event = {
        "schema_version": 1, "event_id": "e", "content_id": "c", "source": "s",
        "uploaded_at": "2026-11-27T10:00:00+00:00", "image_base64": "",
        field: f"{before}\x00{after}",
    }
    with pytest.raises(EventError) as info:
        parse_event(json.dumps(event).encode())
    assert info.value.reason == REASON_INVALID_EVENT and field in info.value.detail


offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
aware_datetimes = st.datetimes(timezones=offsets)
url_text = st.text(alphabet=string.ascii_letters + string.digits + "-._~%/?=&+", max_size=200)
hosts = st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True)
image_urls = st.one_of(
    st.builds(lambda s, h, p: f"{s}://{h}/{p}", st.sampled_from(["http", "https", "HTTPS"]), hosts, url_text),
    st.builds(lambda p: f"file:///{p}", url_text),
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": draw(identifiers("event_id")),
        "content_id": draw(identifiers("content_id")),
        "source": draw(identifiers("source")),
        "uploaded_at": draw(aware_datetimes).isoformat(),
    }
    if draw(st.booleans()):
        event["image_url"] = draw(image_urls)
    else:
        data = draw(st.binary(max_size=1024))
        # MIME-style line wrapping is part of the contract (the `base64` tool wraps by default).
        wrap = draw(st.booleans())
        event["image_base64"] = (base64.encodebytes(data) if wrap else base64.b64encode(data)).decode()
    extra = draw(st.dictionaries(st.text(max_size=12).filter(lambda k: k not in FIELDS), json_values, max_size=3))
    return {**extra, **event}


def encode(event: Any) -> bytes:
    return json.dumps(event).encode()


# --- anything at all --------------------------------------------------------------------------------


@PROPERTIES
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_an_event_or_a_known_reason(raw: bytes) -> None:
    result = outcome(raw)
    if not raw:
        assert isinstance(result, EventError) and result.reason == REASON_EMPTY


@PROPERTIES
@given(json_values)
def test_arbitrary_json_is_an_event_or_a_known_reason(value: Any) -> None:
    result = outcome(encode(value))
    if not isinstance(value, dict):
        assert isinstance(result, EventError) and result.reason == REASON_INVALID_JSON
    else:
        assert isinstance(result, EventError)  # a random object is never a complete event
        assert result.reason in (REASON_INVALID_EVENT, REASON_UNSUPPORTED_VERSION)


@PROPERTIES
@given(st.text(max_size=500))
def test_arbitrary_text_is_an_event_or_a_known_reason(text: str) -> None:
    for encoding in ("utf-8", "utf-16", "utf-32"):  # json.loads also detects UTF-16 and UTF-32
        outcome(text.encode(encoding))


# --- valid events -----------------------------------------------------------------------------------


@PROPERTIES
@given(valid_events())
def test_valid_events_round_trip(event: dict[str, Any]) -> None:
    parsed = parse_event(encode(event))
    assert (parsed.event_id, parsed.content_id, parsed.source) == (
        event["event_id"],
        event["content_id"],
        event["source"],
    )
    assert parsed.uploaded_at == datetime.fromisoformat(event["uploaded_at"])
    assert parsed.uploaded_at.utcoffset() == datetime.fromisoformat(event["uploaded_at"]).utcoffset()
    if "image_url" in event:
        url = event["image_url"]
        assert (parsed.image_url, parsed.inline_bytes, parsed.image_ref) == (url, None, url)
    else:
        assert parsed.inline_bytes == base64.b64decode("".join(event["image_base64"].split()))
        assert parsed.image_ref.startswith("inline:sha256:")
    # What the consumer holds can be written out and read back as the same event.
    again = parse_event(parsed.model_dump_json().encode())
    assert again.model_dump() == parsed.model_dump()


@PROPERTIES
@given(valid_events(), st.sampled_from(REQUIRED))
def test_a_missing_field_is_an_invalid_event(event: dict[str, Any], field: str) -> None:
    del event[field]
    result = outcome(encode(event))
    assert isinstance(result, EventError) and result.reason == REASON_INVALID_EVENT
    assert field in result.detail


@PROPERTIES
@given(valid_events(), st.integers().filter(lambda v: v != SCHEMA_VERSION))
def test_another_schema_version_is_unsupported(event: dict[str, Any], version: int) -> None:
    result = outcome(encode({**event, "schema_version": version}))
    assert isinstance(result, EventError) and result.reason == REASON_UNSUPPORTED_VERSION


@PROPERTIES
@given(valid_events(), st.sampled_from(FIELDS), json_values)
def test_any_field_replaced_by_any_value_is_an_event_or_a_known_reason(
    event: dict[str, Any], field: str, value: Any
) -> None:
    result = outcome(encode({**event, field: value}))
    if field in ("event_id", "content_id", "source") and not isinstance(value, str):
        assert isinstance(result, EventError) and result.reason == REASON_INVALID_EVENT  # no type coercion


@PROPERTIES
@given(valid_events(), st.data())
def test_byte_level_corruption_is_an_event_or_a_known_reason(event: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(encode(event))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            raw[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        elif action == "insert":
            raw.insert(position, data.draw(st.integers(min_value=0, max_value=255)))
        elif len(raw) > 1:
            del raw[position]
    outcome(bytes(raw))


@PROPERTIES
@given(valid_events(), st.integers(min_value=2, max_value=4096))
def test_the_size_limit_is_exact(event: dict[str, Any], max_bytes: int) -> None:
    raw = encode(event)
    result = outcome(raw, max_bytes=max_bytes)
    assert (isinstance(result, EventError) and result.reason == REASON_TOO_LARGE) is (len(raw) > max_bytes)


@PROPERTIES
@given(valid_events())
def test_both_images_at_once_is_an_invalid_event(event: dict[str, Any]) -> None:
    both = {**event, "image_url": "https://cdn.example.com/a.jpg", "image_base64": base64.b64encode(b"x").decode()}
    result = outcome(encode(both))
    assert isinstance(result, EventError) and result.reason == REASON_INVALID_EVENT


@pytest.mark.parametrize("field", ["event_id", "content_id", "source"])
def test_identifier_limits_are_exact(field: str) -> None:
    event = {
        "schema_version": SCHEMA_VERSION,
        **dict.fromkeys(("event_id", "content_id", "source"), "x"),
        "uploaded_at": "2026-11-27T16:58:06Z",
        "image_url": "https://cdn.example.com/a.jpg",
    }
    limit = max_length(field)
    assert isinstance(outcome(encode({**event, field: "é" * limit})), ImageEvent)
    too_long = outcome(encode({**event, field: "é" * (limit + 1)}))
    assert isinstance(too_long, EventError) and too_long.reason == REASON_INVALID_EVENT


# --- the cases random generation rarely reaches -----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # deeper than the interpreter's recursion limit: RecursionError inside json
        b'{"a":' * 100_000,
        b'{"schema_version": ' + b"9" * 5_000 + b"}",  # over Python's 4,300-digit int limit: ValueError
        b"\xff\xfe\x00\x00" + b"\x00" * 7,  # a UTF-32 byte order mark and nothing valid after it
        b"\x00",
        b"   ",
        b"null",
    ],
    ids=["deep-array", "deep-object", "huge-int", "utf32-bom", "nul", "blank", "null"],
)
def test_pathological_json_is_invalid_json(raw: bytes) -> None:
    result = outcome(raw)
    assert isinstance(result, EventError) and result.reason == REASON_INVALID_JSON


def test_a_huge_but_legal_schema_version_is_unsupported() -> None:
    result = outcome(b'{"schema_version": ' + b"9" * 4_000 + b"}")
    assert isinstance(result, EventError) and result.reason == REASON_UNSUPPORTED_VERSION
