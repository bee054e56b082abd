"""GPU benchmark: model-only throughput vs JPEG bytes -> scores, ViT-B/32 and ViT-L/14, fp16, one script.

    bash bench/gpu/run.sh                 # on the GPU machine (installs what is missing, then runs this)
    python bench/gpu/gpu_bench.py --dry-run   # here, on a CPU, tiny sizes: catches bugs before GPU time

For each architecture (random-init weights of the real configs: throughput only):
  1. model only: `get_image_features` and `ClipScorer.score_pixels` on a random fp16 batch already on the
     GPU, batch 64..1024: the ceiling;
  2. JPEG bytes -> scores, through our public API, two ways:
     - CPU decode pool: `moderation.decoding.load_data(data, limits, spec)` in 2 x cores threads (JPEG draft
       decode + one resize + normalise, as the worker's loader threads do), then `score_pixels`;
     - GPU decode: `decoding.load_data(..., decoder)` (header check + sha256 on the CPU), then
       `ClipScorer.decoder.decode_jpegs` (nvjpeg via torchvision, resize/crop/normalise on the GPU) and `score_pixels`;
     plus each path's decode-only rate, which shows what bounds it.
A hard time budget (default 420 s) is checked before every config; what does not fit is skipped and
listed. Prints a table and writes gpu_bench.json (and .md) to $OUT if set, else bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from common import machine_info, parse_size  # noqa: E402
from gpu_common import (  # noqa: E402
    Budget,
    CpuLoader,
    build_scorer,
    cpu_stand_in_decoder,
    gpu_info,
    jpeg_corpus,
    load_policy_file,
    synchronize,
    timed,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script, not the GPU")
    parser.add_argument("--archs", default="B/32,L/14", help="comma-separated: B/32, L/14")
    parser.add_argument("--batches", default="64,128,256,512,1024", help="model-only batch sizes")
    parser.add_argument("--e2e-batches", default="256,1024", help="batch sizes for JPEG bytes -> scores")
    parser.add_argument("--images", type=int, default=4096, help="JPEGs per end-to-end measure")
    parser.add_argument("--size", default="1024x768", help="JPEG size WxH")
    parser.add_argument("--budget-s", type=float, default=420.0, help="hard wall-clock budget for all measures")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $OUT, else bench/results")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.batches, args.e2e_batches, args.images, args.size = "2", "2", 4, "256x192"
    args.arch_list = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.batch_list = [int(b) for b in args.batches.split(",")]
    args.e2e_list = [int(b) for b in args.e2e_batches.split(",")]
    if args.out_dir is None:
        args.out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent.parent / "results"
    return args


def model_only(
    scorer: Any, policy: Any, batches: list[int], budget: Budget, min_s: float, min_iters: int
) -> list[dict[str, Any]]:
    """Forward and score_pixels img/s on a random batch already on the device, per batch size."""
    rows: list[dict[str, Any]] = []
    rate = None
    for batch in batches:
        estimate = 4 * (1 + min_s) if rate is None else 2 * (3 * batch / rate + min_s) + 1
        if not budget.allows(f"{scorer.model_id} model-only batch {batch}", estimate):
            break
        try:
            x = torch.randn(batch, 3, 224, 224, device=scorer.device, dtype=scorer.dtype)
            with torch.inference_mode():
                features = scorer.model.get_image_features
                iters, seconds = timed(lambda x=x, f=features: f(pixel_values=x), scorer.device, min_s, min_iters)
            rate = iters * batch / seconds
            iters2, seconds2 = timed(lambda x=x: scorer.score_pixels(x, policy), scorer.device, min_s, min_iters)
            rows.append({"batch": batch, "forward_img_s": round(rate, 1),
                         "score_pixels_img_s": round(iters2 * batch / seconds2, 1)})
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"batch": batch, "error": f"out of memory: {exc}"[:300]})
            break
        finally:
            if scorer.device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"  {scorer.model_id} batch {batch}: forward {rows[-1]['forward_img_s']:,.0f} img/s, "
              f"score_pixels {rows[-1]['score_pixels_img_s']:,.0f} img/s", file=sys.stderr, flush=True)
    return rows


def _windowed(pool: ThreadPoolExecutor, fn: Any, datas: list[bytes], batch: int, ahead: int) -> Any:
    """Yield results batch by batch while the pool works at most `ahead` batches in front (as the worker)."""
    futures: list[Future[Any]] = []
    submitted = 0
    for start in range(0, len(datas), batch):
        while submitted < min(len(datas), start + batch * (ahead + 1)):
            futures.append(pool.submit(fn, datas[submitted]))
            submitted += 1
        yield [f.result() for f in futures[start : start + batch]]


def cpu_path(scorer: Any, loader: CpuLoader, datas: list[bytes], batch: int, policy: Any,
             pool: ThreadPoolExecutor, decode: Any = None) -> dict[str, float]:
    """JPEG bytes -> CPU decode pool -> score_pixels; and the pool's decode-only rate."""
    started = time.perf_counter()
    list(pool.map(loader.pixels, datas))
    decode_only = len(datas) / (time.perf_counter() - started)
    synchronize(scorer.device)
    started = time.perf_counter()
    for pixels in _windowed(pool, loader.pixels, datas, batch, ahead=3):
        scorer.score_pixels(pixels, policy)
    synchronize(scorer.device)
    return {"img_s": round(len(datas) / (time.perf_counter() - started), 1), "decode_only_img_s": round(decode_only, 1)}


