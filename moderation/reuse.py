"""Duplicate reuse: an image whose bytes were already embedded by the same model is not run through it again.

Uploads repeat (memes, re-shares, retried uploads), and the image tower is the expensive step. The image
embedding depends only on the bytes and the model, so it is looked up by (model, sha256 of the bytes):
first in a bounded in-memory LRU of this worker's recent embeddings, then, for the misses, in the
embeddings table through `lookup`. A failing lookup (the database is away) is a miss, never an error:
the image is simply scored.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

# (model_id, content hashes) -> {hash: float16 embedding} for the hashes it has.
Lookup = Callable[[str, Sequence[str]], Mapping[str, np.ndarray]]


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
