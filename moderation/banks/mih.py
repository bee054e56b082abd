"""Multi-index hashing (Norouzi, Punjani and Fleet, 2014) over an immutable set of 256-bit hashes.

Exact radius search in Hamming space without scanning every row: the 256 bits are cut into `m` chunks,
and a row within distance r of a query has, by the pigeonhole principle, at least one chunk within
floor(r / m) of the query's chunk. Each chunk has a bucket table (a counting-sort layout: `offsets` into
a permutation of the rows, indexed directly by the chunk's value), so a probe is two array reads; the
candidates from every probed bucket are then checked with a full 256-bit popcount. Everything is numpy,
vectorised over a batch of queries: the probe keys of a batch form one rectangular array.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

HASH_BYTES = 32
HASH_BITS = 256
SCAN_ROWS = 256  # below this a segment is scanned (even 500 rows probe faster than they scan: 64 vs 500 rows)
# Probes made together: queries are taken in blocks of about this many probes (32 queries at 10M hashes),
# so the temporaries stay in a core's 2 MB of L2; a block of 256 queries at 10M was 25% slower on one
# thread and gained nothing from a second. Small segments (few probes a query) take a whole batch at once.
BLOCK_PROBES = 92_000
_MAX_CHUNK_BITS = 24  # a direct table of 2**24 int32 offsets is 64 MB; wider ones would dominate memory
_MIN_CHUNK_BITS = 8

if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def popcount_rows(words: np.ndarray) -> np.ndarray:
        """Set bits per row of a [n, 4] uint64 array."""
        bits = np.bitwise_count(words)
        # Column adds beat .sum(axis=1) threefold on [n, 4]; int16 first, as 4 x 64 = 256 wraps a uint8.
        return bits[:, 0].astype(np.int16) + bits[:, 1] + bits[:, 2] + bits[:, 3]

else:  # numpy 1.26 (allowed by pyproject): a 16-bit lookup table
    _POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)

    def popcount_rows(words: np.ndarray) -> np.ndarray:
        """Set bits per row of a [n, 4] uint64 array."""
        return _POP16[np.ascontiguousarray(words).view(np.uint16)].sum(axis=1, dtype=np.int16)


@lru_cache(maxsize=64)
def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit value with at most `radius` bits set (0 first): the XOR masks of one probe set."""
    masks = [0]
    for k in range(1, radius + 1):
        for bits in itertools.combinations(range(width), k):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.int64)


def probe_count(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(radius + 1)) if radius >= 0 else 0


