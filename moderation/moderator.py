"""Moderating a batch: load every image, score the loadable ones in one forward pass, decide each.

This is the Kafka-free core of the pipeline: a batch of parsed events in, one verdict per event out,
in the same order. An image that cannot be loaded (or scored) becomes an ``error`` verdict with a
reason; the rest of its batch is unaffected.

The work comes in two halves so a pipelined worker can overlap them: `load_one` / `load` fetch, decode
and preprocess (the model input is made here, in the loader threads, when the scorer exposes a
`preprocess_spec`), and `score` runs the forward pass and the decisions. `moderate` is both in turn.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from PIL import Image

from moderation.decision import decide
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.images import REASON_DECODE_FAILED, LoadedImage, load_bytes, load_image
from moderation.policy import LoadedPolicy
from moderation.settings import ImageSettings
from moderation.verdict import Verdict, VerdictStatus

REASON_SCORE_FAILED = "score_failed"
REASON_LOAD_FAILED = "load_failed"  # an unexpected error while loading, not one of images.py's reasons


class Scores(Protocol):
    probabilities: dict[str, float]
    best_prompt: str


class Scorer(Protocol):
    """What the moderator needs. A scorer that also has `preprocess_spec` and `score_pixels` (ClipScorer)
    gets model inputs made in the loader threads; one with `gpu_decode` true gets JPEG bytes to decode."""

    model_id: str

    def score(self, images: Sequence[Image.Image], policy: LoadedPolicy) -> Sequence[Scores]: ...


@dataclass(frozen=True)
class LoadFailure:
    """Why one event's image could not be used; it becomes that event's ``error`` verdict."""

    reason: str
    detail: str


@dataclass(frozen=True)
class LoadedBatch:
    """Events and, position for position, what loading each gave: `load`'s result, `score`'s input."""

    events: tuple[ImageEvent, ...]
    items: tuple[LoadedImage | LoadFailure, ...]

    def __post_init__(self) -> None:
        if len(self.events) != len(self.items):
            raise ValueError(f"{len(self.events)} events but {len(self.items)} loaded items")


class Moderator:
    """Owns the scorer, the policy in force and the image loader pool."""

    def __init__(self, scorer: Scorer, policy: LoadedPolicy, limits: ImageSettings, loader_threads: int = 4) -> None:
        self.scorer = scorer
        self.policy = policy
        self.limits = limits
        # Fetching, decoding and resizing wait on I/O or run in Pillow/numpy with the GIL released, so
        # threads overlap them with each other and with the forward pass.
        self._pool = ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="image-loader")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- loading (any thread) -------------------------------------------------------------------------

    def load_one(self, event: ImageEvent) -> LoadedImage | LoadFailure:
        """Fetch, decode and preprocess one event's image; safe to call from any thread, never raises
        `ImageLoadError` (it comes back as a `LoadFailure`)."""
        scorer = self.scorer  # read once: the scorer may be swapped between batches
        try:
            return load_image(
                event,
                self.limits,
                getattr(scorer, "preprocess_spec", None),  # fakes without it get plain images
                defer_jpeg=bool(getattr(scorer, "gpu_decode", False)),
            )
        except ImageLoadError as exc:
            return LoadFailure(exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one crafted file must not stop the worker
            return LoadFailure(REASON_LOAD_FAILED, f"{type(exc).__name__}: {exc}")

    def load(self, events: Sequence[ImageEvent]) -> LoadedBatch:
        """`load_one` for every event on the loader pool, results in event order."""
        return LoadedBatch(tuple(events), tuple(self._pool.map(self.load_one, events)))

    # -- scoring (the model's thread) -----------------------------------------------------------------

    def moderate(self, events: Sequence[ImageEvent]) -> list[Verdict]:
        return self.score(self.load(events))

    def score_loaded(self, events: Sequence[ImageEvent], items: Sequence[LoadedImage | LoadFailure]) -> list[Verdict]:
        """`score` for events and `load_one` results gathered by the caller (e.g. from its own futures)."""
        return self.score(LoadedBatch(tuple(events), tuple(items)))

    def score(self, batch: LoadedBatch) -> list[Verdict]:
        """Score the loaded images of `batch` in one forward pass and decide each: one verdict per event."""
        policy = self.policy  # one policy for the whole batch, even if it is swapped meanwhile
        scorer = self.scorer
        loaded = self._finish_deferred(list(batch.items), scorer)
        ok = [i for i, item in enumerate(loaded) if isinstance(item, LoadedImage)]
        scored: dict[int, Scores | LoadFailure] = {}
        score_ms = 0.0
        if ok:
            started = time.perf_counter()
            items: list[LoadedImage] = [loaded[i] for i in ok]  # type: ignore[misc]
            use_pixels = hasattr(scorer, "score_pixels") and all(item.pixels is not None for item in items)
            try:
                for i, score in zip(ok, self._score_many(scorer, items, use_pixels, policy), strict=True):
                    scored[i] = score
            except Exception:  # noqa: BLE001 - isolate the image that breaks the batch, score the rest alone
                for i, item in zip(ok, items, strict=True):
                    scored[i] = self._score_alone(scorer, item, use_pixels, policy)
            score_ms = (time.perf_counter() - started) * 1000.0 / len(ok)

        verdicts = []
        for i, event in enumerate(batch.events):
            item = loaded[i]
            outcome = scored.get(i, item)
            if not isinstance(outcome, LoadFailure):
                try:
                    verdicts.append(self._verdict(event, policy, item, outcome, score_ms))  # type: ignore[arg-type]
                    continue
                except ValueError as exc:  # scores that do not fit the policy: this event's error, not the batch's
                    outcome = LoadFailure(REASON_SCORE_FAILED, str(exc))
            verdicts.append(self._error_verdict(event, policy, outcome, item))
        return verdicts

    @staticmethod
    def _score_many(scorer: Any, items: list[LoadedImage], use_pixels: bool, policy: LoadedPolicy) -> Sequence[Scores]:
        if use_pixels:
            return scorer.score_pixels([item.pixels for item in items], policy)
        if any(item.image is None for item in items):
            raise ValueError("loaded as model inputs (or left undecoded) for a scorer that takes only images")
        return scorer.score([item.image for item in items], policy)

    def _score_alone(
        self, scorer: Any, item: LoadedImage, use_pixels: bool, policy: LoadedPolicy
    ) -> Scores | LoadFailure:
        try:
            return self._score_many(scorer, [item], use_pixels, policy)[0]
        except Exception as exc:  # noqa: BLE001 - one bad image must not fail its batch
            return LoadFailure(REASON_SCORE_FAILED, f"{type(exc).__name__}: {exc}")

    def _finish_deferred(self, items: list[LoadedImage | LoadFailure], scorer: Any) -> list[LoadedImage | LoadFailure]:
        """Decode on the GPU, in one batch, the JPEGs the loaders left encoded; the CPU takes any it refuses."""
        deferred = [i for i, item in enumerate(items) if isinstance(item, LoadedImage) and item.encoded is not None]
        if not deferred:
            return items
        started = time.perf_counter()
        jpegs: list[LoadedImage] = [items[i] for i in deferred]  # type: ignore[misc]
        try:
            decoded = list(scorer.decode_jpegs([j.encoded for j in jpegs], [j.orientation for j in jpegs]))
        except Exception:  # noqa: BLE001 - the GPU decoder failing as a whole: every image goes the CPU way
            decoded = [None] * len(jpegs)
        per_image_ms = (time.perf_counter() - started) * 1000.0 / len(jpegs)
        for i, jpeg, pixels in zip(deferred, jpegs, decoded, strict=True):
            if pixels is not None:
                items[i] = replace(jpeg, pixels=pixels, encoded=None, load_ms=jpeg.load_ms + per_image_ms)
            else:
                items[i] = self._decode_on_cpu(jpeg, scorer)
        return items

    def _decode_on_cpu(self, jpeg: LoadedImage, scorer: Any) -> LoadedImage | LoadFailure:
        started = time.perf_counter()
        try:
            assert jpeg.encoded is not None
            loaded = load_bytes(jpeg.encoded, self.limits, getattr(scorer, "preprocess_spec", None))
        except ImageLoadError as exc:
            return LoadFailure(exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - whatever broke, it is this image's error alone
            return LoadFailure(REASON_DECODE_FAILED, f"{type(exc).__name__}: {exc}")
        return replace(loaded, load_ms=jpeg.load_ms + (time.perf_counter() - started) * 1000.0)

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
        self, event: ImageEvent, policy: LoadedPolicy, failure: LoadFailure, item: LoadedImage | LoadFailure
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
