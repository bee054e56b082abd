"""The image event contract: what upload services produce, one JSON object per uploaded image.

The contract is versioned by ``schema_version``; unknown fields are ignored so producers can add
fields before consumers know them. An event that breaks the contract raises `EventError` with a
machine-readable reason; the consumer sends it to the dead-letter topic instead of crashing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from functools import cached_property
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from moderation.exceptions import EventError

SCHEMA_VERSION = 1
URL_SCHEMES = ("file", "http", "https")

# The limits are the verdicts table's columns: an event the database cannot store must be refused here
# (dead-lettered), not retried against the database for ever.
# No NUL: PostgreSQL text cannot hold it, and an event it cannot store must not reach it.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00]+$")]
SourceName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]

# Reasons a raw event can be refused; they travel in the dead-letter message's headers.
REASON_EMPTY = "empty"
REASON_TOO_LARGE = "too_large"
REASON_INVALID_JSON = "invalid_json"
REASON_UNSUPPORTED_VERSION = "unsupported_schema_version"
REASON_INVALID_EVENT = "invalid_event"


class ImageEvent(BaseModel):
    """One uploaded image. The image is exactly one of `image_base64` or `image_url`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: StrictInt  # strict: true, "1" or 1.0 are contract errors, not version 1
    event_id: Identifier
    content_id: Identifier
    source: SourceName
    uploaded_at: AwareDatetime
    image_base64: str | None = None
    image_url: Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^\x00]*$")] | None = None

    @model_validator(mode="after")
    def _exactly_one_image(self) -> ImageEvent:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})")
        if (self.image_base64 is None) == (self.image_url is None):
            raise ValueError("exactly one of 'image_base64' and 'image_url' is required")
        if self.image_url is not None:
            scheme = urlsplit(self.image_url).scheme.lower()
            if scheme not in URL_SCHEMES:
                raise ValueError(f"image_url scheme {scheme!r} is not one of {', '.join(URL_SCHEMES)}")
            host = urlsplit(self.image_url).hostname
            if scheme == "file" and host not in (None, "", "localhost"):
                raise ValueError(f"file:// URLs name a local path; host {host!r} is not allowed")
        else:
            _ = self.inline_bytes  # decode now, so malformed base64 is a contract error, not an image error
        return self

    @cached_property
    def inline_bytes(self) -> bytes | None:
        if self.image_base64 is None:
            return None
        try:
            # Whitespace is dropped first: MIME-style base64 wraps lines (the `base64` tool does by default).
            return base64.b64decode("".join(self.image_base64.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image_base64 is not valid base64: {exc}") from exc

    @property
    def image_ref(self) -> str:
        """Where the image came from, safe to store and publish: the URL, or a hash of inline bytes."""
        if self.image_url is not None:
            return self.image_url
        return f"inline:sha256:{hashlib.sha256(self.inline_bytes or b'').hexdigest()}"


def parse_event(raw: bytes | None, max_bytes: int = 32 * 1024 * 1024) -> ImageEvent:
    """Parse one raw message value into an `ImageEvent`, or raise `EventError` saying why not."""
    return parse_message(raw, ImageEvent, max_bytes, SCHEMA_VERSION, REASON_INVALID_EVENT, "event")


_Message = TypeVar("_Message", bound=BaseModel)


def parse_message(
    raw: bytes | None, model: type[_Message], max_bytes: int, schema_version: int, invalid_reason: str, noun: str
) -> _Message:
    """A JSON object message validated into `model`, or `EventError` with the reason: the one decoder of
    every contract this project consumes (image events, review outcomes)."""
    if not raw:
        raise EventError(REASON_EMPTY, "the message has no value")
    if len(raw) > max_bytes:
        raise EventError(REASON_TOO_LARGE, f"{len(raw)} bytes is over the limit of {max_bytes}")
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8 and bad JSON, and also integers past Python's 4,300-digit limit;
        # RecursionError is `[[[[...` nested deeper than the interpreter's recursion limit. Either would
        # otherwise escape as a crash and the record would come back after every restart.
        raise EventError(REASON_INVALID_JSON, str(exc)) from exc
    if not isinstance(data, dict):
        raise EventError(REASON_INVALID_JSON, f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version != schema_version:
        raise EventError(REASON_UNSUPPORTED_VERSION, f"schema_version {version}; this consumer reads {schema_version}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or noun}: {err['msg']}" for err in exc.errors()
        )
        raise EventError(invalid_reason, problems) from exc
