"""The vector indexes behind search: the faiss index agrees with the exact scan, with and without filters."""

from __future__ import annotations

import numpy as np
import pytest

from moderation.search.index import ExactIndex, FaissIndex, top_k


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_top_k_is_best_first() -> None:
    assert top_k(np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32), 2).tolist() == [1, 3]
    assert top_k(np.array([0.1, 0.9], dtype=np.float32), 5).tolist() == [1, 0]


def test_exact_index_finds_a_stored_vector_first_across_growths() -> None:
    vectors = unit_vectors(3000, 32)
    index = ExactIndex(32)
    for start in range(0, 3000, 700):  # several adds, past the first capacity
        index.add(np.arange(start, min(start + 700, 3000)) + 10, vectors[start : start + 700].astype(np.float16))
    ids, scores = index.search(vectors[2500], 3)
    assert index.size == 3000 and ids[0] == 2510 and scores[0] == pytest.approx(1.0, abs=1e-3)
    assert list(scores) == sorted(scores, reverse=True)


def test_exact_index_searches_only_the_allowed_ids() -> None:
    vectors = unit_vectors(500, 16)
    index = ExactIndex(16)
    index.add(np.arange(500)[::-1].copy(), vectors.astype(np.float16))  # ids out of order
    allowed = np.array([3, 7, 11, 9999])  # 9999 is not in the index
    ids, _ = index.search(vectors[0], 10, allowed)
    assert sorted(ids.tolist()) == [3, 7, 11]


def test_faiss_index_stays_exact_until_it_has_enough_to_train() -> None:
    vectors = unit_vectors(100, 16)
    index = FaissIndex(16, nlist=8)
    index.add(np.arange(100), vectors)
    ids, _ = index.search(vectors[42], 1)
    assert ids.tolist() == [42] and index.size == 100


def test_faiss_index_agrees_with_the_exact_scan() -> None:
    vectors = unit_vectors(4000, 32, seed=1)
    ids = np.arange(4000) * 3 + 1
    exact, approximate = ExactIndex(32), FaissIndex(32, nlist=16, nprobe=16)
    for start in range(0, 4000, 1000):
        exact.add(ids[start : start + 1000], vectors[start : start + 1000].astype(np.float16))
        approximate.add(ids[start : start + 1000], vectors[start : start + 1000])
    assert approximate.size == 4000 and approximate.memory_bytes() > 0
    allowed = ids[::5]
    for query in unit_vectors(20, 32, seed=2):
        assert recall(exact.search(query, 10)[0], approximate.search(query, 10)[0]) >= 0.9
        filtered = approximate.search(query, 10, allowed)[0]
        assert set(filtered.tolist()) <= set(allowed.tolist())
        assert recall(exact.search(query, 10, allowed)[0], filtered) >= 0.9


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return len(set(truth.tolist()) & set(found.tolist())) / len(truth)
