"""Soak: the whole pipeline under a steady stream for minutes, watching memory for growth.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 25] [--model PATH] [--out bench/results/soak-X.json]

Embedded broker, a fresh SQLite database, `run_worker` in a thread of this process, and a producer sending
file:// events at a fixed rate. Every 30 s it prints this process's RSS (worker, producer and watcher
together), the broker's RSS and the verdict rows so far; at the end, start / end / peak RSS, a linear
fit of RSS over the second half (MB per minute: a leak shows as a steady positive slope) and the events
processed. Without --model it uses the small offline test CLIP (moderation.testmodel), so the stream
exercises Kafka, loading, decoding, batching and SQL rather than the forward pass. Bounded: it stops
producing after --minutes, drains (at most 120 s) and exits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CACHE,
    REPO,
    RESULTS,
    bench_settings,
    current_rss_mb,
    ensure_images,
    machine_info,
    parse_size,
    peak_rss_mb,
    say,
)

SAMPLE_EVERY_S = 30.0
DRAIN_TIMEOUT_S = 120.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak the whole pipeline (embedded broker, SQLite, worker) and watch its memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to produce events")
    parser.add_argument("--rate", type=float, default=25.0, help="events per second")
    parser.add_argument("--model", type=Path, help="CLIP checkpoint dir (default: the offline test model)")
    parser.add_argument("--size", default="640x480", help="size of the generated JPEGs")
    parser.add_argument("--images", type=int, default=64, help="distinct images, cycled over")
    parser.add_argument("--batch", type=int, default=32, help="worker batch size")
    parser.add_argument("--reuse", action="store_true", help="duplicate reuse on (repeats skip the model)")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/soak-<time>.json)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    args.out = args.out or RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return args


def _rows(database: Path) -> tuple[int, int]:
    """(verdict rows, error rows) read through a separate read-only connection."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1.0) as connection:
            total, errors = connection.execute(
                "SELECT count(*), coalesce(sum(status != 'ok'), 0) FROM verdicts"
            ).fetchone()
            return int(total), int(errors)
    except sqlite3.Error:
        return -1, -1


def _slope_mb_per_min(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of RSS over the second half of the samples (the first half includes warm-up)."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return None
    t = np.array([s["t_s"] for s in half]) / 60.0
    rss = np.array([s["rss_mb"] for s in half])
    return round(float(np.polyfit(t, rss, 1)[0]), 3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from consumers.logs import configure_logging

    configure_logging("WARNING")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from pipeline import CommitWatcher, WorkerThread

    from consumers.broker import EmbeddedBroker
    from consumers.clients import make_producer
    from consumers.producer import file_event
    from consumers.service import build_moderator
    from moderation.storage import upgrade

    if args.model:
        model, policy = str(args.model), REPO / "policies" / "default.yaml"
    else:
        from moderation.testmodel import build_test_model

        model, policy = str(build_test_model(progress=say)), REPO / "policies" / "test-model.yaml"
    paths = ensure_images(args.images, parse_size(args.size))
    CACHE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="soak-", dir=CACHE))
    result: dict[str, Any] = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    result["model"] = model if args.model else f"offline test model {model}"
    samples: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        # Reuse is off by default: the stream cycles over --images files, and with reuse on only the first
        # of each would reach the model. --reuse soaks the bounded embedding cache instead.
        settings = bench_settings(bootstrap=broker.bootstrap_servers, data_dir=workdir, model=model,
                                  batch=args.batch, policy=policy, reuse=args.reuse)
        upgrade(settings.database_url)
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        result["rss_before_model_mb"] = current_rss_mb()
        moderator = build_moderator(settings)
        worker = WorkerThread(settings, moderator).start()
        producer = make_producer(settings, linger_ms=5)
        topic = settings.kafka.input_topic
        produced = 0
        began = time.monotonic()
        next_sample = began
        end = began + args.minutes * 60
        say(f"soak: {args.rate:g} events/s for {args.minutes:g} min, {len(paths)} images of {args.size}")
        try:
            while time.monotonic() < end:
                if not worker.alive():
                    worker.finish()  # raises the worker's error
                due = int((time.monotonic() - began) * args.rate) + 1
                for i in range(produced, due):
                    event = file_event(paths[i % len(paths)], source="soak", content_id=f"soak-{i:08d}")
                    producer.send(topic, key=event["content_id"].encode(), value=json.dumps(event).encode())
                produced = max(produced, due)
                if time.monotonic() >= next_sample:
                    samples.append(_sample(began, database, broker.pid, produced))
                    next_sample += SAMPLE_EVERY_S
                time.sleep(0.02)
            producer.flush()
            say(f"produced {produced}; draining")
            commits = CommitWatcher(settings)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            try:
                while time.monotonic() < deadline and (_rows(database)[0] < produced or commits.total() < produced):
                    time.sleep(0.5)
            finally:
                commits.close()
            samples.append(_sample(began, database, broker.pid, produced))
        finally:
            producer.close(timeout=10)
            worker.finish()
            moderator.close()
    rows, errors = _rows(database)
    result.update(_summary(samples, produced, rows, errors, began))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    _print_summary(result)
    say(f"wrote {args.out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if rows >= produced and errors == 0 else 1


def _sample(began: float, database: Path, broker_pid: int | None, produced: int) -> dict[str, Any]:
    rows, errors = _rows(database)
    sample = {
        "t_s": round(time.monotonic() - began, 1), "rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb(),
        "broker_rss_mb": current_rss_mb(broker_pid) if broker_pid else None, "produced": produced,
        "verdicts": rows, "errors": errors, "threads": threading.active_count(),
    }
    say(
        f"t={sample['t_s']:6.0f}s rss {sample['rss_mb']:7.1f} MB (peak {sample['peak_rss_mb']:.1f}), "
        f"broker {sample['broker_rss_mb']} MB, produced {produced}, verdicts {rows}, threads {sample['threads']}"
    )
    return sample


def _summary(samples: list[dict[str, Any]], produced: int, rows: int, errors: int, began: float) -> dict[str, Any]:
    # The first sample is taken at t=0, before the worker has joined; "start" is the first after it.
    warm = [s for s in samples if s["verdicts"] > 0] or samples
    return {
        "samples": samples,
        "events_produced": produced,
        "events_processed": rows,
        "error_verdicts": errors,
        "elapsed_s": round(time.monotonic() - began, 1),
        "start_rss_mb": warm[0]["rss_mb"],
        "end_rss_mb": samples[-1]["rss_mb"],
        "peak_rss_mb": peak_rss_mb(),
        "broker_start_rss_mb": warm[0]["broker_rss_mb"],
        "broker_end_rss_mb": samples[-1]["broker_rss_mb"],
        "rss_slope_second_half_mb_per_min": _slope_mb_per_min(samples),
    }


def _print_summary(result: dict[str, Any]) -> None:
    print(f"events produced {result['events_produced']}, processed {result['events_processed']} "
          f"(error verdicts {result['error_verdicts']}) in {result['elapsed_s']} s")
    print(f"worker process RSS: start {result['start_rss_mb']} MB (after the first verdicts), "
          f"end {result['end_rss_mb']} MB, peak {result['peak_rss_mb']} MB; "
          f"slope over the second half {result['rss_slope_second_half_mb_per_min']} MB/min")
    print(f"broker RSS: start {result['broker_start_rss_mb']} MB, end {result['broker_end_rss_mb']} MB "
          "(in-memory storage: it keeps every message, so it grows with the stream by design)")


if __name__ == "__main__":
    sys.exit(main())
