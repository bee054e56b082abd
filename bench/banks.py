"""Hash-bank lookups: 10M PDQ-sized (256-bit) hashes in `HashIndex`, exact matches within distance 31.

    .venv/bin/python bench/banks.py [--hashes 10000000] [--planted 100000] [--threads 2] [--reps 3]
                                    [--recall-queries 200] [--chunks M] [--compare-rows 0]
                                    [--out bench/results/banks.json]

The bank: `--hashes` uniform random hashes, of which the last `--planted` are near copies (1..31 random
bits flipped) of other entries, so the bank holds clusters as real ones do. Queries: a third random (no
match expected: the cost of a miss), a third near copies of entries at every distance 0..31, a third at
32..40 (just beyond: must not match). Reported: the build (one `add` of everything), index bytes and
process RSS, lookups/s at distance 31 with batches of 1 and 256 (medians of `--reps`), recall and false
matches against a brute-force scan (faiss `IndexBinaryFlat.range_search`) on `--recall-queries`, per
distance, and the live changes: adding 10,000 entries (one call, and 100 calls of 100) and removing 10,000,
with lookups/s after them. `--compare-rows N` also times faiss's `IndexBinaryMultiHash` (the same
pigeonhole, in C++) and `IndexBinaryFlat` against `HashIndex` on an N-hash bank.
Uniform random hashes are the worst case for the bucket tables' balance only at narrow chunks; real banks
cluster (more matches per query, fewer random candidates).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from common import RESULTS, current_rss_mb, machine_info, peak_rss_mb, say, summarise  # noqa: E402

RADIUS = 31
GEN_CHUNK = 1_000_000


def flip_bits(hashes: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of `hashes` ([n, 32]) with exactly counts[i] distinct random bits flipped in row i."""
    out = np.empty_like(hashes)
    for first in range(0, len(hashes), 20_000):
        block = np.unpackbits(hashes[first : first + 20_000], axis=1)
        # The k smallest of 256 random keys per row: k distinct positions, vectorised.
        ranks = np.argsort(rng.random(block.shape), axis=1).argsort(axis=1)
        block ^= (ranks < counts[first : first + 20_000, None]).astype(np.uint8)
        out[first : first + 20_000] = np.packbits(block, axis=1)
    return out


