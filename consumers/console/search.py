"""Search for the console and its API: one long-lived `SearchIndex` of the configured model, built in the
background when the console starts and refreshed as searches come (a new verdict is searchable within
`refresh_every` seconds), plus the model's towers for text and image queries.

The console keeps serving while the index builds (a million embeddings take about 20 s) or when the
model cannot be loaded: searches then answer "unavailable" with the reason, nothing else is affected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from moderation.search import FaissIndex, Filters, Hit, SearchIndex
from moderation.search.service import IndexFactory

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from moderation.clip_scorer import ClipScorer

log = structlog.get_logger("moderation.console")
MAX_K = 100


class SearchUnavailable(Exception):  # noqa: N818 - answered as a 503 with its reason
    """The index is still building, or the model could not be loaded."""


class SearchNotFound(Exception):  # noqa: N818
    """A "more like this" key with no stored embedding under this model."""


@dataclass(frozen=True)
class SearchStatus:
    ready: bool
    detail: str
    size: int


class ConsoleSearch:
    def __init__(
        self,
        engine: Engine,
        load_scorer: Callable[[], ClipScorer],
        *,
        index_factory: IndexFactory = FaissIndex,
        refresh_every: float = 30.0,
    ) -> None:
        self._engine, self._load_scorer = engine, load_scorer
        self._index_factory, self._refresh_every = index_factory, refresh_every
        self._scorer: ClipScorer | None = None
        self._index: SearchIndex | None = None
        self._error: str | None = None
        self._building = 0
        self._ready = threading.Event()
        self._towers = threading.Lock()  # one query embedding at a time: the model is shared

    def start(self) -> ConsoleSearch:
        threading.Thread(target=self._build, name="search-index", daemon=True).start()
        return self

    def wait(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def _build(self) -> None:
        started = time.monotonic()
        try:
            self._scorer = self._load_scorer()
            index = SearchIndex(self._engine, self._scorer.stored_model_ids, self._index_factory,
                                refresh_every=self._refresh_every)
            index.build(progress=self._progress)
            self._index = index
            log.info("search index built", embeddings=index.size, memory_mb=round(index.memory_bytes() / 2**20, 1),
                     seconds=round(time.monotonic() - started, 1), model=self._scorer.model_id)
        except Exception as exc:  # noqa: BLE001 - the console serves on; searches say why they cannot
            self._error = f"{type(exc).__name__}: {exc}"
            log.warning("search unavailable", error=self._error)
        finally:
            self._ready.set()

    def _progress(self, count: int) -> None:
        self._building = count

    @property
    def status(self) -> SearchStatus:
        if self._index is not None:
            return SearchStatus(True, "ready", self._index.size)
        if self._error is not None:
            return SearchStatus(False, f"search is unavailable: {self._error}", 0)
        return SearchStatus(False, f"the search index is being built ({self._building:,} embeddings so far)",
                            self._building)

    def _ready_index(self) -> tuple[SearchIndex, ClipScorer]:
        if self._index is None or self._scorer is None:
            raise SearchUnavailable(self.status.detail)
        return self._index, self._scorer

    def text(self, query: str, k: int, filters: Filters) -> list[Hit]:
        from moderation.search.queries import text_vector

        index, scorer = self._ready_index()
        with self._towers:
            vector = text_vector(scorer, query)
        return index.search(vector, min(k, MAX_K), filters)

    def image(self, data: bytes, k: int, filters: Filters, limits: Any = None) -> list[Hit]:
        """Raises ImageLoadError for bytes that are not an image this pipeline would score."""
        from moderation.search.queries import image_vector

        index, scorer = self._ready_index()
        with self._towers:
            vector = image_vector(scorer, data, limits)
        return index.search(vector, min(k, MAX_K), filters)

    def like(self, key: str, k: int, filters: Filters) -> list[Hit]:
        index, _ = self._ready_index()
        vector = index.like(key)
        if vector is None:
            raise SearchNotFound(f"no stored embedding for event or content id {key!r} under this model")
        return index.search(np.asarray(vector, dtype=np.float32), min(k, MAX_K), filters)
