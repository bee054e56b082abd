"""An exact Hamming-radius index over PDQ hashes (256 bits) with live adds and removals.

Banks of known-bad images are matched before the model, so a lookup must find every entry within the
bank's distance (PDQ recommends 31) and nothing beyond, for a batch of 32-256 images at a time, over
millions of entries. `HashIndex` is a short list of immutable multi-index-hashing segments (`mih`): an add
builds a small segment (milliseconds for thousands of entries) and segments of similar size are merged,
log-structured-merge style, so a 10M bank is never rebuilt for a live change; a removal clears the row's
`alive` flag, which the very next search honours. `compact()` merges everything into one segment and
drops removed rows, for a quiet moment (it costs a full build).

One writer at a time; searches may run beside it (the segment list is replaced, not edited, by an add).
An add that merges into the big segment (a delta a quarter of its size) or `compact()` is a full build
(seconds for 10M, with both copies in memory meanwhile): run writes off the lookup path.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from moderation.banks.mih import HASH_BYTES, Matches, Segment
from moderation.perceptual import MATCH_DISTANCE, parse_pdq

DEFAULT_MAX_DISTANCE = MATCH_DISTANCE  # PDQ's recommended match threshold
# One parser for hex hashes everywhere (moderation/perceptual.py): the same words for the same mistake.
parse_hex = parse_pdq
MERGE_RATIO = 4  # a segment merges into the one before it once it is a quarter of that one's size


def to_hex(hash_bytes: bytes | np.ndarray) -> str:
    """32 bytes (or a uint8 [32] array) -> 64 lower-case hex digits."""
    data = bytes(np.asarray(hash_bytes, dtype=np.uint8).tobytes()) if isinstance(hash_bytes, np.ndarray) else hash_bytes
    if len(data) != HASH_BYTES:
        raise ValueError(f"a PDQ hash is {HASH_BYTES} bytes; got {len(data)}")
    return data.hex()


def as_hash_array(hashes: np.ndarray | Sequence[bytes] | Sequence[str]) -> np.ndarray:
    """uint8 [n, 32] from such an array, or a list of 32-byte strings, uint8 rows or hex strings."""
    if not isinstance(hashes, np.ndarray):
        raw = [
            parse_hex(h) if isinstance(h, str)
            else bytes(h) if isinstance(h, (bytes, bytearray, memoryview))
            else np.asarray(h, dtype=np.uint8).tobytes()
            for h in hashes
        ]
        if any(len(r) != HASH_BYTES for r in raw):
            raise ValueError(f"every PDQ hash is {HASH_BYTES} bytes")
        return np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), HASH_BYTES)
    if hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES:
        raise ValueError(f"hashes must be uint8 [n, {HASH_BYTES}]; got {hashes.dtype} {list(hashes.shape)}")
    return np.ascontiguousarray(hashes)


class HashIndex:
    """Entry ids (int64) with their 256-bit hashes; exact search within a Hamming distance.

    `chunks` fixes the number of multi-index chunks of the large segments (None: about log2(rows) bits a
    chunk); `threads` splits a query batch across threads (numpy releases the GIL in the heavy steps).
    """

    def __init__(self, threads: int = 1, chunks: int | None = None) -> None:
        self.threads = max(1, threads)
        self.chunks = chunks
        self._segments: list[Segment] = []
        self._pool: ThreadPoolExecutor | None = None

    # -- building ---------------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray | Sequence[int], hashes: np.ndarray | Sequence[bytes] | Sequence[str]) -> None:
        """Add entries; an id already present (or repeated in this call) keeps only its latest hash."""
        id_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        hash_array = as_hash_array(hashes)
        if len(id_array) != len(hash_array):
            raise ValueError(f"{len(id_array)} ids for {len(hash_array)} hashes")
        if len(id_array) == 0:
            return
        # Last occurrence wins inside the call, as it would across calls.
        _, last = np.unique(id_array[::-1], return_index=True)
        if len(last) != len(id_array):
            keep = np.sort(len(id_array) - 1 - last)
            id_array, hash_array = id_array[keep], hash_array[keep]
        self.remove(id_array)
        segments = [*self._segments, Segment(id_array, hash_array, self._chunks_for(len(id_array)))]
        while len(segments) >= 2 and segments[-1].live_count() * MERGE_RATIO >= segments[-2].live_count():
            segments[-2:] = [self._merge(segments[-2:])]
        self._segments = segments  # one assignment: a search running beside this sees old or new, both whole

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Disable entries (they stop matching at once); returns how many were live. Unknown ids are ignored."""
        id_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        removed = 0
        for segment in self._segments:
            removed += segment.disable(segment.rows_of(id_array))
        return removed

    def compact(self) -> None:
        """One segment of the live entries only: the full build, for a quiet moment (or after many removals)."""
        if self._segments:
            self._segments = [self._merge(self._segments)]

    def _merge(self, segments: list[Segment]) -> Segment:
        ids = np.concatenate([s.ids[s.alive] for s in segments])
        hashes = np.concatenate([s.hashes[s.alive] for s in segments])
        return Segment(ids, hashes, self._chunks_for(len(ids)))

    def _chunks_for(self, rows: int) -> int | None:
        # A fixed chunk count suits the big segment it was tuned for; small segments pick their own.
        return self.chunks if self.chunks is not None and rows >= 1_000_000 else None

    # -- searching --------------------------------------------------------------------------------------------

    def search(
        self, hashes: np.ndarray | Sequence[bytes] | Sequence[str], max_distance: int = DEFAULT_MAX_DISTANCE
    ) -> list[list[tuple[int, int]]]:
        """Per query, every live (entry id, distance) within `max_distance`, nearest first (ties by id)."""
        queries = as_hash_array(hashes)
        query, ids, distance = self.search_arrays(queries, max_distance)
        results: list[list[tuple[int, int]]] = [[] for _ in range(len(queries))]
        for q, entry, d in zip(query.tolist(), ids.tolist(), distance.tolist(), strict=True):
            results[q].append((entry, d))
        return results

    def search_arrays(
        self, hashes: np.ndarray | Sequence[bytes] | Sequence[str], max_distance: int = DEFAULT_MAX_DISTANCE
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat results (query position, entry id, distance), sorted by query, distance, id: no Python lists."""
        if not 0 <= max_distance <= 256:
            raise ValueError(f"max_distance must be 0..256; got {max_distance}")
        queries = as_hash_array(hashes)
        segments = self._segments
        parts = self._split(queries)
        if len(parts) == 1:
            found = [self._search_part(segments, queries, max_distance, 0)]
        else:
            pool = self._executor()
            futures = [pool.submit(self._search_part, segments, part, max_distance, first) for first, part in parts]
            found = [f.result() for f in futures]
        query = np.concatenate([f[0] for f in found])
        ids = np.concatenate([f[1] for f in found])
        distance = np.concatenate([f[2] for f in found])
        order = np.lexsort((ids, distance, query))
        return query[order], ids[order], distance[order]

    def _split(self, queries: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if self.threads == 1 or len(queries) < 2 * self.threads:
            return [(0, queries)]
        step = -(-len(queries) // self.threads)
        return [(first, queries[first : first + step]) for first in range(0, len(queries), step)]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pdq-index")
        return self._pool

    @staticmethod
    def _search_part(
        segments: list[Segment], queries: np.ndarray, max_distance: int, first: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found: list[Matches] = [s.search(queries, max_distance) for s in segments]
        if not found:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32)
        query = np.concatenate([m.query for m in found]) + first
        ids = np.concatenate([s.ids[m.row] for s, m in zip(segments, found, strict=True)])
        distance = np.concatenate([m.distance for m in found]).astype(np.int32)
        return query, ids, distance

    # -- size -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Live entries."""
        return sum(s.live_count() for s in self._segments)

    def memory_bytes(self) -> int:
        """Bytes held by the index's arrays (hashes, ids, flags and bucket tables)."""
        return sum(s.memory_bytes() for s in self._segments)

    @property
    def segment_sizes(self) -> list[int]:
        return [len(s) for s in self._segments]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
