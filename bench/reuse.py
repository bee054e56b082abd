"""Duplicate reuse: the scorer stage on a stream where some uploads repeat, with reuse on and off.

    .venv/bin/python bench/reuse.py [--images 192] [--repeat 0.5] [--size 512x512] [--reps 2]
                                    [--out bench/results/reuse.json]

A stream of N events over photo-like JPEGs in which a fraction `--repeat` are byte-identical repeats of
earlier ones (spread through the stream, as re-shares are), moderated in batches of 32 by
`Moderator.moderate` (load, decode, preprocess, embed, decide) on a random-init ViT-B/32, once with an
`EmbeddingCache` (what the worker uses) and once without. Medians of `--reps`; prints a table and
writes JSON. With reuse on, repeats still pay for fetching and decoding (the hash is of the bytes) but
skip the image tower, the expensive step on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CACHE, POLICY, RESULTS, ensure_images, machine_info, parse_size, policy_prompts, say  # noqa: E402
from measures import file_events  # noqa: E402
from models import build_random_clip  # noqa: E402

from moderation.clip_scorer import ClipScorer  # noqa: E402
from moderation.moderator import Moderator  # noqa: E402
from moderation.policy import load_policy  # noqa: E402
from moderation.reuse import EmbeddingCache  # noqa: E402
from moderation.settings import ImageSettings  # noqa: E402

BATCH = 32


def stream(paths: list[Path], count: int, repeat: float, seed: int = 0) -> list[Path]:
    """`count` paths of which about `repeat` are repeats of a path seen earlier in the stream."""
    rng = np.random.default_rng(seed)
    distinct = iter(paths)
    seen: list[Path] = []
    order = []
    for _ in range(count):
        if seen and rng.random() < repeat:
            order.append(seen[int(rng.integers(len(seen)))])
        else:
            seen.append(next(distinct))
            order.append(seen[-1])
    return order


def rep(scorer: ClipScorer, policy: object, events: list, reuse: bool) -> tuple[float, int]:
    cache = EmbeddingCache(scorer.model_id) if reuse else None
    moderator = Moderator(scorer, policy, ImageSettings(), loader_threads=4, cache=cache)  # type: ignore[arg-type]
    try:
        started = time.perf_counter()
        reused = 0
        for start in range(0, len(events), BATCH):
            verdicts = moderator.moderate(events[start : start + BATCH])
            assert all(v.status.value == "ok" for v in verdicts)
            reused += sum(v.embedding_reused for v in verdicts)
        return len(events) / (time.perf_counter() - started), reused
    finally:
        moderator.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=192, help="events in the stream (default 192)")
    parser.add_argument("--repeat", type=float, default=0.5, help="share of events that repeat earlier bytes")
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="image size WxH (default 512x512)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions; the median is reported")
    parser.add_argument("--out", type=Path, default=RESULTS / "reuse.json")
    args = parser.parse_args()

    prompts, _ = policy_prompts()
    model_dir = build_random_clip(CACHE / "clip-vit-b32-random", prompts)
    scorer = ClipScorer.load(str(model_dir), device="cpu")
    policy = load_policy(POLICY)
    scorer.policy_text(policy)
    paths = ensure_images(args.images, args.size)
    order = stream(paths, args.images, args.repeat)
    events = file_events(order)
    distinct = len(set(order))
    results: dict[str, object] = {
        "events": len(events), "distinct_images": distinct, "repeat_share": round(1 - distinct / len(events), 3),
        "size": args.size, "batch": BATCH, "machine": machine_info(),
    }
    for label, reuse in (("reuse off", False), ("reuse on", True)):
        runs = []
        for number in range(args.reps):
            rate, reused = rep(scorer, policy, events, reuse)
            runs.append(rate)
            say(f"{label} rep {number + 1}: {rate:.1f} events/s, {reused} embeddings reused")
        results[label] = {"events_per_s": statistics.median(runs), "runs": runs, "reused": reused}
    off, on = results["reuse off"]["events_per_s"], results["reuse on"]["events_per_s"]  # type: ignore[index]
    results["speedup"] = round(on / off, 2)
    print(f"\n{len(events)} events, {distinct} distinct ({results['repeat_share']:.0%} repeats), "
          f"{args.size[0]}x{args.size[1]} JPEGs, batch {BATCH}, median of {args.reps}")
    print(f"{'':<11}{'events/s':>10}{'reused':>8}")
    for label in ("reuse off", "reuse on"):
        row = results[label]
        print(f"{label:<11}{row['events_per_s']:>10.1f}{row['reused']:>8}")  # type: ignore[index]
    print(f"speed-up with reuse: {results['speedup']}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
