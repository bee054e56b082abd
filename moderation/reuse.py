"""Duplicate reuse: an image whose bytes were already embedded by the same model is not run through it again.

Uploads repeat (memes, re-shares, retried uploads), and the image tower is the expensive step. The image
embedding depends only on the bytes and the model, so it is looked up by (model, sha256 of the bytes):
first in a bounded in-memory LRU of this worker's recent embeddings, then, for the misses, in the
embeddings table through `lookup`. A failing lookup (the database is away) is a miss, never an error:
the image is simply scored. Lookups run on the scorer's thread, so `GuardedLookup` bounds them: a lookup
that does not answer within a second is a miss, and after a failure the database is left alone for a
while instead of making every batch wait for a connect timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from moderation.exceptions import ModerationError
from moderation.threads import DaemonPool

log = logging.getLogger(__name__)

# (model_id, content hashes) -> {hash: float16 embedding} for the hashes it has.
Lookup = Callable[[str, Sequence[str]], Mapping[str, np.ndarray]]

LOOKUP_TIMEOUT_S = 1.0  # a healthy lookup takes milliseconds; a batch never waits longer than this for one
LOOKUP_PAUSE_S = 30.0  # after a failure or a timeout, skip lookups this long (the database is known away)


class LookupUnavailable(ModerationError):
    """The lookup was skipped or gave up: the database is away or slow. The caller treats it as a miss."""


class GuardedLookup:
    """`lookup` with a deadline and a circuit breaker, safe to call from the model's thread.

    The call runs on its own daemon thread; the caller waits at most `timeout_s`. A call that times out
    or fails opens the breaker for `pause_s`: lookups then raise `LookupUnavailable` at once. A call still
    stuck in a connect keeps the breaker open until it returns, so at most one thread is ever stuck.
    """

    def __init__(
        self,
        lookup: Lookup,
        timeout_s: float = LOOKUP_TIMEOUT_S,
        pause_s: float = LOOKUP_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self._clock = clock
        self._pool = DaemonPool(1, "embedding-lookup")
        self._running: Future[Mapping[str, np.ndarray]] | None = None
        self._closed_until = -float("inf")
        self.skipped = 0  # lookups not attempted because the breaker was open

    @property
    def available(self) -> bool:
        return self._clock() >= self._closed_until and (self._running is None or self._running.done())

    def __call__(self, model_id: str, hashes: Sequence[str]) -> Mapping[str, np.ndarray]:
        if not self.available:
            self.skipped += 1
            raise LookupUnavailable(f"embedding lookups paused for up to {self.pause_s:g} s after a failure")
        self._running = self._pool.submit(self._lookup, model_id, list(hashes))
        try:
            return self._running.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._trip()
            raise LookupUnavailable(f"no answer within {self.timeout_s:g} s") from None
        except Exception:
            self._trip()
            raise

    def _trip(self) -> None:
        already_paused = self._clock() < self._closed_until
        self._closed_until = self._clock() + self.pause_s
        if not already_paused:
            log.warning("embedding lookups paused for %g s: the database did not answer in time", self.pause_s)


class EmbeddingCache:
    def __init__(self, model_id: str, capacity: int = 10_000, lookup: Lookup | None = None) -> None:
        self.model_id = model_id
        self.capacity = capacity
        self._lookup = lookup
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.lookup_failures = 0

    def get_many(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The known embeddings among `hashes` (float16 [dim] each); unknown hashes are left out."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        with self._lock:
            for content_hash in dict.fromkeys(hashes):
                embedding = self._recent.get(content_hash)
                if embedding is None:
                    missing.append(content_hash)
                else:
                    self._recent.move_to_end(content_hash)
                    found[content_hash] = embedding
        if missing and self._lookup is not None:
            try:
                stored = self._lookup(self.model_id, missing)
            except LookupUnavailable:
                self.lookup_failures += 1
                stored = {}
            except Exception as exc:  # noqa: BLE001 - reuse is an optimisation; scoring is always the fallback
                self.lookup_failures += 1
                log.warning("embedding lookup failed, scoring instead: %s", exc)
                stored = {}
            found.update(stored)
            self.put_many(stored)
        return found

    def put_many(self, embeddings: Mapping[str, np.ndarray]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            for content_hash, embedding in embeddings.items():
                self._recent[content_hash] = embedding
                self._recent.move_to_end(content_hash)
            while len(self._recent) > self.capacity:
                self._recent.popitem(last=False)
