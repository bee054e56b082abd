"""Search speed and quality: 1M stored 512-wide float16 embeddings, searched through `SearchIndex`.

    .venv/bin/python bench/search.py [--rows 1000000] [--queries 200] [--threads 2] [--nprobe 64,128,256,512]
                                     [--out bench/results/search.json]

Fills a fresh SQLite database with N verdicts and their random unit float16 embeddings (straight inserts,
as bench/backtest.py does; sources alternate, 2% flagged, created over the last 30 days), then builds the
index from the database exactly as `moderation search` does (`SearchIndex.build`: the streaming scan and
the faiss IVF index) and times it. Queries: `--queries` random unit vectors plus as many stored vectors
with noise added (cosine about 0.8 to their original). Per query, k=10, one at a time: latency of
`SearchIndex.search` (index search plus reading the 10 hits' rows), unfiltered, with a broad filter
(one source, not flagged: about 49%) and a selective one (flagged: about 2%); recall@10 against an exact
float32 scan of the same float16 vectors with the same filter. Also: an nprobe sweep (unfiltered), the
exact numpy scan's latency, and how long a refresh takes to make a newly saved verdict searchable.
Random vectors are the hard case for an inverted file (no clusters): real CLIP embeddings cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from common import CACHE, RESULTS, machine_info, percentile, say  # noqa: E402

DIM = 512
FILL_CHUNK = 50_000
MODEL = "bench/random"
SOURCES = ("uploads", "kids-app")


def vectors(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, DIM), dtype=np.float16)
    for start in range(0, rows, FILL_CHUNK):
        n = min(FILL_CHUNK, rows - start)
        chunk = rng.standard_normal((n, DIM), dtype=np.float32)
        out[start : start + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def metadata(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: source index, flagged, created at (POSIX seconds, spread over the last 30 days)."""
    rng = np.random.default_rng(1)
    now = time.time()
    return np.arange(rows) % 2, rng.random(rows) < 0.02, now - rng.random(rows) * 30 * 86400


