"""One benchmark command: baselines, our scorer, the whole Kafka -> SQL pipeline and the bare model, one run.

    .venv/bin/python bench/run.py [--model PATH] [--images N] [--size 1024x768] [--batch 32] [--reps 3]
                                  [--quick] [--out bench/results/NAME.json]

Same model, same images and the same process for every measure, medians of several repetitions taken
round-robin, so the ratios between measures are what this noisy 2-core machine can say with some
confidence (absolute figures drift between runs). Progress goes to stderr; the table to stdout; every
raw repetition, the medians and the machine's facts to the JSON file. BENCHMARKS.md explains each measure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    CACHE,
    RESULTS,
    bench_settings,
    cpu_seconds,
    current_rss_mb,
    ensure_images,
    machine_info,
    mean_file_kb,
    parse_size,
    peak_rss_mb,
    policy_prompts,
    quantised_linears,
    say,
    summarise,
    supports_cpu_mode,
)
from measures import (
    KeepOpen,
    ReadmeLoop,
    ZeroShotPipeline,
    file_events,
    forward_rep,
    forwards_per_rep,
    loading_rep,
    moderate_rep,
    pixel_batch,
)
from models import RANDOM_NOTE, build_random_clip, model_info
from report import ROWS, render_table


@dataclass
class Context:
    args: argparse.Namespace
    model_dir: Path
    bootstrap: str
    moderator: Any
    moderator_int8: Any | None
    readme: ReadmeLoop
    zero_shot: ZeroShotPipeline
    workdir: Path
    broker_pid: int | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " See BENCHMARKS.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="CLIP checkpoint dir (default: a random-init ViT-B/32 built once)")
    parser.add_argument("--images", type=int, default=128, help="images per size (events per pipeline rep)")
    parser.add_argument("--size", default="1024x768", help="image size WxH; 512x512 is also run unless --quick")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the scorer, the worker and (e)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every measure (medians reported)")
    parser.add_argument("--latency-s", type=float, default=25.0, help="length of the (f) fixed-rate phase")
    parser.add_argument("--intake-events", type=int, default=20_000, help="events for (g)")
    parser.add_argument("--quick", action="store_true", help="32 images, one size, 2 reps, short (f): a smoke check")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/<run|quick>-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.reps, args.latency_s = min(args.images, 32), min(args.reps, 2), min(args.latency_s, 8.0)
    args.sizes = [parse_size(args.size)] + ([] if args.quick or args.size == "512x512" else [(512, 512)])
    if args.out is None:
        args.out = RESULTS / f"{'quick' if args.quick else 'run'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    if args.images < 1 or args.batch < 1 or args.reps < 1:
        parser.error("--images, --batch and --reps must be positive")
    return args


def _int8_moderator(model: str, bootstrap: str, workdir: Path, batch: int) -> tuple[Any | None, dict[str, Any]]:
    """The int8 moderator if `cpu_mode="int8"` exists and really quantises; else None and why not."""
    if not supports_cpu_mode():
        return None, {"supported": False, "why": "ClipScorer.load has no cpu_mode parameter in this checkout"}
    from consumers.service import build_moderator
    from moderation.clip_scorer import ClipScorer

    settings = bench_settings(bootstrap=bootstrap, data_dir=workdir, model=model, batch=batch, cpu_mode="int8")
    moderator = build_moderator(settings)
    how = "build_moderator with model.cpu_mode=int8"
    if quantised_linears(moderator.scorer.model) == 0:
        moderator.scorer = ClipScorer.load(model, "cpu", cpu_mode="int8")
        how = "build_moderator ignored cpu_mode; scorer replaced by ClipScorer.load(..., cpu_mode='int8')"
    layers = quantised_linears(moderator.scorer.model)
    if layers == 0:
        moderator.close()
        return None, {"supported": False, "why": "cpu_mode='int8' accepted but the model has no quantised layers"}
    return moderator, {"supported": True, "how": how, "quantised_modules": layers}


def _guarded(results: dict[str, Any], key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one rep of one measure; a failure is recorded (with its message) instead of ending the run.

    For img/s measures it also records the CPU cores the process kept busy meanwhile and so the
    core-milliseconds per image: the load-independent cost of that measure on this machine.
    """
    cpu, wall = cpu_seconds(), time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a broken measure must not hide the others
        say(f"  {key} FAILED: {type(exc).__name__}: {exc}")
        results.setdefault("failures", {}).setdefault(key, []).append(f"{type(exc).__name__}: {exc}")
        return None
    if isinstance(value, float) and value > 0:
        cores = (cpu_seconds() - cpu) / (time.perf_counter() - wall)
        results.setdefault("cpu", {}).setdefault(key, []).append(
            {"cores_busy": round(cores, 2), "core_ms_per_img": round(cores * 1000 / value, 1)}
        )
    return value


