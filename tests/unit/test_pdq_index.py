"""HashIndex: exact radius search checked against a brute-force popcount, live adds and removals, hex."""

from __future__ import annotations

import numpy as np
import pytest

from moderation.banks import HashIndex, mih, parse_hex, to_hex
from moderation.banks.mih import SCAN_ROWS

ROWS = 20_000  # above SCAN_ROWS: the multi-index tables are built and probed, not scanned


def flipped(hashes: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Copies of `hashes` with exactly `bits` distinct bits flipped in each."""
    unpacked = np.unpackbits(hashes, axis=1)
    for row in unpacked:
        row[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked, axis=1)


def brute_force(stored: np.ndarray, ids: np.ndarray, queries: np.ndarray, radius: int) -> list[list[tuple[int, int]]]:
    distance = np.unpackbits(queries[:, None, :] ^ stored[None, :, :], axis=2).sum(axis=2)
    out = []
    for row in distance:
        hits = np.flatnonzero(row <= radius)
        out.append(sorted(((int(ids[h]), int(row[h])) for h in hits), key=lambda p: (p[1], p[0])))
    return out


@pytest.fixture(scope="module")
def bank() -> tuple[np.ndarray, np.ndarray, np.ndarray, HashIndex]:
    """Random hashes with ids that are not positions, and queries planted at known distances."""
    rng = np.random.default_rng(15)
    stored = rng.integers(0, 256, (ROWS, 32), dtype=np.uint8)
    ids = rng.permutation(ROWS).astype(np.int64) * 10 + 1_000_000
    sources = rng.integers(0, ROWS, 60)
    queries = np.concatenate([flipped(stored[sources[i * 6 : i * 6 + 6]], d, rng) for i, d in enumerate(
        (0, 1, 15, 30, 31, 32, 33, 40, 8, 24))])
    index = HashIndex()
    index.add(ids, stored)
    assert index.segment_sizes == [ROWS]
    return stored, ids, queries, index


@pytest.mark.parametrize("radius", [0, 1, 15, 31, 32])
def test_exact_against_brute_force(bank, radius: int) -> None:
    stored, ids, queries, index = bank
    assert index.search(queries, radius) == brute_force(stored, ids, queries, radius)


def test_boundary_31_found_32_not(bank) -> None:
    stored, ids, _, index = bank
    rng = np.random.default_rng(1)
    at_31, at_32 = flipped(stored[:1], 31, rng), flipped(stored[1:2], 32, rng)
    assert (int(ids[0]), 31) in index.search(at_31, 31)[0]
    assert all(entry != ids[1] for entry, _ in index.search(at_32, 31)[0])
    assert (int(ids[1]), 32) in index.search(at_32, 32)[0]


def test_batch_agrees_with_single_queries(bank, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, queries, index = bank
    batch = index.search(queries, 31)
    assert [index.search(q[None, :], 31)[0] for q in queries] == batch
    monkeypatch.setattr(mih, "BLOCK_PROBES", 500)  # blocks of 2 queries: the batch split inside a segment
    assert index.search(queries, 31) == batch
    monkeypatch.undo()
    threaded = HashIndex(threads=2)
    threaded._segments = index._segments
    assert threaded.search(queries, 31) == batch


def test_remove_stops_matching_and_add_after_build_matches() -> None:
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 256, (ROWS, 32), dtype=np.uint8)
    index = HashIndex()
    index.add(np.arange(ROWS) + 5, stored)
    assert index.search(stored[:3], 31) == [[(5, 0)], [(6, 0)], [(7, 0)]]
    assert index.remove([5, 7, 999_999]) == 2
    assert index.search(stored[:3], 31) == [[], [(6, 0)], []]
    assert len(index) == ROWS - 2

    extra = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    index.add(np.arange(300) + 50_000, extra)
    assert len(index.segment_sizes) == 2  # a small delta segment beside the built one: no rebuild
    near = flipped(extra[:4], 20, rng)
    assert index.search(near, 31) == [[(50_000 + i, 20)] for i in range(4)]
    # Re-adding a removed id brings it back, and re-adding a live id replaces its hash.
    index.add([5, 6], [stored[0], extra[299]])
    assert index.search(stored[:2], 0) == [[(5, 0)], []]
    assert (6, 0) in index.search(extra[299:300], 0)[0]
    assert len(index) == ROWS - 1 + 300

    index.compact()
    assert index.segment_sizes == [ROWS - 1 + 300]
    assert index.search(stored[:3], 0) == [[(5, 0)], [], []]


def test_small_adds_merge_into_few_segments() -> None:
    rng = np.random.default_rng(3)
    index = HashIndex()
    stored = rng.integers(0, 256, (2_000, 32), dtype=np.uint8)
    for start in range(0, 2_000, 50):
        index.add(np.arange(start, start + 50), stored[start : start + 50])
    assert len(index) == 2_000 and len(index.segment_sizes) <= 6
    assert index.search(stored[[0, 777, 1999]], 0) == [[(0, 0)], [(777, 0)], [(1999, 0)]]
    assert index.memory_bytes() >= 2_000 * 32


def test_scan_path_small_index_is_exact() -> None:
    rng = np.random.default_rng(4)
    stored = rng.integers(0, 256, (SCAN_ROWS - 1, 32), dtype=np.uint8)
    ids = np.arange(len(stored)) * 3
    queries = np.concatenate([flipped(stored[:5], 31, rng), flipped(stored[5:10], 32, rng), stored[10:12]])
    index = HashIndex()
    index.add(ids, stored)
    assert index.search(queries, 31) == brute_force(stored, ids, queries, 31)


def test_wide_distance_falls_back_to_a_scan(bank) -> None:
    stored, ids, queries, index = bank
    assert index.search(queries[:3], 90) == brute_force(stored, ids, queries[:3], 90)


def test_empty_index_and_empty_batch() -> None:
    index = HashIndex()
    query = np.zeros((2, 32), dtype=np.uint8)
    assert index.search(query, 31) == [[], []]
    assert index.search(np.empty((0, 32), dtype=np.uint8), 31) == []
    assert len(index) == 0 and index.memory_bytes() == 0
    assert index.remove([1, 2]) == 0


def test_hex_round_trip_and_refusals() -> None:
    text = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
    raw = parse_hex(text)
    assert len(raw) == 32 and to_hex(raw) == text
    assert parse_hex(text.upper()) == raw
    index = HashIndex()
    index.add([42], [text])
    assert index.search([text], 0) == [[(42, 0)]]
    assert index.search([raw], 0) == [[(42, 0)]]
    for bad in (text[:-1], text + "0", "g" * 64, "", "0x" + text[2:]):
        with pytest.raises(ValueError, match="a PDQ hash is"):
            parse_hex(bad)
    with pytest.raises(ValueError, match="a PDQ hash is"):
        parse_hex(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        to_hex(b"\x00" * 31)
    with pytest.raises(ValueError, match="ids for"):
        index.add([1, 2], [text])
    with pytest.raises(ValueError, match="max_distance"):
        index.search([text], 257)
