"""What PDQ hashing adds to each picture's CPU cost: the loader with and without it, against the forward pass.

    .venv/bin/python bench/pdq.py [--images 48] [--reps 5] [--out bench/results/pdq.json]

The loader step of a worker (`moderation.images.load_bytes` with the model's preprocessing spec: JPEG
draft decode, orientation, RGB, resize and crop, normalise) over photo-like pictures, JPEG 1024x768,
JPEG 512x512 and PNG 1024x768, with `images.pdq` on and off, round-robin per repetition (the machine is
noisy: trust the ratio within one run). The forward pass per image is a random-init ViT-B/32 image tower
at batch 32 (bench/models.py), fp32 on this CPU: the cost a picture's hash is measured against. Medians;
prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CACHE, RESULTS, machine_info, photo_like, policy_prompts, say  # noqa: E402
from models import build_random_clip  # noqa: E402

from moderation.clip_scorer import ClipScorer  # noqa: E402
from moderation.images import load_bytes  # noqa: E402
from moderation.settings import ImageSettings  # noqa: E402

KINDS = (("JPEG 1024x768", "JPEG", (1024, 768)), ("JPEG 512x512", "JPEG", (512, 512)),
         ("PNG 1024x768", "PNG", (1024, 768)))


def encoded(kind: str, size: tuple[int, int], count: int) -> list[bytes]:
    out = []
    for seed in range(count):
        buffer = io.BytesIO()
        photo_like(size[0], size[1], seed).save(buffer, kind, **({"quality": 90} if kind == "JPEG" else {}))
        out.append(buffer.getvalue())
    return out


def loader_ms(datas: list[bytes], limits: ImageSettings, scorer: ClipScorer) -> float:
    """CPU milliseconds per picture of the loader step (process time: what the cores spend)."""
    started = time.process_time()
    for data in datas:
        load_bytes(data, limits, scorer.preprocess_spec)
    return (time.process_time() - started) * 1000.0 / len(datas)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="pictures per kind (default 48)")
    parser.add_argument("--reps", type=int, default=5, help="round-robin repetitions; medians reported")
    parser.add_argument("--out", type=Path, default=RESULTS / "pdq.json")
    args = parser.parse_args()
    prompts, _ = policy_prompts()
    scorer = ClipScorer.load(str(build_random_clip(CACHE / "clip-vit-b32-random", prompts)), device="cpu")
    with_pdq, without = ImageSettings(pdq=True), ImageSettings(pdq=False)
    pictures = {name: encoded(kind, size, args.images) for name, kind, size in KINDS}
    batch = torch.randn(32, 3, 224, 224)
    scorer.pixel_embeddings(batch)  # warm-up
    samples: dict[str, dict[str, list[float]]] = {name: {"on": [], "off": []} for name in pictures}
    forward: list[float] = []
    for rep in range(args.reps):
        for name, datas in pictures.items():
            samples[name]["on"].append(loader_ms(datas, with_pdq, scorer))
            samples[name]["off"].append(loader_ms(datas, without, scorer))
        started = time.process_time()
        scorer.pixel_embeddings(batch)
        forward.append((time.process_time() - started) * 1000.0 / 32)
        say(f"rep {rep + 1}/{args.reps} done")
    forward_ms = statistics.median(forward)
    rows: dict[str, Any] = {}
    for name, by in samples.items():
        on, off = statistics.median(by["on"]), statistics.median(by["off"])
        rows[name] = {"loader_ms_with_pdq": round(on, 3), "loader_ms_without": round(off, 3),
                      "pdq_ms": round(on - off, 3), "share_of_picture_cpu": round((on - off) / (off + forward_ms), 4)}
    print(f"\nPDQ hashing per picture, CPU ms (process time, medians of {args.reps}); forward pass "
          f"{forward_ms:.1f} ms per image (ViT-B/32 random-init, batch 32, fp32)")
    print(f"{'pictures':<16}{'loader, no PDQ':>16}{'loader + PDQ':>14}{'PDQ':>8}{'share of picture CPU':>22}")
    for name, row in rows.items():
        print(f"{name:<16}{row['loader_ms_without']:>16.2f}{row['loader_ms_with_pdq']:>14.2f}{row['pdq_ms']:>8.2f}"
              f"{100 * row['share_of_picture_cpu']:>21.2f}%")
    results = {"machine": machine_info(), "images": args.images, "reps": args.reps,
               "forward_ms_per_image": round(forward_ms, 2), "kinds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
