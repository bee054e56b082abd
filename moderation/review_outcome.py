"""The review-outcome contract: what the review tool publishes when a reviewer confirms or overturns a flag.

Reviewer decisions are the only ground truth this system ever sees, so they are read as strictly as image
events: versioned by ``schema_version``, unknown fields ignored, wrong types refused rather than coerced.
A message that breaks the contract raises `EventError` with a machine-readable reason; the consumer
dead-letters it instead of guessing what the reviewer meant.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from moderation.events import (
    REASON_EMPTY,
    REASON_INVALID_JSON,
    REASON_TOO_LARGE,
    REASON_UNSUPPORTED_VERSION,
    parse_message,
)
from moderation.policy import CategoryName

SCHEMA_VERSION = 1
MAX_BYTES = 64 * 1024  # a decision is a few hundred bytes; anything near this is not one

# As long as the review_outcomes columns they are stored in (a test keeps them in step).
ID_MAX_LENGTH = 255

REASON_INVALID_OUTCOME = "invalid_outcome"
REASONS = (REASON_EMPTY, REASON_TOO_LARGE, REASON_INVALID_JSON, REASON_UNSUPPORTED_VERSION, REASON_INVALID_OUTCOME)

CONFIRMED = "confirmed"
OVERTURNED = "overturned"
Outcome = Literal["confirmed", "overturned"]

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH)]


class ReviewOutcome(BaseModel):
    """A reviewer's decision on one flagged event (the `event_id` of its verdict and review message).

    `category` is the unsafe category that really applies when it is not the flagged one: on a
    confirmation, the flag was right but for another category; on an overturn, the flagged category was
    wrong but another one applies. Without it, a confirmation means the flagged category, an overturn
    means the image is clean.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: StrictInt  # strict: "1", 1.0 and true are contract errors, not version 1
    event_id: Identifier
    outcome: Outcome
    category: CategoryName | None = None
    reviewer: Identifier | None = None
    decided_at: AwareDatetime

    @field_validator("decided_at", mode="before")
    @classmethod
    def _iso_text(cls, value: object) -> object:
        # Lax pydantic would read a number as a Unix timestamp; the contract says ISO 8601 text.
        if not isinstance(value, str):
            raise ValueError(f"expected an ISO 8601 string with a time zone, got {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _supported_version(self) -> ReviewOutcome:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})")
        return self

    def to_json(self) -> bytes:
        """The message value, as the review tool would produce it (for producers, tests and trials)."""
        return self.model_dump_json(exclude_none=True).encode()


def parse_outcome(raw: bytes | None, max_bytes: int = MAX_BYTES) -> ReviewOutcome:
    """Parse one raw message value into a `ReviewOutcome`, or raise `EventError` saying why not."""
    return parse_message(raw, ReviewOutcome, max_bytes, SCHEMA_VERSION, REASON_INVALID_OUTCOME, "outcome")
