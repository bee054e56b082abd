"""Vector indexes over normalised embeddings, keyed by int64 ids (verdict ids), scored by inner product.

`VectorIndex` is all the search service needs, so a vector database can stand in for either index here.
`ExactIndex` is a float16 matrix scanned in float32 chunks: the reference, and the right choice for small
sets. `FaissIndex` is an in-process faiss IVF index over scalar-quantised codes (8-bit by default: half the
memory of float16, a quarter of float32); one query is spread over the probed lists on every thread.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

_CHUNK = 65_536  # rows converted to float32 at a time by the exact scan
_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


class VectorIndex(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add `vectors` ([n, dim], normalised) under `ids` (int64 [n], new ones)."""
        ...

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ids and scores (inner products, best first) of the `k` nearest, among `allowed` ids if given."""
        ...

    @property
    def size(self) -> int: ...

    def memory_bytes(self) -> int: ...


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` highest scores, best first."""
    if len(scores) <= k:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class ExactIndex:
    """A float16 matrix (as stored) scanned exactly; grows by doubling."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors = np.empty((0, dim), dtype=np.float16)
        self._ids = np.empty(0, dtype=np.int64)
        self._count = 0
        self._order: np.ndarray | None = None  # positions sorted by id, for `allowed` lookups
        self._sorted_ids = self._ids

    @property
    def size(self) -> int:
        return self._count

    def memory_bytes(self) -> int:
        return int(self._vectors[: self._count].nbytes + self._ids[: self._count].nbytes)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        n = len(ids)
        if n == 0:
            return
        if self._count + n > len(self._ids):
            capacity = max(self._count + n, 2 * len(self._ids), 1024)
            grown = np.empty((capacity, self.dim), dtype=np.float16)
            grown[: self._count] = self._vectors[: self._count]
            grown_ids = np.empty(capacity, dtype=np.int64)
            grown_ids[: self._count] = self._ids[: self._count]
            self._vectors, self._ids = grown, grown_ids
        self._vectors[self._count : self._count + n] = vectors
        self._ids[self._count : self._count + n] = ids
        self._count += n
        self._order = None

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` that are in the index (float16), in the order found."""
        return self._vectors[self._positions(ids)]

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of those of `ids` that are in the index."""
        if self._order is None:
            self._order = np.argsort(self._ids[: self._count], kind="stable")
            self._sorted_ids = self._ids[self._order]
        wanted = np.asarray(ids, dtype=np.int64)
        if self._count == 0 or len(wanted) == 0:
            return np.empty(0, dtype=np.int64)
        at = np.searchsorted(self._sorted_ids, wanted).clip(0, self._count - 1)
        return self._order[at[self._sorted_ids[at] == wanted]]

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._count == 0 or k <= 0:
            return _EMPTY
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if allowed is not None:
            positions = self._positions(np.asarray(allowed, dtype=np.int64))
            scores = _scan(self._vectors[positions], q)
            best = top_k(scores, k)
            return self._ids[positions[best]], scores[best]
        scores = _scan(self._vectors[: self._count], q)
        best = top_k(scores, k)
        return self._ids[best], scores[best]


def _scan(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Inner products of float16 rows with a float32 query, a chunk at a time (numpy has no float16 BLAS)."""
    scores = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), _CHUNK):
        scores[start : start + _CHUNK] = vectors[start : start + _CHUNK].astype(np.float32) @ query
    return scores


class FaissIndex:
    """faiss IVF over scalar-quantised codes, inner product on normalised vectors.

    The defaults probe every list: an exact scan of the 8-bit codes (recall@10 about 0.97 against float32
    on random vectors, 1M x 512 in about 25 ms on 2 threads, 0.5 GB; see BENCHMARKS.md). Random vectors
    have no clusters, so probing fewer lists loses recall fast there; on clustered (real CLIP) traffic a
    smaller `nprobe` buys speed when the set grows past what a full scan serves in time.

    Trained once `min_train` vectors have come (39 per list, faiss's minimum for k-means); until then
    they are kept in an exact index. `nprobe` lists are scanned per query, spread over the threads; a
    filter that leaves at most `exact_below` ids scans every list through an id selector, so a selective
    filter loses nothing.
    """

    def __init__(
        self,
        dim: int,
        nlist: int = 256,
        nprobe: int = 256,
        codes: str = "SQ8",
        exact_below: int = 50_000,
        min_train: int | None = None,
    ) -> None:
        import faiss

        self.dim, self.nlist, self.nprobe, self.exact_below = dim, nlist, nprobe, exact_below
        self.min_train = 39 * nlist if min_train is None else min_train  # faiss's minimum for k-means
        self._faiss = faiss
        self._index: Any = faiss.index_factory(dim, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        self._index.parallel_mode = 1  # one query is split over the lists it probes: both cores, not one
        self._pending = ExactIndex(dim)  # until there is enough to train on
        self._max_id = -1

    @property
    def size(self) -> int:
        return int(self._index.ntotal) + self._pending.size

    def memory_bytes(self) -> int:
        ivf = self._faiss.extract_index_ivf(self._index)
        codes = int(ivf.ntotal) * (int(ivf.code_size) + 8)  # codes and their ids in the inverted lists
        return codes + ivf.nlist * self.dim * 4 + self._pending.memory_bytes()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._max_id = max(self._max_id, int(ids.max()))
        if not self._index.is_trained:
            self._pending.add(ids, vectors)
            if self._pending.size < self.min_train:
                return
            pending_ids = self._pending._ids[: self._pending.size].copy()
            pending = self._pending._vectors[: self._pending.size].astype(np.float32)
            self._index.train(_training_sample(pending))
            self._pending = ExactIndex(self.dim)
            ids, vectors = pending_ids, pending
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if k <= 0 or self.size == 0:
            return _EMPTY
        if not self._index.is_trained:
            return self._pending.search(query, k, allowed)
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        params = self._faiss.SearchParametersIVF()
        params.nprobe = self.nprobe
        if allowed is not None:
            if len(allowed) == 0:
                return _EMPTY
            params.sel = self._selector(np.asarray(allowed, dtype=np.int64))
            if len(allowed) <= self.exact_below:
                params.nprobe = self.nlist  # every list: the selector skips the rest without scoring them
        scores, ids = self._index.search(q, k, params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def _selector(self, allowed: np.ndarray) -> Any:
        """A bitmap over ids up to the largest one: checked per code, built in microseconds per thousand ids."""
        bits = np.zeros(self._max_id + 1, dtype=bool)
        bits[allowed[(allowed >= 0) & (allowed <= self._max_id)]] = True
        packed = np.packbits(bits, bitorder="little")
        selector = self._faiss.IDSelectorBitmap(len(bits), self._faiss.swig_ptr(packed))
        selector.referenced = packed  # the bitmap must outlive the search
        return selector


def _training_sample(vectors: np.ndarray, limit: int = 100_000) -> np.ndarray:
    """At most `limit` rows, evenly spread: k-means on more gains little and costs build time."""
    if len(vectors) <= limit:
        return np.ascontiguousarray(vectors)
    step = len(vectors) / limit
    return np.ascontiguousarray(vectors[(np.arange(limit) * step).astype(np.int64)])
