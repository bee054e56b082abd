"""`SearchIndex`: the stored embeddings of one model in a vector index, with the filter columns beside it.

Built by one streaming scan of (verdict id, embedding, filter columns); kept up to date by `refresh`,
which reads only verdicts above the highest id seen, plus those created in the last `overlap` seconds
(a PostgreSQL transaction can commit a lower id after a higher one; ids already indexed are skipped).
`search` refreshes first when the last refresh is older than `refresh_every` seconds, so a verdict is
searchable at most that long after it is saved. The embeddings stay in the database: the index is a
cache of them, rebuilt from scratch by a new `SearchIndex`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import Engine

from moderation.search.index import FaissIndex, VectorIndex
from moderation.storage.embeddings import ModelIds
from moderation.storage.search_rows import IndexRows, ShownRow, scan_index_rows, shown_rows, stored_embedding

IndexFactory = Callable[[int], VectorIndex]  # dim -> an empty index


@dataclass(frozen=True)
class Filters:
    """Which indexed verdicts a search may return; empty means any."""

    since: datetime | None = None
    until: datetime | None = None
    sources: tuple[str, ...] = ()
    flagged: bool | None = None
    actions: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self == Filters()


@dataclass(frozen=True)
class Hit:
    score: float
    row: ShownRow


class _Codes:
    """Strings (or None) as small integer codes, so a filter is a vectorised comparison."""

    def __init__(self) -> None:
        self.codes: dict[str | None, int] = {}

    def encode(self, values: Sequence[str | None]) -> np.ndarray:
        return np.array([self.codes.setdefault(value, len(self.codes)) for value in values], dtype=np.int32)

    def of(self, values: Sequence[str]) -> list[int]:
        return [self.codes[value] for value in values if value in self.codes]


class _Column:
    """A numpy column that grows by doubling."""

    def __init__(self, dtype: type) -> None:
        self._data = np.empty(0, dtype=dtype)
        self._count = 0

    def extend(self, values: np.ndarray) -> None:
        if self._count + len(values) > len(self._data):
            grown = np.empty(max(self._count + len(values), 2 * len(self._data), 1024), dtype=self._data.dtype)
            grown[: self._count] = self._data[: self._count]
            self._data = grown
        self._data[self._count : self._count + len(values)] = values
        self._count += len(values)

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._count]


class SearchIndex:
    def __init__(
        self,
        engine: Engine,
        model_ids: ModelIds,
        index_factory: IndexFactory = FaissIndex,
        refresh_every: float = 30.0,
        overlap: float = 120.0,
    ) -> None:
        self._engine, self._model_ids = engine, model_ids
        self._factory, self.refresh_every, self._overlap = index_factory, refresh_every, overlap
        self._index: VectorIndex | None = None
        self._lock = threading.Lock()  # the index and its columns change together
        self._refreshing = threading.Lock()  # one refresh at a time; a concurrent search does not wait for it
        self._ids, self._created, self._flagged = _Column(np.int64), _Column(np.float64), _Column(np.bool_)
        self._source, self._category, self._action = _Column(np.int32), _Column(np.int32), _Column(np.int32)
        self._sources, self._categories, self._actions = _Codes(), _Codes(), _Codes()
        self._watermark: int | None = None  # the highest verdict id indexed
        self._refreshed_at: float | None = None  # when the last scan started (time.time())

    @property
    def size(self) -> int:
        return 0 if self._index is None else self._index.size

    def memory_bytes(self) -> int:
        """The vector index's bytes (the filter columns add about 30 bytes a row)."""
        return 0 if self._index is None else self._index.memory_bytes()

    def build(self, progress: Callable[[int], None] | None = None) -> int:
        """Index everything stored so far (the first refresh); `progress` gets the running count."""
        return self.refresh(progress)

    def refresh(self, progress: Callable[[int], None] | None = None) -> int:
        """Add the verdicts saved since the last refresh; returns how many were added."""
        started = time.time()
        since = None
        if self._refreshed_at is not None and self._watermark is not None:  # else nothing held yet: read all
            since = datetime.fromtimestamp(self._refreshed_at - self._overlap, timezone.utc)
        added = 0
        for rows in scan_index_rows(self._engine, self._model_ids, after_id=self._watermark, since=since):
            added += self._add(rows)
            if progress is not None:
                progress(self.size)
        self._refreshed_at = started
        return added

    def maybe_refresh(self) -> None:
        """Refresh when the last one is `refresh_every` seconds old, unless another thread is at it."""
        if self._refreshed_at is None or time.time() - self._refreshed_at >= self.refresh_every:
            if self._refreshing.acquire(blocking=self._refreshed_at is None):
                try:
                    self.refresh()
                finally:
                    self._refreshing.release()

    def _add(self, rows: IndexRows) -> int:
        fresh = ~self._known(rows.ids)
        if not fresh.any():
            return 0
        ids = rows.ids[fresh]
        with self._lock:
            if self._index is None:
                self._index = self._factory(rows.embeddings.shape[1])
            self._index.add(ids, rows.embeddings[fresh])
            self._ids.extend(ids)
            self._created.extend(rows.created_at[fresh])
            self._flagged.extend(rows.flagged[fresh])
            self._source.extend(self._sources.encode([s for s, f in zip(rows.sources, fresh, strict=True) if f]))
            self._category.extend(
                self._categories.encode([c for c, f in zip(rows.top_categories, fresh, strict=True) if f])
            )
            self._action.extend(self._actions.encode([a for a, f in zip(rows.actions, fresh, strict=True) if f]))
            self._watermark = max(self._watermark or 0, int(ids.max()))
        return int(len(ids))

    def _known(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are indexed already (only refresh's overlap window can bring them again)."""
        if self._watermark is None or len(ids) == 0:
            return np.zeros(len(ids), dtype=bool)
        indexed = self._ids.values
        # Ids arrive nearly in order, so the ones a re-read can repeat sit at the end.
        recent = indexed[indexed >= ids.min()]
        return np.isin(ids, recent)

    def allowed(self, filters: Filters) -> np.ndarray | None:
        """The verdict ids `filters` leave, or None for all."""
        if filters.empty:
            return None
        mask = np.ones(len(self._ids.values), dtype=bool)
        if filters.since is not None:
            mask &= self._created.values >= filters.since.timestamp()
        if filters.until is not None:
            mask &= self._created.values < filters.until.timestamp()
        if filters.flagged is not None:
            mask &= self._flagged.values == filters.flagged
        for wanted, codes, column in (
            (filters.sources, self._sources, self._source),
            (filters.categories, self._categories, self._category),
            (filters.actions, self._actions, self._action),
        ):
            if wanted:
                mask &= np.isin(column.values, codes.of(list(wanted)))
        return self._ids.values[mask]

    def search(self, vector: np.ndarray, k: int = 10, filters: Filters | None = None) -> list[Hit]:
        """The `k` stored verdicts nearest to `vector` (normalised) that pass `filters`, best first."""
        self.maybe_refresh()
        if self._index is None:
            return []
        with self._lock:
            allowed = self.allowed(filters or Filters())
            ids, scores = self._index.search(np.asarray(vector, dtype=np.float32), k, allowed)
        shown = shown_rows(self._engine, [int(i) for i in ids])
        return [Hit(float(score), shown[int(i)]) for i, score in zip(ids, scores, strict=True) if int(i) in shown]

    def like(self, key: str) -> np.ndarray | None:
        """The stored embedding of event id or content id `key` (the query of "more like this")."""
        found = stored_embedding(self._engine, self._model_ids, key)
        return None if found is None else found[1].astype(np.float32)