def gpu_path(scorer: Any, loader: CpuLoader, datas: list[bytes], batch: int, policy: Any,
             pool: ThreadPoolExecutor, decode: Any = None) -> dict[str, float]:
    """JPEG bytes -> header check on the CPU -> nvjpeg decode + preprocess on the GPU -> score_pixels."""
    decode = decode or scorer.decoder.decode_jpegs
    deferred = list(pool.map(loader.deferred, datas[:batch]))
    started = time.perf_counter()
    for start in range(0, len(datas), batch):
        chunk = deferred[: min(batch, len(datas) - start)]
        decode([d for d, _ in chunk], [o for _, o in chunk])
    synchronize(scorer.device)
    decode_only = len(datas) / (time.perf_counter() - started)
    started = time.perf_counter()
    for items in _windowed(pool, loader.deferred, datas, batch, ahead=3):
        pixels = decode([d for d, _ in items], [o for _, o in items])
        if any(p is None for p in pixels):
            raise RuntimeError("the GPU decoder refused some of the benchmark's plain RGB JPEGs")
        scorer.score_pixels(pixels, policy)
    synchronize(scorer.device)
    return {"img_s": round(len(datas) / (time.perf_counter() - started), 1), "decode_only_img_s": round(decode_only, 1)}


def end_to_end(scorer: Any, datas: list[bytes], batches: list[int], policy: Any, budget: Budget,
               threads: int, forward: dict[int, float], dry_run: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        loader = CpuLoader(scorer)
    except RuntimeError as exc:
        return [{"error": str(exc)}]
    gpu_ok = scorer.device.type == "cuda" and scorer.decoder is not None
    # A dry run has no GPU: the GPU path's code still runs, with PIL decode + the GPU math on the CPU.
    stand_in = cpu_stand_in_decoder(scorer) if dry_run and not gpu_ok else None
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loader") as pool:
        for batch in batches:
            for name, fn in (("cpu-decode-pool", cpu_path), ("gpu-decode", gpu_path)):
                row: dict[str, Any] = {"path": name, "batch": batch, "images": len(datas)}
                if name == "gpu-decode" and not gpu_ok and stand_in is None:
                    row["error"] = "unavailable: needs CUDA and torchvision's GPU decode_jpeg (scorer.gpu_decode)"
                    rows.append(row)
                    continue
                last = next((r for r in reversed(rows) if r.get("img_s")), None)
                estimate = 2.5 * len(datas) / last["img_s"] + 5 if last else 60
                if not budget.allows(f"{scorer.model_id} {name} batch {batch}", estimate):
                    continue
                extra = {"decode": stand_in} if name == "gpu-decode" and stand_in else {}
                if extra:
                    row["path"] += " (CPU stand-in, dry run)"
                try:
                    fn(scorer, loader, datas[:batch], batch, policy, pool, **extra)  # warm-up: nvjpeg, allocator
                    row |= fn(scorer, loader, datas, batch, policy, pool, **extra)
                except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                if row.get("img_s") and forward.get(batch):
                    row["vs_forward"] = round(row["img_s"] / forward[batch], 3)
                rows.append(row)
                print(f"  {scorer.model_id} {name} batch {batch}: {row.get('img_s', row.get('error'))}",
                      file=sys.stderr, flush=True)
    return rows


def render(results: dict[str, Any]) -> str:
    lines = [f"GPU: {results['gpu'].get('device')}; images {results['images']} JPEGs of {results['size']}; "
             f"budget {results['budget_s']} s, used {results['elapsed_s']} s", "",
             "| arch | batch | forward img/s | score_pixels img/s |", "|---|---:|---:|---:|"]
    for arch, data in results["archs"].items():
        for row in data.get("model_only", []):
            lines.append(f"| {arch} | {row['batch']} | {row.get('forward_img_s', row.get('error'))} | "
                         f"{row.get('score_pixels_img_s', '-')} |")
    lines += ["", "| arch | JPEG bytes -> scores | batch | img/s | decode-only img/s | vs forward |",
              "|---|---|---:|---:|---:|---:|"]
    for arch, data in results["archs"].items():
        for row in data.get("end_to_end", []):
            lines.append(f"| {arch} | {row.get('path', '-')} | {row.get('batch', '-')} | "
                         f"{row.get('img_s', row.get('error', '-'))} | {row.get('decode_only_img_s', '-')} | "
                         f"{row.get('vs_forward', '-')} |")
    if results["skipped"]:
        lines += ["", "Skipped for the time budget: " + "; ".join(results["skipped"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU, or on the GPU machine (bench/gpu/run.sh)", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device("cpu" if args.dry_run else "cuda")
    budget = Budget(args.budget_s)
    threads = 2 * (os.cpu_count() or 2)
    min_s = 0.0 if args.dry_run else 1.0
    policy = load_policy_file()
    print(f"generating {args.images} JPEGs of {args.size}", file=sys.stderr, flush=True)
    datas = jpeg_corpus(args.images, 8 if args.dry_run else 256, parse_size(args.size), threads)
    results: dict[str, Any] = {
        "machine": machine_info(), "gpu": gpu_info(device), "dry_run": args.dry_run, "images": len(datas),
        "size": args.size, "mean_jpeg_kb": round(sum(map(len, datas)) / len(datas) / 1024, 1),
        "loader_threads": threads, "moderation_from": sys.modules["moderation"].__file__,
        "budget_s": args.budget_s, "archs": {}, "skipped": budget.skipped,
    }
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as workdir:
        for arch in args.arch_list:
            if not budget.allows(f"{arch} (model build)", 20):
                continue
            print(f"== {arch}", file=sys.stderr, flush=True)
            scorer, info = build_scorer(arch, device, Path(workdir), gpu_decode=not args.dry_run)
            scorer.policy_embeddings(policy)
            entry: dict[str, Any] = {"model": info, "model_only": model_only(scorer, policy, args.batch_list, budget,
                                                                              min_s, 1 if args.dry_run else 3)}
            forward = {r["batch"]: r["forward_img_s"] for r in entry["model_only"] if "forward_img_s" in r}
            entry["end_to_end"] = end_to_end(scorer, datas, args.e2e_list, policy, budget, threads, forward,
                                             args.dry_run)
            results["archs"][arch] = entry
            del scorer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results["elapsed_s"] = round(time.monotonic() - budget.started, 1)
    table = render(results)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = "gpu_bench_dry_run" if args.dry_run else "gpu_bench"
    (args.out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    (args.out_dir / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    print(f"wrote {args.out_dir / name}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