def measure_size(ctx: Context, size: tuple[int, int]) -> dict[str, Any]:
    """Every per-size measure, `reps` times round-robin, on one set of images."""
    args = ctx.args
    label = f"{size[0]}x{size[1]}"
    paths = ensure_images(args.images, size)
    readme_paths = paths[: min(len(paths), 8 if args.quick else 32)]
    pipeline_paths = paths[: min(len(paths), 32 if args.quick else 64)]
    events = file_events(paths)
    pixels = pixel_batch(ctx.model_dir, paths, args.batch)
    forwards = forwards_per_rep(len(paths), args.batch)
    out: dict[str, Any] = {
        "size": label, "images": len(paths), "mean_jpeg_kb": mean_file_kb(paths),
        "loadavg_before": os.getloadavg(), "readme_images": len(readme_paths),
        "pipeline_images": len(pipeline_paths), "forward_batches_per_rep": forwards,
    }
    say(f"== {label}: {len(paths)} images ({out['mean_jpeg_kb']} KB mean); warming up")
    ctx.readme.one(paths[0])
    ctx.zero_shot.run(paths[:4])
    ctx.moderator.moderate(events[: args.batch])
    forward_rep(ctx.moderator.scorer.model, pixels, 1)
    if ctx.moderator_int8 is not None:
        ctx.moderator_int8.moderate(events[: args.batch])
        forward_rep(ctx.moderator_int8.scorer.model, pixels, 1)

    reps: dict[str, list[float]] = {key: [] for key, *_ in ROWS if not key.startswith("ratio")}
    pipeline_details: list[dict[str, Any]] = []
    loads: list[float] = []
    for rep in range(args.reps):
        loads.append(round(os.getloadavg()[0], 2))
        steps: list[tuple[str, Any, tuple[Any, ...]]] = [
            ("a", ctx.readme.rep, (readme_paths,)),
            ("b", ctx.zero_shot.rep, (pipeline_paths,)),
            ("c", moderate_rep, (ctx.moderator, events, args.batch)),
            ("e", forward_rep, (ctx.moderator.scorer.model, pixels, forwards)),
            ("l", loading_rep, (ctx.moderator, events)),
        ]
        if ctx.moderator_int8 is not None:
            steps.append(("c8", moderate_rep, (ctx.moderator_int8, events, args.batch)))
            steps.append(("e8", forward_rep, (ctx.moderator_int8.scorer.model, pixels, forwards)))
        for key, fn, fn_args in steps:
            value = _guarded(out, key, fn, *fn_args)
            if value is not None:
                reps[key].append(value)
                say(f"  rep {rep + 1}/{args.reps} ({key}) {value:6.2f} img/s")
        detail = _guarded(out, "d", _pipeline_rep, ctx, paths)
        if detail is not None:
            pipeline_details.append(detail)
            if detail.get("core_ms_per_img"):
                out.setdefault("cpu", {}).setdefault("d", []).append(
                    {"cores_busy": detail["cores_busy"], "core_ms_per_img": detail["core_ms_per_img"]}
                )
            if math.isnan(detail["img_per_s"]) or detail["error_rows"]:
                why = f"{detail['error_rows']} error verdicts" if detail["error_rows"] else "no rows after the first"
                out.setdefault("failures", {}).setdefault("d", []).append(why)
            else:
                reps["d"].append(detail["img_per_s"])
            say(
                f"  rep {rep + 1}/{args.reps} (d) {detail['img_per_s']:6.2f} img/s "
                f"({detail['window_rows']} rows in {detail['window_s']} s; join+first batch "
                f"{detail['join_and_first_batch_s']} s; "
                f"flagged {detail['flagged_rows']}, review msgs {detail['review_messages']})"
            )
    out["loadavg_after"] = os.getloadavg()
    out["loadavg_1min_per_rep"] = loads
    out["measures"] = {key: summarise(values) for key, values in reps.items()}
    out["core_ms_per_img"] = {
        key: summarise([r["core_ms_per_img"] for r in rows]) for key, rows in out.get("cpu", {}).items()
    }
    out["pipeline_reps"] = pipeline_details
    out["ratios"] = _ratios(out["measures"])
    out["ratios"]["d/e_by_cpu"] = _cpu_ratio(out)
    out["peak_rss_mb_so_far"] = peak_rss_mb()
    return out