def chunk_layout(rows: int, chunks: int | None = None) -> list[tuple[int, int]]:
    """(first bit, width) of each chunk. The width is about log2(rows): one row per bucket on random data,
    the balance between probing many buckets and verifying many candidates that the paper recommends."""
    if chunks is None:
        width = min(_MAX_CHUNK_BITS, max(_MIN_CHUNK_BITS, round(math.log2(max(rows, 2)))))
        chunks = max(1, HASH_BITS // width)
    base, extra = divmod(HASH_BITS, chunks)
    if base + (1 if extra else 0) > _MAX_CHUNK_BITS + 8:
        raise ValueError(f"{chunks} chunks of 256 bits are wider than {_MAX_CHUNK_BITS + 8} bits each")
    layout, start = [], 0
    for i in range(chunks):
        width = base + (1 if i < extra else 0)
        layout.append((start, width))
        start += width
    return layout


def chunk_values(hashes: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits [start, start + width) of each uint8 [n, 32] hash (big-endian bit order) as int64."""
    first, last = start // 8, (start + width - 1) // 8
    value = np.zeros(len(hashes), dtype=np.int64)
    for byte in range(first, last + 1):
        value = (value << 8) | hashes[:, byte]
    value >>= 8 * (last + 1) - (start + width)
    return value & ((1 << width) - 1)


def query_chunks(queries: np.ndarray, layout: list[tuple[int, int]]) -> np.ndarray:
    """int64 [Q, m]: every chunk's value for each query; through Python ints for a few queries (fewer
    numpy calls: a batch of 1 pays per call, not per element)."""
    if len(queries) <= 8:
        values = []
        for row in queries:
            whole = int.from_bytes(row.tobytes(), "big")
            values.append([(whole >> (HASH_BITS - start - width)) & ((1 << width) - 1) for start, width in layout])
        return np.array(values, dtype=np.int64).reshape(len(queries), len(layout))
    return np.stack([chunk_values(queries, start, width) for start, width in layout], axis=1)


def chunk_radii(layout: list[tuple[int, int]], rows: int, max_distance: int) -> list[int]:
    """Probe radius per chunk for an exact search within `max_distance`.

    With r = m * q + a (0 <= a < m), a row within r has a chunk within q among any a + 1 chunks or one
    within q - 1 among the others: if not, its distance is at least (a + 1)(q + 1) + (m - a - 1) q = r + 1.
    The a + 1 chunks given radius q are those where the larger radius costs least (probes plus candidates).
    """
    m = len(layout)
    q, a = divmod(max_distance, m)

    def cost(width: int, radius: int) -> float:
        return probe_count(width, radius) * (1.0 + rows / (1 << width))

    extra = sorted(range(m), key=lambda i: cost(layout[i][1], q) - cost(layout[i][1], q - 1))[: a + 1]
    chosen = set(extra)
    return [q if i in chosen else q - 1 for i in range(m)]


@dataclass
class Matches:
    """Flat search results: query position, row within the segment, distance; one entry per match."""

    query: np.ndarray  # int64
    row: np.ndarray  # int64
    distance: np.ndarray  # int16 here; HashIndex hands out int32


def _empty() -> Matches:
    return Matches(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32))


class Segment:
    """Hashes that never change once built (only their `alive` flags do): a bucket table per chunk.

    A small segment (under SCAN_ROWS) has no tables and is scanned. Rows are kept in input order; `ids`
    map rows to entry ids and `id_order` (rows sorted by id) finds a row by id without a dict of 10M keys.
    """

    def __init__(self, ids: np.ndarray, hashes: np.ndarray, chunks: int | None = None) -> None:
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
        self.words = self.hashes.view(np.uint64)  # XOR and popcount do not care about byte order
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.alive = np.ones(len(self.ids), dtype=bool)
        self.live = len(self.ids)  # kept by `disable`: summing 10M flags on every add cost 5 ms
        # intp, not int32: searchsorted converts an int32 sorter to intp on every call (80 MB copied at 10M).
        self.id_order = np.argsort(self.ids, kind="stable").astype(np.intp)
        self.layout: list[tuple[int, int]] = []
        self.offsets = np.empty(0, dtype=np.int64)
        self.perm = np.empty(0, dtype=np.int32)
        self.bases: list[int] = []
        self._plans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._probe_counts: dict[int, int] = {}
        if len(self.ids) >= SCAN_ROWS:
            self._build(chunks)

    def _build(self, chunks: int | None) -> None:
        n = len(self.ids)
        self.layout = chunk_layout(n, chunks)
        table_size = sum((1 << w) + 1 for _, w in self.layout)
        # Offsets point into the concatenated permutations (m * n positions): int32 while that fits.
        offset_type = np.int32 if len(self.layout) * n < 2**31 else np.int64
        self.offsets = np.empty(table_size, dtype=offset_type)
        self.perm = np.empty(len(self.layout) * n, dtype=np.int32 if n < 2**31 else np.int64)
        base = 0
        for c, (start, width) in enumerate(self.layout):
            keys = chunk_values(self.hashes, start, width)
            counts = np.bincount(keys, minlength=1 << width)
            table = self.offsets[base : base + (1 << width) + 1]
            table[0] = c * n
            np.cumsum(counts, out=table[1:])
            table[1:] += c * n
            # Order inside a bucket does not matter: introsort on uint32 is 4x numpy's stable sort on int64.
            self.perm[c * n : (c + 1) * n] = np.argsort(keys.astype(np.uint32))
            self.bases.append(base)
            base += (1 << width) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def live_count(self) -> int:
        return self.live

    def disable(self, rows: np.ndarray) -> int:
        """Clear the rows' alive flags; how many were alive."""
        rows = np.unique(rows)
        was = int(self.alive[rows].sum())
        self.alive[rows] = False
        self.live -= was
        return was

    def memory_bytes(self) -> int:
        arrays = (self.hashes, self.ids, self.alive, self.id_order, self.offsets, self.perm)
        return int(sum(a.nbytes for a in arrays))

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows holding any of `ids` (alive or not)."""
        if len(self.ids) == 0 or len(ids) == 0:
            return np.empty(0, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, ids, sorter=self.id_order), len(self.ids) - 1)
        rows = self.id_order[at].astype(np.int64)
        # Ids are unique within a segment: `HashIndex.add` dedupes a call, and a merge keeps live rows only.
        return rows[self.ids[rows] == ids]

    def search(self, queries: np.ndarray, max_distance: int) -> Matches:
        """Every alive row within `max_distance` of each query (uint8 [Q, 32]), exactly once."""
        if len(self.ids) == 0 or len(queries) == 0:
            return _empty()
        probes = self._probe_count(max_distance) if self.layout else 0
        if not self.layout or probes > len(self.ids) // 4:
            return self._scan(queries, max_distance)
        block = max(1, BLOCK_PROBES // max(probes, 1))
        if len(queries) <= block:
            return self._probe(queries, max_distance)
        parts = [self._probe(queries[first : first + block], max_distance) for first in range(0, len(queries), block)]
        for first, part in zip(range(0, len(queries), block), parts, strict=True):
            part.query += first
        return Matches(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("query", "row", "distance")))

    def _probe_count(self, max_distance: int) -> int:
        """Probes per query, counted before any mask is made: a wide distance (far past PDQ's 31) would
        need millions of them, and a probe costs a few rows' scan, so past n / 4 the segment is scanned."""
        count = self._probe_counts.get(max_distance)
        if count is None:  # cached: working it out took 0.1 ms, a third of a single lookup
            radii = chunk_radii(self.layout, len(self.ids), max_distance)
            count = sum(probe_count(width, radius) for (_, width), radius in zip(self.layout, radii, strict=True))
            self._probe_counts[max_distance] = count
        return count

    def _plan(self, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per probe: its chunk, its XOR mask and its table base (cached per distance: a batch of 1 is
        dominated by fixed costs)."""
        plan = self._plans.get(max_distance)
        if plan is None:
            radii = chunk_radii(self.layout, len(self.ids), max_distance)
            chunk, mask, base = [], [], []
            for c, ((_, width), radius) in enumerate(zip(self.layout, radii, strict=True)):
                masks = flip_masks(width, radius) if radius >= 0 else np.empty(0, np.int64)
                chunk.append(np.full(len(masks), c, np.int64))
                mask.append(masks)
                base.append(np.full(len(masks), self.bases[c], np.int64))
            plan = (np.concatenate(chunk), np.concatenate(mask), np.concatenate(base))
            self._plans[max_distance] = plan
        return plan

    def _scan(self, queries: np.ndarray, max_distance: int) -> Matches:
        qwords = np.ascontiguousarray(queries).view(np.uint64)
        found: list[Matches] = []
        rows_step = min(len(self.ids), 65_536)
        queries_step = max(1, 1_000_000 // rows_step)  # bound the [queries, rows, 4] temporary to ~32 MB
        for first_row in range(0, len(self.ids), rows_step):
            words = self.words[first_row : first_row + rows_step]
            alive = self.alive[first_row : first_row + rows_step]
            for first in range(0, len(qwords), queries_step):
                block = qwords[first : first + queries_step]
                dist = popcount_rows((block[:, None, :] ^ words[None, :, :]).reshape(-1, 4)).reshape(len(block), -1)
                q, row = np.nonzero((dist <= max_distance) & alive[None, :])
                found.append(Matches(q.astype(np.int64) + first, row.astype(np.int64) + first_row, dist[q, row]))
        return Matches(*(np.concatenate([getattr(f, k) for f in found]) for k in ("query", "row", "distance")))

    def _probe(self, queries: np.ndarray, max_distance: int) -> Matches:
        n = len(self.ids)
        chunk, mask, base = self._plan(max_distance)
        # Probe keys, [Q, probes]: each chunk's value XOR every mask of its radius, plus its table's base.
        probes = (np.take(query_chunks(queries, self.layout), chunk, axis=1) ^ mask) + base
        per_query = probes.shape[1]
        flat = probes.ravel()
        # np.take rather than fancy indexing throughout: 1.5x faster on 1-D, 7x on rows of a 2-D array here.
        lo = np.take(self.offsets, flat)
        counts = np.take(self.offsets, flat + 1) - lo
        nonzero = np.flatnonzero(counts)
        if len(nonzero) == 0:
            return _empty()
        lo, counts = np.take(lo, nonzero).astype(np.int64), np.take(counts, nonzero).astype(np.int64)
        # Expand each non-empty bucket [lo, lo + count) into positions of the permutation.
        ends = np.cumsum(counts)
        positions = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(lo - (ends - counts), counts)
        rows = np.take(self.perm, positions)
        query = np.repeat(nonzero // per_query, counts)
        qwords = np.ascontiguousarray(queries).view(np.uint64)
        distance = popcount_rows(np.take(self.words, rows, axis=0) ^ np.take(qwords, query, axis=0))
        hit = distance <= max_distance
        rows, query, distance = rows[hit], query[hit], distance[hit]
        hit = self.alive[rows]
        rows, query, distance = rows[hit].astype(np.int64), query[hit], distance[hit]
        # A near row shares several chunks with the query and is found once per chunk: keep one.
        _, first = np.unique(query * n + rows, return_index=True)
        return Matches(query[first], rows[first], distance[first])
