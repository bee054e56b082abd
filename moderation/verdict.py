"""The verdict: the one record every event ends in, whatever happened to its image."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

import numpy as np

# How image embeddings travel with verdicts and are stored: float16, 1 KB for a 512-wide ViT-B/32 one.
EMBEDDING_DTYPE = np.float16


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
    uncertain: bool = False  # flagged for review because a score fell in the policy's uncertain band
    embedding_reused: bool = False  # the image's bytes were scored before: no forward pass this time
    # Carried to storage, not part of the verdict's identity: the image's embedding (float16 [dim], for
    # the embeddings table; None on error or when not stored) and the shadow policies' verdicts.
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)
    shadows: tuple[ShadowVerdict, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class ShadowVerdict:
    """What a shadow (candidate) policy would have decided for an event: recorded, never acted on."""

    event_id: str
    policy_version: str
    policy_hash: str
    flagged: bool
    top_category: str
    action: str
    uncertain: bool
    scores: dict[str, float]
    created_at: datetime | None = field(default=None, compare=False)  # set by storage
