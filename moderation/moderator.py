"""Moderating a batch: load every image, score the loadable ones in one forward pass, decide each.

This is the Kafka-free core of the pipeline: a batch of parsed events in, one verdict per event out,
in the same order. An image that cannot be loaded (or scored) becomes an ``error`` verdict with a
reason; the rest of its batch is unaffected.

The work comes in two halves so a pipelined worker can overlap them: `load_one` / `load` fetch, decode
and preprocess (the model input is made here, in the loader threads, when the scorer exposes a
`preprocess_spec`), and `score` runs the forward pass and the decisions. `moderate` is both in turn.

With a CLIP scorer, scoring is two steps: embed each image once (or reuse the embedding of the same
bytes seen before, see moderation/reuse.py), then score the embeddings under each policy that applies:
the event's source's policy in force, and every shadow policy, whose verdicts are recorded but never
acted on. The embeddings travel with the verdicts to storage, for backtests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from moderation.decision import decide
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.images import REASON_DECODE_FAILED, LoadedImage, load_bytes, load_image
from moderation.policy import LoadedPolicy
from moderation.policy_book import PolicyBook, PolicyFiles, ReloadReport
from moderation.reuse import EmbeddingCache
from moderation.scoring import to_stored
from moderation.settings import ImageSettings
from moderation.verdict import ShadowVerdict, Verdict, VerdictStatus

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class _Embedded:
    embedding: np.ndarray  # float16 [dim], normalised: what is stored and what every policy scores
    reused: bool


class Moderator:
    """Owns the scorer, the policies in force, the embedding cache and the image loader pool."""

    def __init__(
        self,
        scorer: Scorer,
        policy: LoadedPolicy | PolicyBook | PolicyFiles,
        limits: ImageSettings,
        loader_threads: int = 4,
        *,
        cache: EmbeddingCache | None = None,
        keep_embeddings: bool = True,
    ) -> None:
        self.scorer = scorer
        # Watched files are re-checked by `refresh_policies`; a book or a single policy stays as given.
        self.policy_files = policy if isinstance(policy, PolicyFiles) else None
        if isinstance(policy, PolicyFiles):
            self.policies = policy.book
        else:
            self.policies = policy if isinstance(policy, PolicyBook) else PolicyBook(policy)
        self.limits = limits
        keep_policies = getattr(scorer, "keep_policies", None)
        if keep_policies is not None:
            keep_policies(len(self.policies.every_policy()))
        self.cache = cache  # None: every image goes through the image tower
        self.keep_embeddings = keep_embeddings  # attach embeddings to verdicts, for storage
        self._loader_threads = loader_threads
        self._pool: ThreadPoolExecutor | None = None

    @property
    def policy(self) -> LoadedPolicy:
        """The default policy in force."""
        return self.policies.default

    def use_policies(self, book: PolicyBook) -> None:
        """Switch to `book` from the next batch on, with its text embeddings computed first."""
        policies = book.every_policy()
        keep_policies = getattr(self.scorer, "keep_policies", None)
        if keep_policies is not None:
            keep_policies(len(policies))
        policy_text = getattr(self.scorer, "policy_text", None)
        if policy_text is not None:
            for policy in policies:
                policy_text(policy)
        self.policies = book  # one assignment: a batch being scored keeps the book it started with

    def refresh_policies(self) -> ReloadReport:
        """Between batches: apply edited policy files that validate (see moderation/policy_book.py)."""
        if self.policy_files is None:
            return ReloadReport()
        report = self.policy_files.check()
        if report.applied:
            self.use_policies(self.policy_files.book)
        return report

    def close(self) -> None:
        if self._pool is not None:
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
        if self._pool is None:
            # Fetching, decoding and resizing wait on I/O or run in Pillow/numpy with the GIL released, so
            # threads overlap them. Made on first use: a pipelined worker loads on its own pool instead.
            self._pool = ThreadPoolExecutor(max_workers=self._loader_threads, thread_name_prefix="image-loader")
        return LoadedBatch(tuple(events), tuple(self._pool.map(self.load_one, events)))

    # -- scoring (the model's thread) -----------------------------------------------------------------

    def moderate(self, events: Sequence[ImageEvent]) -> list[Verdict]:
        return self.score(self.load(events))

    def score_loaded(self, events: Sequence[ImageEvent], items: Sequence[LoadedImage | LoadFailure]) -> list[Verdict]:
        """`score` for events and `load_one` results gathered by the caller (e.g. from its own futures)."""
        return self.score(LoadedBatch(tuple(events), tuple(items)))

    def score(self, batch: LoadedBatch) -> list[Verdict]:
        """Score the loaded images of `batch` and decide each under its policy: one verdict per event."""
        book = self.policies  # one book for the whole batch, even if it is swapped meanwhile
        scorer = self.scorer
        loaded = self._finish_deferred(list(batch.items), scorer)
        ok = [i for i, item in enumerate(loaded) if isinstance(item, LoadedImage)]
        embedded: dict[int, _Embedded | LoadFailure] = {}
        scored: dict[int, Scores | LoadFailure] = {}
        shadows: dict[int, list[ShadowVerdict]] = {i: [] for i in ok}
        score_ms = 0.0
        if ok:
            started = time.perf_counter()
            if _embeds(scorer):
                embedded = self._embed(scorer, {i: loaded[i] for i in ok})  # type: ignore[misc]
            groups: dict[str, tuple[LoadedPolicy, list[int]]] = {}
            for i in ok:
                policy = book.for_source(batch.events[i].source)
                groups.setdefault(policy.sha256, (policy, []))[1].append(i)
            for policy, indices in groups.values():
                scored.update(self._score_group(scorer, policy, indices, loaded, embedded))
            for shadow in book.shadows:
                self._shadow(scorer, shadow, ok, batch.events, loaded, embedded, scored, shadows)
            score_ms = (time.perf_counter() - started) * 1000.0 / len(ok)

        verdicts = []
        for i, event in enumerate(batch.events):
            policy = book.for_source(event.source)
            item = loaded[i]
            outcome = scored.get(i, item)
            if not isinstance(outcome, LoadFailure):
                try:
                    verdict = self._verdict(event, policy, item, outcome, score_ms)  # type: ignore[arg-type]
                except ValueError as exc:  # scores that do not fit the policy: this event's error, not the batch's
                    outcome = LoadFailure(REASON_SCORE_FAILED, str(exc))
                else:
                    found = embedded.get(i)
                    if isinstance(found, _Embedded):
                        verdict = replace(
                            verdict,
                            embedding_reused=found.reused,
                            embedding=found.embedding if self.keep_embeddings else None,
                        )
                    verdicts.append(replace(verdict, shadows=tuple(shadows.get(i, ()))))
                    continue
            verdicts.append(self._error_verdict(event, policy, outcome, item))
        return verdicts

    def _embed(self, scorer: Any, items: dict[int, LoadedImage]) -> dict[int, _Embedded | LoadFailure]:
        """One embedding per image: reused when its bytes were embedded before (here or in the cache),
        else from one forward pass over the rest; a batch that fails is retried image by image."""
        reuse = self.cache is not None
        known = self.cache.get_many(item.sha256 for item in items.values()) if self.cache is not None else {}

        def key(i: int) -> str:
            # Without a cache reuse is off: every image runs, repeats within the batch included.
            return items[i].sha256 if reuse else f"#{i}"

        first_of: dict[str, int] = {}
        to_run: list[int] = []
        for i in items:
            if key(i) not in known and key(i) not in first_of:
                first_of[key(i)] = i
                to_run.append(i)
        computed: dict[int, np.ndarray | LoadFailure] = {}
        if to_run:
            try:
                rows = to_stored(self._embed_many(scorer, [items[i] for i in to_run]))
                computed.update(zip(to_run, rows, strict=True))
            except Exception:  # noqa: BLE001 - isolate the image that breaks the batch, embed the rest alone
                for i in to_run:
                    try:
                        computed[i] = to_stored(self._embed_many(scorer, [items[i]]))[0]
                    except Exception as exc:  # noqa: BLE001 - one bad image must not fail its batch
                        computed[i] = LoadFailure(REASON_SCORE_FAILED, f"{type(exc).__name__}: {exc}")
        if self.cache is not None:
            self.cache.put_many({key(i): e for i, e in computed.items() if isinstance(e, np.ndarray)})
        result: dict[int, _Embedded | LoadFailure] = {}
        for i in items:
            if key(i) in known:
                result[i] = _Embedded(known[key(i)], reused=True)
                continue
            first_index = first_of[key(i)]
            first = computed[first_index]
            # A repeat inside the batch reuses the first occurrence's forward pass.
            result[i] = first if isinstance(first, LoadFailure) else _Embedded(first, reused=first_index != i)
        return result

    @staticmethod
    def _embed_many(scorer: Any, items: list[LoadedImage]) -> Any:
        if all(item.pixels is not None for item in items):
            return scorer.pixel_embeddings([item.pixels for item in items])
        if any(item.image is None for item in items):
            raise ValueError("some images were neither decoded nor made into model inputs")
        return scorer.image_embeddings([item.image for item in items])

    def _score_group(
        self,
        scorer: Any,
        policy: LoadedPolicy,
        indices: list[int],
        loaded: list[LoadedImage | LoadFailure],
        embedded: dict[int, _Embedded | LoadFailure],
    ) -> dict[int, Scores | LoadFailure]:
        """Scores under `policy` for the images at `indices`: from their embeddings when there are any."""
        if embedded:
            result: dict[int, Scores | LoadFailure] = {}
            usable = []
            for i in indices:
                found = embedded[i]
                if isinstance(found, LoadFailure):
                    result[i] = found
                else:
                    usable.append(i)
            if usable:
                stacked = np.stack([embedded[i].embedding for i in usable])  # type: ignore[union-attr]
                result.update(zip(usable, scorer.score_embeddings(stacked, policy), strict=True))
            return result
        items: list[LoadedImage] = [loaded[i] for i in indices]  # type: ignore[misc]
        use_pixels = hasattr(scorer, "score_pixels") and all(item.pixels is not None for item in items)
        try:
            return dict(zip(indices, self._score_many(scorer, items, use_pixels, policy), strict=True))
        except Exception:  # noqa: BLE001 - isolate the image that breaks the batch, score the rest alone
            return {
                i: self._score_alone(scorer, item, use_pixels, policy) for i, item in zip(indices, items, strict=True)
            }

    def _shadow(
        self,
        scorer: Any,
        shadow: LoadedPolicy,
        ok: list[int],
        events: Sequence[ImageEvent],
        loaded: list[LoadedImage | LoadFailure],
        embedded: dict[int, _Embedded | LoadFailure],
        scored: dict[int, Scores | LoadFailure],
        into: dict[int, list[ShadowVerdict]],
    ) -> None:
        """What `shadow` would decide for every scored image; a shadow that fails never touches a verdict."""
        indices = [i for i in ok if not isinstance(scored.get(i), LoadFailure)]
        try:
            outcomes = self._score_group(scorer, shadow, indices, loaded, embedded)
            for i, outcome in outcomes.items():
                if isinstance(outcome, LoadFailure):
                    continue
                decision = decide(outcome.probabilities, shadow.policy)
                into[i].append(ShadowVerdict(
                    event_id=events[i].event_id,
                    policy_version=shadow.version,
                    policy_hash=shadow.sha256,
                    flagged=decision.flagged,
                    top_category=decision.top_category,
                    action=decision.action,
                    uncertain=decision.uncertain,
                    scores=_rounded(outcome.probabilities),
                ))
        except Exception:  # noqa: BLE001 - shadows are observations: log, never fail the batch
            log.exception("shadow policy %s (%s) failed on a batch", shadow.version, shadow.path)

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
            scores=_rounded(scores.probabilities),
            best_prompt=scores.best_prompt,
            policy_version=policy.version,
            policy_hash=policy.sha256,
            model_id=self.scorer.model_id,
            image_ref=event.image_ref,
            image_sha256=image.sha256,
            uploaded_at=event.uploaded_at,
            load_ms=round(image.load_ms, 3),
            score_ms=round(score_ms, 3),
            uncertain=decision.uncertain,
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


def _embeds(scorer: Any) -> bool:
    """Whether `scorer` splits scoring into embedding and policy scoring (ClipScorer does; simple fakes don't)."""
    return all(hasattr(scorer, name) for name in ("pixel_embeddings", "image_embeddings", "score_embeddings"))


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    """Scores as stored: six decimals are far below any threshold's meaning and keep rows small."""
    return {name: round(float(p), 6) for name, p in scores.items()}
