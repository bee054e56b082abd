"""The verdict: the one record every event ends in, whatever happened to its image.

This module sits at the bottom of the import graph (it imports nothing from `moderation` at run time),
so every step of a batch can build verdicts and pass failures along without import cycles: the values
those steps hand each other (`LoadFailure`, `Scores`) and the factories that turn them into verdicts
(`Verdict.ok`, `Verdict.error`, `ShadowVerdict.of`) live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # for annotations only: the factories read attributes, they import nothing
    from moderation.decision import Decision
    from moderation.events import ImageEvent
    from moderation.perceptual import PdqHash
    from moderation.policy import LoadedPolicy

# How image embeddings travel with verdicts and are stored: float16, 1 KB for a 512-wide ViT-B/32 one.
EMBEDDING_DTYPE = np.float16

REASON_SCORE_FAILED = "score_failed"  # the model failed on the batch and on the image alone
_DETAIL_LIMIT = 1000  # characters of an error's detail kept on its verdict


class VerdictStatus(str, Enum):
    OK = "ok"  # the image was scored and decided
    ERROR = "error"  # the image could not be loaded or decoded; `error_reason` says why


class MediaStatus(str, Enum):
    """What became of an item's reviewer copy of its image (see moderation/media.py)."""

    STORED = "stored"  # in the media store under `key`
    WITHHELD = "withheld"  # a category of the verdict forbids keeping the image: scores and hashes only
    OFF = "off"  # the worker keeps no media (MODERATION_MEDIA__ENABLED=false)
    FAILED = "failed"  # the image could not be re-encoded (its bytes were not kept, or decoding failed)
    PRUNED = "pruned"  # removed by retention


@dataclass(frozen=True)
class ReviewMedia:
    """The reviewer copy of one item's image, as the delivery step stored it before the verdict."""

    status: MediaStatus
    key: str | None = None  # where the media store holds it (status STORED)
    width: int | None = None
    height: int | None = None
    detail: str | None = None  # why not stored, for the console


class Scores(Protocol):
    """One image's scores under one policy, as a scorer returns them."""

    @property
    def probabilities(self) -> dict[str, float]: ...  # category -> score, in policy order

    @property
    def best_prompt(self) -> str: ...  # the prompt, across all categories, closest to the image


@dataclass(frozen=True)
class LoadFailure:
    """Why one event's image could not be used (loaded, decoded or scored); it becomes its ``error`` verdict."""

    reason: str
    detail: str


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
    # Not flagged, but drawn by the policy's audit sampling (`audit_rate`): sent to review all the same.
    audited: bool = False
    # The picture's PDQ perceptual hash (64 hex characters) and its quality (0-100), when it was computed.
    pdq_hash: str | None = None
    pdq_quality: int | None = None
    # Carried to storage, not part of the verdict's identity: the image's embedding (float16 [dim], for
    # the embeddings table; None on error or when not stored) and the shadow policies' verdicts.
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)
    shadows: tuple[ShadowVerdict, ...] = field(default=(), compare=False, repr=False)
    media: ReviewMedia | None = field(default=None, compare=False, repr=False)  # the reviewer copy, if any
    # False when a category of the policy forbids keeping this image (`keep_media: false`): no reviewer copy.
    keep_media: bool = field(default=True, compare=False, repr=False)

    @property
    def needs_review(self) -> bool:
        """Whether a person should look at it: flagged (uncertain included) or drawn for an audit."""
        return self.status is VerdictStatus.OK and (self.flagged or self.audited)

    @classmethod
    def ok(
        cls,
        event: ImageEvent,
        policy: LoadedPolicy,
        decision: Decision,
        scores: Scores,
        *,
        model_id: str,
        image_sha256: str,
        load_ms: float,
        score_ms: float,
        embedding_reused: bool = False,
        embedding: np.ndarray | None = None,
        shadows: tuple[ShadowVerdict, ...] = (),
        audited: bool = False,
        keep_media: bool = True,
        pdq: PdqHash | None = None,
    ) -> Verdict:
        """The verdict of an image scored and decided under `policy`."""
        return cls(
            event_id=event.event_id,
            content_id=event.content_id,
            source=event.source,
            status=VerdictStatus.OK,
            flagged=decision.flagged,
            top_category=decision.top_category,
            action=decision.action,
            scores=rounded(scores.probabilities),
            best_prompt=scores.best_prompt,
            policy_version=policy.version,
            policy_hash=policy.sha256,
            model_id=model_id,
            image_ref=event.image_ref,
            image_sha256=image_sha256,
            uploaded_at=event.uploaded_at,
            load_ms=round(load_ms, 3),
            score_ms=round(score_ms, 3),
            uncertain=decision.uncertain,
            embedding_reused=embedding_reused,
            audited=audited,
            keep_media=keep_media,
            embedding=embedding,
            shadows=shadows,
            pdq_hash=pdq.hex if pdq is not None else None,
            pdq_quality=pdq.quality if pdq is not None else None,
        )

    @classmethod
    def error(
        cls,
        event: ImageEvent,
        policy: LoadedPolicy,
        failure: LoadFailure,
        *,
        model_id: str,
        image_sha256: str | None = None,
        load_ms: float | None = None,
        pdq: PdqHash | None = None,
    ) -> Verdict:
        """The verdict of an event whose image could not be used; `image_sha256`, `load_ms` and `pdq` when
        it loaded."""
        return cls(
            event_id=event.event_id,
            content_id=event.content_id,
            source=event.source,
            status=VerdictStatus.ERROR,
            flagged=False,
            top_category=None,
            action=None,
            scores={},
            best_prompt=None,
            policy_version=policy.version,
            policy_hash=policy.sha256,
            model_id=model_id,
            image_ref=event.image_ref,
            image_sha256=image_sha256,
            uploaded_at=event.uploaded_at,
            error_reason=failure.reason,
            error_detail=failure.detail[:_DETAIL_LIMIT],
            load_ms=round(load_ms, 3) if load_ms is not None else None,
            pdq_hash=pdq.hex if pdq is not None else None,
            pdq_quality=pdq.quality if pdq is not None else None,
        )


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

    @classmethod
    def of(cls, event: ImageEvent, shadow: LoadedPolicy, decision: Decision, scores: Scores) -> ShadowVerdict:
        """What `shadow` decided for `event`'s image."""
        return cls(
            event_id=event.event_id,
            policy_version=shadow.version,
            policy_hash=shadow.sha256,
            flagged=decision.flagged,
            top_category=decision.top_category,
            action=decision.action,
            uncertain=decision.uncertain,
            scores=rounded(scores.probabilities),
        )


def rounded(scores: dict[str, float]) -> dict[str, float]:
    """Scores as stored: six decimals are far below any threshold's meaning and keep rows small."""
    return {name: round(float(p), 6) for name, p in scores.items()}
