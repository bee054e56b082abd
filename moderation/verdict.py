"""The verdict: the one record every event ends in, whatever happened to its image."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum


class VerdictStatus(str, Enum):
    OK = "ok"  # the image was scored and decided
    ERROR = "error"  # the image could not be loaded or decoded; `error_reason` says why


@dataclass(frozen=True)
class Verdict:
    event_id: str
    content_id: str
    source: str
    status: VerdictStatus
    flagged: bool
    top_category: str | None
    action: str | None  # "allow" for clean images, the category's action when flagged, None on error
    scores: dict[str, float]  # category -> probability; empty on error
    best_prompt: str | None
    policy_version: str
    policy_hash: str
    model_id: str
    image_ref: str  # the URL, or "inline:<sha256>" for base64 images: never the bytes themselves
    image_sha256: str | None
    uploaded_at: datetime
    error_reason: str | None = None
    error_detail: str | None = None
    load_ms: float | None = None
    score_ms: float | None = None
    created_at: datetime | None = field(default=None, compare=False)  # set by storage
