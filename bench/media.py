"""Reviewer copies: the whole pipeline (measure (d)) with media on and off, on a stream where 30% goes to review.

    .venv/bin/python bench/media.py [--model PATH] [--images 96] [--size 1024x768] [--batch 32] [--reps 3]
                                    [--review-share 0.3] [--out bench/results/media-<time>.json]

The random-init model flags nothing, so the review share comes from audit sampling: policies/default.yaml's
categories with `audit_rate` set to `--review-share`, which draws that share of events (by event id) for
review whatever their scores. Each rep is bench/pipeline.py's `throughput_rep` (embedded broker ->
`run_worker` -> SQLite -> review topic, steady-state img/s between two batch completions), with media on
(a fresh media directory every rep, so no copy is found already there) and off, taken round-robin;
every image of a rep is distinct, so every copy is a real decode, downscale and write. Prints a table with
the on/off ratio and writes every rep to JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    CACHE,
    POLICY,
    RESULTS,
    bench_settings,
    ensure_images,
    machine_info,
    parse_size,
    policy_prompts,
    say,
)
from measures import KeepOpen  # noqa: E402
from models import RANDOM_NOTE, build_random_clip  # noqa: E402
from pipeline import throughput_rep  # noqa: E402


def audit_policy(directory: Path, share: float) -> Path:
    """policies/default.yaml with `audit_rate: share` (and its own version): that share of events goes to review."""
    data = yaml.safe_load(POLICY.read_text(encoding="utf-8"))
    data["audit_rate"] = share
    data["version"] = f"{data['version']}-audit{round(share * 100)}"
    data.pop("examples", None)
    path = directory / "audit.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="CLIP checkpoint dir (default: a random-init ViT-B/32)")
    parser.add_argument("--images", type=int, default=96, help="events in the timed window of each rep")
    parser.add_argument("--size", type=parse_size, default=(1024, 768), help="image size WxH")
    parser.add_argument("--batch", type=int, default=32, help="worker batch size")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each mode, round-robin (medians)")
    parser.add_argument("--review-share", type=float, default=0.3, help="share of events sent to review")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/media-<time>.json)")
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / f"media-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from consumers.logs import configure_logging

    configure_logging("WARNING")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from consumers.broker import EmbeddedBroker
    from consumers.service import build_moderator

    prompts, _ = policy_prompts()
    model_dir = args.model or build_random_clip(CACHE / "clip-vit-b32-random", prompts)
    if not args.model:
        say(f"model: {RANDOM_NOTE} ({model_dir})")
    events = args.images + 2 * args.batch
    paths = ensure_images(events, args.size)  # one distinct image per event: every copy is made afresh
    CACHE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="media-", dir=CACHE))
    policy = audit_policy(workdir, args.review_share)
    runs: dict[str, list[dict[str, Any]]] = {"media off": [], "media on": []}
    started = time.monotonic()
    try:
        with EmbeddedBroker() as broker:
            settings = bench_settings(
                bootstrap=broker.bootstrap_servers, data_dir=workdir, model=str(model_dir), batch=args.batch,
                policy=policy,
            )
            moderator = KeepOpen(build_moderator(settings))
            for rep in range(args.reps):
                for label, enabled in (("media off", False), ("media on", True)):
                    media = {"enabled": enabled, "directory": str(workdir / "media" / uuid.uuid4().hex)}
                    detail = throughput_rep(
                        bootstrap=broker.bootstrap_servers, moderator=moderator, model=str(model_dir), paths=paths,
                        batch=args.batch, workdir=workdir, window=args.images, broker_pid=broker.pid,
                        policy=policy, media=media,
                    )
                    copies = Path(media["directory"])
                    detail["copies_written"] = sum(1 for _ in copies.rglob("*.jpg")) if copies.is_dir() else 0
                    runs[label].append(detail)
                    say(
                        f"rep {rep + 1}/{args.reps} {label}: {detail['img_per_s']:.2f} img/s, "
                        f"{detail['review_messages']} review messages, {detail['copies_written']} copies"
                    )
            moderator._inner.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {label: statistics.median(r["img_per_s"] for r in rows) for label, rows in runs.items()}
    ratio = round(medians["media on"] / medians["media off"], 3)
    # CPU per image (worker + broker) is steadier than img/s on a shared machine: both are reported.
    core_ms = {
        label: statistics.median(r["core_ms_per_img"] for r in rows if r["core_ms_per_img"])
        for label, rows in runs.items()
    }
    results = {
        "machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
        "events_per_rep": events, "medians_img_per_s": medians, "ratio_on_over_off": ratio,
        "medians_core_ms_per_img": core_ms, "reps": runs,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(f"\n(d) whole pipeline, {events} events a rep ({args.images} timed), {args.size[0]}x{args.size[1]} JPEGs, "
          f"batch {args.batch}, {args.review_share:.0%} to review, median of {args.reps}")
    print(f"{'':<10}{'img/s':>8}{'core-ms/img':>13}{'review msgs':>13}{'copies':>8}   reps (img/s)")
    for label, rows in runs.items():
        reps = ", ".join(f"{r['img_per_s']:.2f}" for r in rows)
        last = rows[-1]
        print(
            f"{label:<10}{medians[label]:>8.2f}{core_ms[label]:>13.1f}{last['review_messages']:>13}"
            f"{last['copies_written']:>8}   {reps}"
        )
    cpu_ratio = core_ms["media on"] / core_ms["media off"]
    print(f"media on / media off: {ratio} (img/s), {cpu_ratio:.3f} (core-ms per image)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
