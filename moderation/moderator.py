"""Moderating a batch: load every image, score the loadable ones in one forward pass, decide each.

This is the Kafka-free core of the pipeline: a batch of parsed events in, one verdict per event out,
in the same order. An image that cannot be loaded (or scored) becomes an ``error`` verdict with a
reason; the rest of its batch is unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from moderation.decision import decide
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.images import LoadedImage, load_image
from moderation.policy import LoadedPolicy
from moderation.settings import ImageSettings
from moderation.verdict import Verdict, VerdictStatus

REASON_SCORE_FAILED = "score_failed"


class Scores(Protocol):
    probabilities: dict[str, float]
    best_prompt: str


class Scorer(Protocol):
    model_id: str

    def score(self, images: Sequence[Image.Image], policy: LoadedPolicy) -> Sequence[Scores]: ...


@dataclass(frozen=True)
class _Failure:
    reason: str
    detail: str


class Moderator:
    """Owns the scorer, the policy in force and the image loader pool."""

    def __init__(self, scorer: Scorer, policy: LoadedPolicy, limits: ImageSettings, loader_threads: int = 4) -> None:
        self.scorer = scorer
        self.policy = policy
        self.limits = limits
        # Fetching and decoding wait on I/O and release the GIL in Pillow, so threads overlap them.
        self._pool = ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="image-loader")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def moderate(self, events: Sequence[ImageEvent]) -> list[Verdict]:
        loaded = list(self._pool.map(self._load, events))
        policy = self.policy  # one policy for the whole batch, even if it is swapped meanwhile
        ok = [i for i, item in enumerate(loaded) if isinstance(item, LoadedImage)]
        scored: dict[int, Scores | _Failure] = {}
        score_ms = 0.0
        if ok:
            started = time.perf_counter()
            images = [loaded[i].image for i in ok]  # type: ignore[union-attr]
            try:
                for i, score in zip(ok, self.scorer.score(images, policy), strict=True):
                    scored[i] = score
            except Exception:  # noqa: BLE001 - isolate the image that breaks the batch, score the rest alone
                for i in ok:
                    scored[i] = self._score_alone(loaded[i].image, policy)  # type: ignore[union-attr]
            score_ms = (time.perf_counter() - started) * 1000.0 / len(ok)

        verdicts = []
        for i, event in enumerate(events):
            item = loaded[i]
            outcome = scored.get(i, item)
            if not isinstance(outcome, _Failure):
                try:
                    verdicts.append(self._verdict(event, policy, item, outcome, score_ms))  # type: ignore[arg-type]
                    continue
                except ValueError as exc:  # scores that do not fit the policy: this event's error, not the batch's
                    outcome = _Failure(REASON_SCORE_FAILED, str(exc))
            verdicts.append(self._error_verdict(event, policy, outcome, item))
        return verdicts

    def _load(self, event: ImageEvent) -> LoadedImage | _Failure:
        try:
            return load_image(event, self.limits)
        except ImageLoadError as exc:
            return _Failure(exc.reason, exc.detail)

    def _score_alone(self, image: Image.Image, policy: LoadedPolicy) -> Scores | _Failure:
        try:
            return self.scorer.score([image], policy)[0]
        except Exception as exc:  # noqa: BLE001 - one bad image must not fail its batch
            return _Failure(REASON_SCORE_FAILED, f"{type(exc).__name__}: {exc}")

    def _verdict(
        self, event: ImageEvent, policy: LoadedPolicy, image: LoadedImage, scores: Scores, score_ms: float
    ) -> Verdict:
        decision = decide(scores.probabilities, policy.policy)
        return Verdict(
            event_id=event.event_id,
            content_id=event.content_id,
            source=event.source,
            status=VerdictStatus.OK,
            flagged=decision.flagged,
            top_category=decision.top_category,
            action=decision.action,
            scores={name: round(float(p), 6) for name, p in scores.probabilities.items()},
            best_prompt=scores.best_prompt,
            policy_version=policy.version,
            policy_hash=policy.sha256,
            model_id=self.scorer.model_id,
            image_ref=event.image_ref,
            image_sha256=image.sha256,
            uploaded_at=event.uploaded_at,
            load_ms=round(image.load_ms, 3),
            score_ms=round(score_ms, 3),
        )

    def _error_verdict(
        self, event: ImageEvent, policy: LoadedPolicy, failure: _Failure, item: LoadedImage | _Failure
    ) -> Verdict:
        return Verdict(
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
            model_id=self.scorer.model_id,
            image_ref=event.image_ref,
            image_sha256=item.sha256 if isinstance(item, LoadedImage) else None,
            uploaded_at=event.uploaded_at,
            error_reason=failure.reason,
            error_detail=failure.detail[:1000],
            load_ms=round(item.load_ms, 3) if isinstance(item, LoadedImage) else None,
        )
