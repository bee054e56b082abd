"""moderation/events.py: the image event contract and the reasons a raw message is refused."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from consumers.producer import image_event
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
from moderation.exceptions import EventError, ModerationError

IMAGE_BYTES = b"\x89PNG\r\n\x1a\n pretend image bytes \x00\x01\x02"
UPLOADED = datetime(2024, 5, 17, 12, 30, tzinfo=timezone.utc)


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def inline_event(**overrides: Any) -> dict[str, Any]:
    event = image_event(
        content_id="c-1", source="uploads", image_bytes=IMAGE_BYTES, event_id="e-1", uploaded_at=UPLOADED
    )
    event.update(overrides)
    return event


def url_event(url: str, **overrides: Any) -> dict[str, Any]:
    event = image_event(content_id="c-2", source="uploads", image_url=url, event_id="e-2", uploaded_at=UPLOADED)
    event.update(overrides)
    return event


def refused(raw: bytes | None, **kwargs: Any) -> EventError:
    with pytest.raises(EventError) as info:
        parse_event(raw, **kwargs)
    assert isinstance(info.value, ModerationError)
    assert str(info.value) == f"{info.value.reason}: {info.value.detail}"
    return info.value


# --- valid events -----------------------------------------------------------------------------------


def test_valid_inline_event() -> None:
    event = parse_event(encode(inline_event()))
    assert isinstance(event, ImageEvent)
    assert event.schema_version == SCHEMA_VERSION == 1
    assert event.event_id == "e-1"
    assert event.content_id == "c-1"
    assert event.source == "uploads"
    assert event.uploaded_at == UPLOADED
    assert event.image_url is None
    assert event.inline_bytes == IMAGE_BYTES


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/images/a.png",
        "http://127.0.0.1:8080/a.jpg",
        "https://cdn.example.com/a/b.webp?sig=abc",
        "HTTPS://CDN.EXAMPLE.COM/upper.png",
    ],
)
def test_valid_url_event(url: str) -> None:
    event = parse_event(encode(url_event(url)))
    assert event.image_url == url
    assert event.image_base64 is None
    assert event.inline_bytes is None
    assert event.image_ref == url


def test_uploaded_at_keeps_its_offset() -> None:
    tz = timezone(timedelta(hours=5, minutes=30))
    event = parse_event(encode(inline_event(uploaded_at="2024-05-17T18:00:00+05:30")))
    assert event.uploaded_at.utcoffset() == tz.utcoffset(None)
    assert event.uploaded_at == datetime(2024, 5, 17, 12, 30, tzinfo=timezone.utc)


def test_uploaded_at_z_suffix() -> None:
    event = parse_event(encode(inline_event(uploaded_at="2024-05-17T12:30:00Z")))
    assert event.uploaded_at == UPLOADED


def test_unknown_extra_fields_are_ignored() -> None:
    event = parse_event(encode(inline_event(new_field="from a newer producer", tags=["a", "b"], nested={"x": 1})))
    assert event.event_id == "e-1"
    assert not hasattr(event, "new_field")
    assert "new_field" not in event.model_dump()


def test_event_is_frozen() -> None:
    event = parse_event(encode(inline_event()))
    with pytest.raises(ValueError):
        event.content_id = "other"  # type: ignore[misc]


def test_parse_event_accepts_exactly_max_bytes() -> None:
    raw = encode(inline_event())
    assert parse_event(raw, max_bytes=len(raw)).event_id == "e-1"


# --- image_ref --------------------------------------------------------------------------------------


def test_inline_image_ref_is_a_hash_not_the_bytes() -> None:
    event = parse_event(encode(inline_event()))
    digest = hashlib.sha256(IMAGE_BYTES).hexdigest()
    assert event.image_ref == f"inline:sha256:{digest}"
    assert event.image_base64 is not None
    assert event.image_base64 not in event.image_ref
    assert base64.b64encode(IMAGE_BYTES).decode() not in event.image_ref


def test_inline_image_ref_differs_for_different_bytes() -> None:
    a = parse_event(encode(inline_event()))
    b = parse_event(encode(inline_event(image_base64=base64.b64encode(IMAGE_BYTES + b"!").decode())))
    assert a.image_ref != b.image_ref


def test_empty_inline_image_is_a_valid_event_with_no_bytes() -> None:
    # The contract is about shape; zero bytes is the image loader's problem (not_an_image), not a DLQ event.
    event = parse_event(encode(inline_event(image_base64="")))
    assert event.inline_bytes == b""
    assert event.image_ref == f"inline:sha256:{hashlib.sha256(b'').hexdigest()}"


# --- refused events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("uploaded_at", ["2024-05-17T12:30:00", "2024-05-17 12:30:00"])
def test_timezone_naive_uploaded_at_is_refused(uploaded_at: str) -> None:
    error = refused(encode(inline_event(uploaded_at=uploaded_at)))
    assert error.reason == REASON_INVALID_EVENT
    assert "uploaded_at" in error.detail
    assert "timezone" in error.detail


def test_uploaded_at_that_is_not_a_date_is_refused() -> None:
    error = refused(encode(inline_event(uploaded_at="yesterday")))
    assert error.reason == REASON_INVALID_EVENT
    assert "uploaded_at" in error.detail


def test_both_images_are_refused() -> None:
    error = refused(encode(inline_event(image_url="https://cdn.example.com/a.png")))
    assert error.reason == REASON_INVALID_EVENT
    assert "exactly one of 'image_base64' and 'image_url'" in error.detail


@pytest.mark.parametrize("nulls", [False, True], ids=["absent", "null"])
def test_neither_image_is_refused(nulls: bool) -> None:
    event = inline_event()
    del event["image_base64"]
    if nulls:
        event["image_base64"] = None
        event["image_url"] = None
    error = refused(encode(event))
    assert error.reason == REASON_INVALID_EVENT
    assert "exactly one of 'image_base64' and 'image_url'" in error.detail


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("ftp://files.example.com/a.png", "ftp"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("javascript:alert(1)", "javascript"),
        ("gopher://127.0.0.1:70/", "gopher"),
        ("/srv/images/a.png", ""),
    ],
)
def test_bad_url_scheme_is_refused(url: str, scheme: str) -> None:
    error = refused(encode(url_event(url)))
    assert error.reason == REASON_INVALID_EVENT
    assert f"image_url scheme {scheme!r} is not one of file, http, https" in error.detail


def test_overlong_url_is_refused() -> None:
    error = refused(encode(url_event("https://cdn.example.com/" + "a" * 4096)))
    assert error.reason == REASON_INVALID_EVENT
    assert "image_url" in error.detail


@pytest.mark.parametrize(
    "data",
    ["!!!not base64!!!", "aGVsbG8", "aGVs-bG8="],
    ids=["alphabet", "padding", "url-alphabet"],
)
def test_malformed_base64_is_an_invalid_event(data: str) -> None:
    error = refused(encode(inline_event(image_base64=data)))
    assert error.reason == REASON_INVALID_EVENT
    assert "image_base64" in error.detail


@pytest.mark.parametrize("data", ["aGVs bG8=", "aGVsbG8=\n", "aGVs\nbG8=\n", "\taGVsbG8="])
def test_wrapped_base64_is_accepted(data: str) -> None:
    # MIME-style line wrapping (the `base64` tool's default output) is whitespace, not corruption.
    assert parse_event(encode(inline_event(image_base64=data))).inline_bytes == b"hello"


def test_image_base64_must_be_a_string() -> None:
    error = refused(encode(inline_event(image_base64=12345)))
    assert error.reason == REASON_INVALID_EVENT
    assert "image_base64" in error.detail


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_unsupported_schema_version(version: int) -> None:
    error = refused(encode(inline_event(schema_version=version)))
    assert error.reason == REASON_UNSUPPORTED_VERSION
    assert f"schema_version {version}" in error.detail
    assert "reads 1" in error.detail


def test_unsupported_schema_version_wins_over_a_different_shape() -> None:
    # A future event may look nothing like today's; it is still "unsupported version", not "invalid".
    error = refused(json.dumps({"schema_version": 2, "payload": {"whatever": True}}).encode())
    assert error.reason == REASON_UNSUPPORTED_VERSION


def test_missing_schema_version_is_invalid() -> None:
    event = inline_event()
    del event["schema_version"]
    error = refused(encode(event))
    assert error.reason == REASON_INVALID_EVENT
    assert "schema_version" in error.detail
    assert "Field required" in error.detail


@pytest.mark.parametrize("field", ["event_id", "content_id", "source", "uploaded_at"])
def test_missing_required_field_is_named(field: str) -> None:
    event = inline_event()
    del event[field]
    error = refused(encode(event))
    assert error.reason == REASON_INVALID_EVENT
    assert f"{field}: Field required" in error.detail


@pytest.mark.parametrize(("field", "value"), [("event_id", ""), ("event_id", "x" * 256), ("source", "s" * 129)])
def test_identifier_length_limits(field: str, value: str) -> None:
    error = refused(encode(inline_event(**{field: value})))
    assert error.reason == REASON_INVALID_EVENT
    assert field in error.detail


def test_identifiers_at_the_limits_are_fine() -> None:
    event = parse_event(encode(inline_event(content_id="x" * 255, event_id="e" * 255, source="s" * 128)))
    assert (len(event.content_id), len(event.event_id), len(event.source)) == (255, 255, 128)


def test_the_contract_limits_are_the_verdict_columns() -> None:
    """An event the database cannot store must be dead-lettered, never retried against the database."""
    from moderation.events import ImageEvent
    from moderation.storage.models import verdicts_table

    for name in ("event_id", "content_id", "source"):
        limit = next(m.max_length for m in ImageEvent.model_fields[name].metadata if hasattr(m, "max_length"))
        assert limit == verdicts_table.c[name].type.length, name


@pytest.mark.parametrize("raw", [b"not json", b"{", b"{'single': 'quotes'}", b"\xff\xfe\xfa\x00garbage"])
def test_non_json_is_invalid_json(raw: bytes) -> None:
    assert refused(raw).reason == REASON_INVALID_JSON


@pytest.mark.parametrize(
    ("raw", "type_name"),
    [(b"[1, 2]", "list"), (b"42", "int"), (b'"a string"', "str"), (b"null", "NoneType"), (b"true", "bool")],
)
def test_non_object_json_is_invalid_json(raw: bytes, type_name: str) -> None:
    error = refused(raw)
    assert error.reason == REASON_INVALID_JSON
    assert error.detail == f"expected a JSON object, got {type_name}"


@pytest.mark.parametrize("raw", [b"", None])
def test_empty_message(raw: bytes | None) -> None:
    error = refused(raw)
    assert error.reason == REASON_EMPTY
    assert error.detail == "the message has no value"


def test_oversize_message_is_refused_before_parsing() -> None:
    raw = b"x" * 2049  # not even JSON: the size check comes first
    error = refused(raw, max_bytes=2048)
    assert error.reason == REASON_TOO_LARGE
    assert error.detail == "2049 bytes is over the limit of 2048"


def test_default_size_limit_is_32_mib() -> None:
    raw = b" " * (32 * 1024 * 1024 + 1)
    assert refused(raw).reason == REASON_TOO_LARGE


def test_event_error_details_are_joined_per_field() -> None:
    event = inline_event(event_id="", content_id="")
    error = refused(encode(event))
    assert error.reason == REASON_INVALID_EVENT
    assert "event_id:" in error.detail
    assert "content_id:" in error.detail
    assert "; " in error.detail


@pytest.mark.parametrize("version", [True, "1", 1.0])
def test_schema_version_must_be_the_integer_1(version: Any) -> None:
    assert refused(encode(inline_event(schema_version=version))).reason == REASON_INVALID_EVENT


@pytest.mark.parametrize("url", ["file://otherhost/srv/a.png", "file://10.0.0.1/a.png"])
def test_file_urls_with_a_remote_host_are_refused(url: str) -> None:
    error = refused(encode(url_event(url)))
    assert error.reason == REASON_INVALID_EVENT
    assert "host" in error.detail


@pytest.mark.parametrize("url", ["file:///srv/a.png", "file://localhost/srv/a.png"])
def test_local_file_urls_are_accepted(url: str) -> None:
    assert parse_event(encode(url_event(url))).image_url == url