def _pipeline_rep(ctx: Context, paths: list[Path]) -> dict[str, Any]:
    from pipeline import throughput_rep

    return throughput_rep(
        bootstrap=ctx.bootstrap, moderator=KeepOpen(ctx.moderator), model=str(ctx.model_dir),
        paths=paths, batch=ctx.args.batch, workdir=ctx.workdir, window=max(len(paths), 3 * ctx.args.batch),
        broker_pid=ctx.broker_pid,
    )


def _ratios(measures: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def ratio(top: str, bottom: str) -> float | None:
        a, b = measures.get(top, {}).get("median"), measures.get(bottom, {}).get("median")
        return round(a / b, 3) if a and b else None

    return {
        "d/e": ratio("d", "e"), "d/a": ratio("d", "a"), "d/b": ratio("d", "b"),
        "c/e": ratio("c", "e"), "e8/e": ratio("e8", "e"), "c8/c": ratio("c8", "c"),
    }


def _cpu_ratio(out: dict[str, Any]) -> float | None:
    """(e)'s core-ms per image over (d)'s: what (d)/(e) would be if both had the same cores to themselves."""
    d = out.get("core_ms_per_img", {}).get("d", {}).get("median")
    e = out.get("core_ms_per_img", {}).get("e", {}).get("median")
    return round(e / d, 3) if d and e else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from consumers.logs import configure_logging

    configure_logging("WARNING")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would garble the progress lines
    from consumers.broker import EmbeddedBroker
    from consumers.service import build_moderator

    results: dict[str, Any] = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    say(f"machine: {results['machine']['cpu_count']} CPUs, torch {results['machine']['torch']} "
        f"with {results['machine']['torch_threads']} threads")
    prompts, labels = policy_prompts()
    model_dir = args.model or build_random_clip(CACHE / "clip-vit-b32-random", prompts)
    if not args.model:
        say(f"model: {RANDOM_NOTE} ({model_dir})")
    results["model"] = model_info(model_dir)
    CACHE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    started = time.monotonic()
    with EmbeddedBroker() as broker:
        try:
            settings = bench_settings(bootstrap=broker.bootstrap_servers, data_dir=workdir, model=str(model_dir),
                                      batch=args.batch)
            say("loading the moderator (build_moderator: model + policy text, once, outside every timing)")
            moderator = build_moderator(settings)
            results["rss_after_moderator_mb"] = current_rss_mb()
            moderator_int8, results["int8"] = _int8_moderator(str(model_dir), broker.bootstrap_servers, workdir,
                                                              args.batch)
            say(f"int8: {results['int8']}")
            readme = ReadmeLoop(model_dir, prompts)
            ctx = Context(args, model_dir, broker.bootstrap_servers, moderator, moderator_int8, readme,
                          ZeroShotPipeline(readme, labels, batch_size=32), workdir, broker.pid)
            results["sizes"] = {}
            for size in args.sizes:
                measured = measure_size(ctx, size)
                results["sizes"][measured["size"]] = measured
            results["latency"] = _latency(ctx, results)
            from intake import intake

            results["intake"] = _guarded(results, "g", intake, broker.bootstrap_servers, args.intake_events,
                                         args.reps)
            if results["intake"]:
                results["intake"]["summary"] = summarise(results["intake"]["consume_parse_per_s"])
            moderator.close()
            if moderator_int8 is not None:
                moderator_int8.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    results["peak_rss_mb"] = peak_rss_mb()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    table = render_table(results)
    results["table"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print(table)
    say(f"wrote {args.out} ({results['elapsed_s']} s)")
    return 1 if any("failures" in s for s in results["sizes"].values()) or "failures" in results else 0


def _latency(ctx: Context, results: dict[str, Any]) -> dict[str, Any] | None:
    from pipeline import latency_run

    first = next(iter(results["sizes"].values()))
    capacity = first["measures"]["d"]["median"]
    if not capacity:
        say("(f) skipped: no (d) figure to take half of")
        return None
    paths = ensure_images(ctx.args.images, ctx.args.sizes[0])
    return _guarded(
        results, "f", latency_run, bootstrap=ctx.bootstrap, moderator=KeepOpen(ctx.moderator),
        model=str(ctx.model_dir), paths=paths, batch=ctx.args.batch, workdir=ctx.workdir,
        rate=capacity / 2, seconds=ctx.args.latency_s,
    )


if __name__ == "__main__":
    sys.exit(main())