def fill(url: str, stored: np.ndarray, meta: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    from moderation.storage import create_engine_for

    source, flagged, created = meta
    engine = create_engine_for(url)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, len(stored), FILL_CHUNK):
            verdicts, embeddings = [], []
            for number in range(start, min(start + FILL_CHUNK, len(stored))):
                sha = f"{number:064x}"
                moment = datetime.fromtimestamp(created[number], timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
                top, action = ("nsfw", "block") if flagged[number] else ("safe", "allow")
                verdicts.append((
                    number + 1, f"event-{number}", f"content-{number}", SOURCES[source[number]], "ok",
                    bool(flagged[number]), top, action, "{}", "bench", "0" * 64, MODEL, f"inline:{sha}", sha,
                    moment, moment, False, False,
                ))
                embeddings.append((MODEL, sha, DIM, stored[number].tobytes(), moment))
            marks = ", ".join(["?"] * 18)
            cursor.executemany(
                "INSERT INTO verdicts (id, event_id, content_id, source, status, flagged, top_category, action, "
                "scores, policy_version, policy_hash, model_id, image_ref, image_sha256, uploaded_at, created_at, "
                f"uncertain, embedding_reused) VALUES ({marks})",
                verdicts,
            )
            cursor.executemany(
                "INSERT INTO embeddings (model_id, image_sha256, dim, vector, created_at) VALUES (?, ?, ?, ?, ?)",
                embeddings,
            )
            raw.commit()
            say(f"filled {start + len(verdicts):,}/{len(stored):,} rows")
    finally:
        raw.close()
        engine.dispose()


def queries(stored: np.ndarray, count: int) -> np.ndarray:
    rng = np.random.default_rng(2)
    random = rng.standard_normal((count, DIM), dtype=np.float32)
    picked = stored[rng.choice(len(stored), count, replace=False)].astype(np.float32)
    noisy = picked + rng.standard_normal((count, DIM), dtype=np.float32) * (0.75 / np.sqrt(DIM))
    both = np.concatenate([random, noisy])
    return both / np.linalg.norm(both, axis=1, keepdims=True)


def exact_top10(stored: np.ndarray, query: np.ndarray, masks: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """Per filter, the ids (row + 1) of each query's exact top 10: one float32 product per chunk for all."""
    empty = (np.full((len(query), 0), -np.inf, np.float32), np.zeros((len(query), 0), np.int64))
    best = dict.fromkeys(masks, empty)
    for start in range(0, len(stored), 65_536):
        scores = query @ stored[start : start + 65_536].astype(np.float32).T  # [q, chunk]
        rows = np.arange(start, start + scores.shape[1])
        for name, mask in masks.items():
            s = scores if mask is None else np.where(mask[start : start + scores.shape[1]], scores, -np.inf)
            top = np.argpartition(-s, 10, axis=1)[:, :10]
            merged_s = np.concatenate([best[name][0], np.take_along_axis(s, top, 1)], axis=1)
            merged_i = np.concatenate([best[name][1], rows[top]], axis=1)
            keep = np.argsort(-merged_s, axis=1)[:, :10]
            best[name] = (np.take_along_axis(merged_s, keep, 1), np.take_along_axis(merged_i, keep, 1))
    return {name: ids + 1 for name, (_, ids) in best.items()}


def timed_search(index: object, query: np.ndarray, truth: np.ndarray, filters: object) -> dict[str, float]:
    latencies, recalls = [], []
    for q, expected in zip(query, truth, strict=True):
        started = time.perf_counter()
        hits = index.search(q, 10, filters)  # type: ignore[attr-defined]
        latencies.append((time.perf_counter() - started) * 1000)
        found = {hit.row.verdict_id for hit in hits}
        recalls.append(len(found & set(expected.tolist())) / 10)
    return {
        "p50_ms": round(percentile(latencies, 50), 2),  # type: ignore[arg-type]
        "p95_ms": round(percentile(latencies, 95), 2),  # type: ignore[arg-type]
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "recall_random": round(float(np.mean(recalls[: len(recalls) // 2])), 4),
        "recall_perturbed": round(float(np.mean(recalls[len(recalls) // 2 :])), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200, help="random queries; as many perturbed stored ones")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nprobe", default="32,64,128", help="nprobe values to sweep (unfiltered)")
    parser.add_argument("--exact-queries", type=int, default=20, help="queries timed on the exact numpy scan")
    parser.add_argument("--out", type=Path, default=RESULTS / "search.json")
    args = parser.parse_args()

    import faiss

    from moderation.search import ExactIndex, FaissIndex, Filters, SearchIndex
    from moderation.storage import create_engine_for, upgrade

    faiss.omp_set_num_threads(args.threads)
    results: dict[str, object] = {"rows": args.rows, "threads": args.threads, "machine": machine_info()}
    stored = vectors(args.rows)
    meta = metadata(args.rows)
    query = queries(stored, args.queries)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"search-{secrets.token_hex(4)}.db"
    url = f"sqlite:///{path}"
    try:
        upgrade(url)
        started = time.perf_counter()
        fill(url, stored, meta)
        results["fill_s"] = round(time.perf_counter() - started, 1)
        engine = create_engine_for(url)
        index = SearchIndex(engine, MODEL, FaissIndex, refresh_every=3600)
        started = time.perf_counter()
        index.build(progress=lambda n: say(f"indexed {n:,}") if n % 200_000 == 0 else None)
        results["build_s"] = round(time.perf_counter() - started, 1)
        inner = index._index  # the FaissIndex, for its parameters and bytes
        results["index"] = {"nlist": inner.nlist, "nprobe": inner.nprobe, "codes": "SQ8"}  # type: ignore[union-attr]
        results["index_memory_mb"] = round(index.memory_bytes() / 2**20, 1)
        results["serialized_mb"] = round(len(faiss.serialize_index(inner._index)) / 2**20, 1)  # type: ignore[union-attr]
        say(f"built in {results['build_s']} s, {results['index_memory_mb']} MB")

        source, flagged, created = meta
        broad = Filters(sources=(SOURCES[0],), flagged=False)
        selective = Filters(flagged=True)
        truth = exact_top10(stored, query, {"none": None, "broad": (source == 0) & ~flagged, "selective": flagged})
        say("exact top 10s computed")
        runs: dict[str, object] = {}
        default = inner.nprobe  # type: ignore[union-attr]
        for nprobe in [int(p) for p in args.nprobe.split(",") if p]:
            inner.nprobe = nprobe  # type: ignore[union-attr]
            runs[f"nprobe {nprobe}"] = timed_search(index, query, truth["none"], None)
            say(f"nprobe {nprobe}: {runs[f'nprobe {nprobe}']}")
        inner.nprobe = default  # type: ignore[union-attr]
        results["sweep"] = runs
        table = {}
        for name, filters in (("unfiltered", None), ("broad filter", broad), ("selective filter", selective)):
            key = {"unfiltered": "none", "broad filter": "broad", "selective filter": "selective"}[name]
            table[name] = timed_search(index, query, truth[key], filters)
            say(f"{name}: {table[name]}")
        results["search"] = table

        exact = ExactIndex(DIM)
        exact.add(np.arange(1, args.rows + 1, dtype=np.int64), stored)
        latencies = []
        for q in query[: args.exact_queries]:
            started = time.perf_counter()
            exact.search(q, 10)
            latencies.append((time.perf_counter() - started) * 1000)
        results["exact_numpy_p50_ms"] = round(percentile(latencies, 50), 1)  # type: ignore[arg-type]
        del exact

        # A new verdict: saved, then one refresh (what `search` runs every 30 s) makes it searchable.
        newest = stored[0].astype(np.float32) * -1  # far from everything else's neighbours
        with engine.begin() as conn:
            now = datetime.now(timezone.utc)
            moment = now.strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.exec_driver_sql(
                "INSERT INTO verdicts (id, event_id, content_id, source, status, flagged, top_category, action, "
                "scores, policy_version, policy_hash, model_id, image_ref, image_sha256, uploaded_at, created_at, "
                "uncertain, embedding_reused) VALUES (?, 'event-new', 'content-new', 'uploads', 'ok', 0, 'safe', "
                "'allow', '{}', 'bench', ?, ?, 'inline:new', 'new', ?, ?, 0, 0)",
                (args.rows + 1, "0" * 64, MODEL, moment, moment),
            )
            conn.exec_driver_sql(
                "INSERT INTO embeddings (model_id, image_sha256, dim, vector, created_at) VALUES (?, 'new', ?, ?, ?)",
                (MODEL, DIM, newest.astype(np.float16).tobytes(), moment),
            )
        index._refreshed_at = time.time() - 60  # as if the last refresh was a minute ago
        started = time.perf_counter()
        added = index.refresh()
        results["refresh_ms"] = round((time.perf_counter() - started) * 1000, 1)
        hits = index.search(newest, 1)
        results["new_verdict_found"] = bool(added == 1 and hits and hits[0].row.event_id == "event-new")
        engine.dispose()
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    print(f"\nsearch over {args.rows:,} stored {DIM}-wide float16 embeddings, {args.threads} threads, k=10, "
          f"{2 * args.queries} queries (half random, half perturbed stored vectors)")
    print(f"build from the database: {results['build_s']} s (fill {results['fill_s']} s); index memory "
          f"{results['index_memory_mb']} MB (serialized {results['serialized_mb']} MB); {results['index']}")
    print(f"{'':<22}{'p50 ms':>9}{'p95 ms':>9}{'recall@10':>11}{'random':>9}{'perturbed':>11}")
    for name, row in [*runs.items(), *table.items()]:
        print(f"{name:<22}{row['p50_ms']:>9}{row['p95_ms']:>9}{row['recall_at_10']:>11}"  # type: ignore[index]
              f"{row['recall_random']:>9}{row['recall_perturbed']:>11}")  # type: ignore[index]
    print(f"exact numpy scan p50: {results['exact_numpy_p50_ms']} ms; refresh with one new verdict: "
          f"{results['refresh_ms']} ms, found: {results['new_verdict_found']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
