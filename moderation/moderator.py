"""Moderating a batch: load every image, score the loadable ones in one forward pass, decide each.

This is the Kafka-free core of the pipeline: a batch of parsed events in, one verdict per event out,
in the same order. An image that cannot be loaded (or scored) becomes an ``error`` verdict with a
reason; the rest of its batch is unaffected.

The work comes in two halves so a pipelined worker can overlap them: `load_one` / `load` fetch, decode
and preprocess (the model input is made here, in the loader threads, to the scorer's `preprocess_spec`),
and `score` runs the forward pass and the decisions. `moderate` is both in turn.

This module only orchestrates; each step has its own module, in the order `score` runs them:

1. moderation/decoding.py - the JPEGs left for the scorer's GPU decoder are decoded, the CPU takes the rest;
2. moderation/embedding.py - each image is embedded once, or its embedding reused (moderation/reuse.py);
3. moderation/policy_scoring.py - the embeddings are scored under each event's source's policy in force;
4. moderation/shadows.py - and under every shadow policy, whose verdicts are recorded but never acted on;
5. moderation/batch_verdicts.py - each event is decided and gets its verdict, embeddings attached for storage.

The scorer is reached only through the `Scorer` contract (moderation/contracts.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moderation.batch_verdicts import ScoredBatch, build_verdicts
from moderation.contracts import Scorer
from moderation.decoding import finish_deferred, load_event
from moderation.embedding import embed_batch
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.images import LoadedImage
from moderation.policy import LoadedPolicy
from moderation.policy_book import PolicyBook
from moderation.policy_scoring import score_by_source
from moderation.reuse import EmbeddingCache
from moderation.settings import ImageSettings
from moderation.shadows import shadow_verdicts
from moderation.verdict import REASON_SCORE_FAILED as REASON_SCORE_FAILED  # every error reason a verdict can carry
from moderation.verdict import LoadFailure, Verdict

REASON_LOAD_FAILED = "load_failed"  # an unexpected error while loading, not one of images.py's reasons


@dataclass(frozen=True)
class LoadedBatch:
    """Events and, position for position, what loading each gave: `load`'s result, `score`'s input."""

    events: tuple[ImageEvent, ...]
    items: tuple[LoadedImage | LoadFailure, ...]

    def __post_init__(self) -> None:
        if len(self.events) != len(self.items):
            raise ValueError(f"{len(self.events)} events but {len(self.items)} loaded items")


class Moderator:
    """Owns the scorer, the policies in force, the embedding cache and the image loader pool."""

    def __init__(
        self,
        scorer: Scorer,
        policy: LoadedPolicy | PolicyBook,
        limits: ImageSettings,
        loader_threads: int = 4,
        *,
        cache: EmbeddingCache | None = None,
        keep_embeddings: bool = True,
        keep_bytes: bool = False,
    ) -> None:
        self.scorer: Scorer = scorer
        # The runtime owns the policy files (consumers/pipeline/policies.py): this only ever gets a book.
        self.policies = policy if isinstance(policy, PolicyBook) else PolicyBook(policy)
        self.limits = limits
        scorer.keep_policies(len(self.policies.every_policy()))
        self.cache = cache  # None: every image goes through the image tower
        self.keep_embeddings = keep_embeddings  # attach embeddings to verdicts, for storage
        self._loader_threads = loader_threads
        # Keep each upload's bytes on its loaded image (`LoadedImage.original`), for the reviewer copy the
        # worker's delivery makes of items sent to review; off, the bytes are dropped once decoded.
        self.keep_bytes = keep_bytes
        self._pool: ThreadPoolExecutor | None = None

    @property
    def policy(self) -> LoadedPolicy:
        """The default policy in force."""
        return self.policies.default

    def use_policies(self, book: PolicyBook) -> None:
        """Switch to `book` from the next batch on, with its text embeddings computed first."""
        policies = book.every_policy()
        self.scorer.keep_policies(len(policies))
        for policy in policies:
            self.scorer.policy_text(policy)
        self.policies = book  # one assignment: a batch being scored keeps the book it started with

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    # -- loading (any thread) -------------------------------------------------------------------------

    def load_one(self, event: ImageEvent) -> LoadedImage | LoadFailure:
        """Fetch, decode and preprocess one event's image; safe to call from any thread, never raises
        `ImageLoadError` (it comes back as a `LoadFailure`)."""
        scorer = self.scorer  # read once: the scorer may be swapped between batches
        try:
            return load_event(
                event, self.limits, scorer.preprocess_spec, scorer.decoder, keep_bytes=self.keep_bytes
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
        loaded = finish_deferred(batch.items, scorer.decoder, self.limits, scorer.preprocess_spec)
        ok = {i: item for i, item in enumerate(loaded) if isinstance(item, LoadedImage)}
        scored = ScoredBatch(loaded)
        if ok:
            started = time.perf_counter()
            embedded = embed_batch(scorer, ok, self.cache)
            by_source = score_by_source(scorer, book, batch.events, embedded)
            shadows = shadow_verdicts(scorer, book.shadows, batch.events, embedded, by_source)
            score_ms = (time.perf_counter() - started) * 1000.0 / len(ok)
            scored = ScoredBatch(loaded, embedded, by_source, shadows, score_ms)
        return build_verdicts(batch.events, book, scorer.model_id, scored, keep_embeddings=self.keep_embeddings)