def make_bank(rows: int, planted: int, rng: np.random.Generator) -> np.ndarray:
    bank = np.empty((rows, 32), dtype=np.uint8)
    for first in range(0, rows, GEN_CHUNK):
        bank[first : first + GEN_CHUNK] = rng.integers(0, 256, (min(GEN_CHUNK, rows - first), 32), dtype=np.uint8)
    planted = min(planted, rows // 2)
    if planted:
        sources = rng.integers(0, rows - planted, planted)
        bank[rows - planted :] = flip_bits(bank[sources], rng.integers(1, RADIUS + 1, planted), rng)
    return bank


def make_queries(bank: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Queries and the distance each was planted at (-1: random)."""
    third = count // 3
    near_d = np.arange(third) % (RADIUS + 1)  # every distance 0..31, in turn
    far_d = RADIUS + 1 + np.arange(count - 2 * third) % 9  # 32..40
    random = rng.integers(0, 256, (third, 32), dtype=np.uint8)
    near = flip_bits(bank[rng.integers(0, len(bank), third)], near_d, rng)
    far = flip_bits(bank[rng.integers(0, len(bank), len(far_d))], far_d, rng)
    order = rng.permutation(count)
    return np.concatenate([random, near, far])[order], np.concatenate([np.full(third, -1), near_d, far_d])[order]


def lookups_per_s(index, queries: np.ndarray, batch: int, reps: int, callers: int = 1) -> dict[str, object]:
    """Lookups/s over `queries` in batches of `batch`, from `callers` threads at once; median of reps."""
    batches = [queries[i : i + batch] for i in range(0, len(queries), batch)]
    rates = []
    for _ in range(reps):
        started = time.perf_counter()
        if callers == 1:
            for b in batches:
                index.search_arrays(b, RADIUS)
        else:
            with ThreadPoolExecutor(callers) as pool:
                list(pool.map(lambda b: index.search_arrays(b, RADIUS), batches))
        rates.append(len(queries) / (time.perf_counter() - started))
    return summarise(rates)


def recall(index, bank: np.ndarray, ids: np.ndarray, queries: np.ndarray, threads: int) -> dict[str, object]:
    """HashIndex against faiss's brute-force range search (distance < radius + 1), per true distance."""
    import faiss

    faiss.omp_set_num_threads(threads)
    flat = faiss.IndexBinaryFlat(256)
    flat.add(bank)
    started = time.perf_counter()
    limits, distances, labels = flat.range_search(queries, RADIUS + 1)  # faiss: strictly below the radius
    brute_s = time.perf_counter() - started
    del flat
    query, found_ids, found_d = index.search_arrays(queries, RADIUS)
    truth = {(int(q), int(ids[label]), int(d)) for q in range(len(queries))
             for label, d in zip(labels[limits[q] : limits[q + 1]], distances[limits[q] : limits[q + 1]], strict=True)}
    got = set(zip(query.tolist(), found_ids.tolist(), found_d.tolist(), strict=True))
    by_distance: dict[int, list[int]] = {}
    for _, _, d in truth:
        by_distance.setdefault(d, [0, 0])[0] += 1
    for _, _, d in truth & got:
        by_distance[d][1] += 1
    return {
        "queries": len(queries),
        "true_matches": len(truth),
        "found": len(truth & got),
        "missed": len(truth - got),
        "false_matches": len(got - truth),
        "beyond_radius": int((found_d > RADIUS).sum()),
        "recall": round(len(truth & got) / len(truth), 6) if truth else None,
        "distances_covered": sorted(by_distance),
        "per_distance_true_found": {d: by_distance[d] for d in sorted(by_distance)},
        "brute_force_s": round(brute_s, 2),
    }


def live_changes(
    index, bank: np.ndarray, ids: np.ndarray, queries: np.ndarray, reps: int, rng: np.random.Generator
) -> dict:
    base_id = 10**12  # far above the bank's ids
    added = rng.integers(0, 256, (10_000, 32), dtype=np.uint8)
    started = time.perf_counter()
    index.add(np.arange(10_000) + base_id, added)
    one_call = time.perf_counter() - started
    small = rng.integers(0, 256, (10_000, 32), dtype=np.uint8)
    times = []
    for i in range(100):
        started = time.perf_counter()
        index.add(np.arange(i * 100, i * 100 + 100) + 2 * base_id, small[i * 100 : i * 100 + 100])
        times.append(time.perf_counter() - started)
    near = flip_bits(added[:100], np.full(100, 20), rng)
    q, found, _ = index.search_arrays(near, RADIUS)
    added_found = int(np.isin(np.arange(100) + base_id, found).sum())
    victims = rng.choice(len(bank) - 1, 10_000, replace=False)
    started = time.perf_counter()
    removed = index.remove(ids[victims])
    remove_s = time.perf_counter() - started
    _, found, _ = index.search_arrays(bank[victims[:256]], 0)
    still = int(np.isin(ids[victims[:256]], found).sum())
    return {
        "add_10000_one_call_ms": round(one_call * 1000, 1),
        "add_100x100_ms": summarise([t * 1000 for t in times]),
        "add_100x100_total_ms": round(sum(times) * 1000, 1),
        "added_found_of_100_at_distance_20": added_found,
        "remove_10000_ms": round(remove_s * 1000, 1),
        "removed_live": removed,
        "removed_still_matching_of_256": still,
        "segments_after": index.segment_sizes,
        "batch_256_after": lookups_per_s(index, queries, 256, reps),
    }


def compare(rows: int, threads: int, rng: np.random.Generator) -> dict[str, object]:
    """faiss's IndexBinaryMultiHash (11 x 23 bits, 2 flips: exact below 33) and IndexBinaryFlat vs HashIndex."""
    import faiss

    from moderation.banks import HashIndex

    faiss.omp_set_num_threads(threads)
    bank = make_bank(rows, rows // 100, rng)
    queries, _ = make_queries(bank, 768, rng)
    out: dict[str, object] = {"rows": rows}
    before = current_rss_mb()
    started = time.perf_counter()
    multi = faiss.IndexBinaryMultiHash(256, 11, 23)
    multi.nflip = 2
    multi.add(bank)
    build = time.perf_counter() - started
    started = time.perf_counter()
    limits, _, _ = multi.range_search(queries, RADIUS + 1)
    out["faiss_multihash"] = {"build_s": round(build, 1), "rss_added_mb": round(current_rss_mb() - before, 1),
                              "lookups_per_s": round(len(queries) / (time.perf_counter() - started)),
                              "matches": int(limits[-1])}
    del multi
    flat = faiss.IndexBinaryFlat(256)
    flat.add(bank)
    started = time.perf_counter()
    limits, _, _ = flat.range_search(queries[:256], RADIUS + 1)
    out["faiss_flat"] = {"lookups_per_s": round(256 / (time.perf_counter() - started))}
    del flat
    before = current_rss_mb()
    index = HashIndex(threads=threads)
    started = time.perf_counter()
    index.add(np.arange(rows), bank)
    build = time.perf_counter() - started
    started = time.perf_counter()
    for first in range(0, len(queries), 256):
        index.search_arrays(queries[first : first + 256], RADIUS)
    out["hash_index"] = {"build_s": round(build, 1), "rss_added_mb": round(current_rss_mb() - before, 1),
                         "memory_mb": round(index.memory_bytes() / 2**20, 1),
                         "lookups_per_s": round(len(queries) / (time.perf_counter() - started)),
                         "matches": len(index.search_arrays(queries, RADIUS)[0])}
    index.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hashes", type=int, default=10_000_000)
    parser.add_argument("--planted", type=int, default=100_000, help="bank entries that are near copies of others")
    parser.add_argument("--queries", type=int, default=3072, help="timed queries (a third each: random, near, far)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=None, help="index chunks (default: ~log2(rows) bits each)")
    parser.add_argument("--compare-rows", type=int, default=0, help="also compare faiss's binary indexes at N rows")
    parser.add_argument("--out", type=Path, default=RESULTS / "banks.json")
    args = parser.parse_args()

    from moderation.banks import HashIndex

    rng = np.random.default_rng(15)
    results: dict[str, object] = {"hashes": args.hashes, "planted": args.planted, "radius": RADIUS,
                                  "threads": args.threads, "machine": machine_info()}
    rss_start = current_rss_mb()
    bank = make_bank(args.hashes, args.planted, rng)
    ids = np.arange(args.hashes, dtype=np.int64) * 3 + 7  # ids are not positions
    queries, planted_at = make_queries(bank, args.queries, rng)
    say(f"{args.hashes:,} hashes generated ({args.planted:,} planted near copies), {len(queries):,} queries")
    rss_data = current_rss_mb()

    index = HashIndex(threads=args.threads, chunks=args.chunks)
    started = time.perf_counter()
    index.add(ids, bank)
    results["build_s"] = round(time.perf_counter() - started, 1)
    rss_index = current_rss_mb()
    layout = index._segments[0].layout
    results["chunks"] = [w for _, w in layout]
    results["index_memory_mb"] = round(index.memory_bytes() / 2**20, 1)
    results["rss_mb"] = {"start": rss_start, "with_bank": rss_data, "with_index": rss_index,
                         "index_added": round(rss_index - rss_data, 1)}
    say(f"built in {results['build_s']} s: {len(layout)} chunks, {results['index_memory_mb']} MB")

    matched = index.search_arrays(queries, RADIUS)
    per_query = np.bincount(matched[0], minlength=len(queries))
    results["matches_per_query"] = {kind: round(float(per_query[mask].mean()), 2) for kind, mask in (
        ("random", planted_at < 0), ("near", (planted_at >= 0) & (planted_at <= RADIUS)), ("far", planted_at > RADIUS))}
    single = HashIndex(threads=1)
    single._segments = index._segments  # the same tables, searched on one thread
    speed = {
        "batch 1": lookups_per_s(index, queries[:768], 1, args.reps),
        f"batch 1, {args.threads} callers": lookups_per_s(index, queries[:768], 1, args.reps, callers=args.threads),
        "batch 32": lookups_per_s(index, queries, 32, args.reps),
        "batch 256": lookups_per_s(index, queries, 256, args.reps),
        "batch 256, 1 thread": lookups_per_s(single, queries, 256, args.reps),
    }
    results["lookups_per_s"] = speed
    for name, value in speed.items():
        say(f"{name}: {value['median']:.0f} lookups/s")

    # Every planted distance 0..32 twice (the near and far queries), the rest at random.
    near = [np.flatnonzero(planted_at == d)[:2] for d in range(RADIUS + 2)]
    rest = rng.permutation(np.setdiff1d(np.arange(len(queries)), np.concatenate(near)))
    sample = np.concatenate([*near, rest])[: args.recall_queries]
    results["recall"] = recall(index, bank, ids, queries[sample], args.threads)
    say(f"recall {results['recall']['recall']} ({results['recall']['true_matches']} true matches), "
        f"{results['recall']['false_matches']} false")

    results["live"] = live_changes(index, bank, ids, queries, args.reps, rng)
    say(f"live: add 10,000 {results['live']['add_10000_one_call_ms']} ms, remove 10,000 "
        f"{results['live']['remove_10000_ms']} ms, segments {results['live']['segments_after']}")
    results["peak_rss_mb"] = peak_rss_mb()
    index.close()
    del index, single
    if args.compare_rows:
        say(f"comparing faiss's binary indexes at {args.compare_rows:,} rows")
        del bank
        results["compare"] = compare(args.compare_rows, args.threads, rng)

    live = results["live"]
    print(f"| bank.py: {args.hashes:,} hashes ({args.planted:,} planted), distance {RADIUS}, "
          f"{args.threads} threads | value |")
    print("|---|---:|")
    print(f"| build (one add), s | {results['build_s']} |")
    print(f"| index memory, MB / RSS added by the index, MB | {results['index_memory_mb']} / "
          f"{results['rss_mb']['index_added']} |")
    for name, value in speed.items():
        print(f"| lookups/s, {name} | {value['median']:.0f} ({value['min']:.0f}-{value['max']:.0f}) |")
    rec = results["recall"]
    print(f"| recall vs brute force ({rec['queries']} queries, {rec['true_matches']} true matches, distances "
          f"{min(rec['distances_covered'], default=0)}-{max(rec['distances_covered'], default=0)}) | {rec['recall']} |")
    print(f"| false matches / beyond the distance | {rec['false_matches']} / {rec['beyond_radius']} |")
    print(f"| add 10,000 in one call, ms | {live['add_10000_one_call_ms']} |")
    print(f"| add 100 x 100, ms each (median) / total | {live['add_100x100_ms']['median']} / "
          f"{live['add_100x100_total_ms']} |")
    print(f"| remove 10,000 live, ms | {live['remove_10000_ms']} |")
    print(f"| lookups/s, batch 256 after the changes (segments {live['segments_after']}) | "
          f"{live['batch_256_after']['median']:.0f} |")
    print(f"| peak RSS, MB | {results['peak_rss_mb']} |")
    if "compare" in results:
        comp = results["compare"]
        for name in ("faiss_multihash", "faiss_flat", "hash_index"):
            print(f"| compare {comp['rows']:,} rows: {name} | {json.dumps(comp[name])} |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
