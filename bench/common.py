"""Shared pieces of the benchmarks: paths, progress lines, statistics, machine facts, test images, settings.

Progress goes to stderr (a full run takes minutes); results go to stdout and to JSON, so
`bench/run.py > table.md` captures only the table.
"""

from __future__ import annotations

import os
import platform
import resource
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"
POLICY = REPO / "policies" / "default.yaml"
IMAGES_VERSION = 1  # bump when the generator changes: it names the cache folder

_STARTED = time.monotonic()


def say(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since start (the run takes minutes)."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Median (the figure reported: robust on a noisy machine), plus min, max and every raw rep."""
    if not values:
        return {"median": None, "min": None, "max": None, "reps": []}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "reps": [round(v, 3) for v in values],
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def current_rss_mb(pid: int | None = None) -> float:
    """Resident set size now, from /proc (ru_maxrss only ever grows, so it cannot show a leak's shape)."""
    status = Path(f"/proc/{pid or os.getpid()}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def cpu_seconds(pids: Sequence[int | None] = ()) -> float:
    """CPU time (user + system) used so far by this process, all threads, plus the given other processes.

    On a shared 2-core machine wall-clock rates swing with the neighbours' load; CPU time per image
    barely does, so it says what a measure costs when the machine is not the limit.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        if not pid:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    import torch
    import transformers

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
    }


def policy_prompts(path: Path = POLICY) -> tuple[list[str], list[str]]:
    """All prompts of the policy in order, and the first prompt of each category (for the HF pipeline)."""
    from moderation.policy import load_policy

    policy = load_policy(path).policy
    prompts = [prompt for category in policy.categories.values() for prompt in category.prompts]
    firsts = [category.prompts[0] for category in policy.categories.values()]
    return prompts, firsts


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A picture with a JPEG decode cost like a photo's: smooth colour fields, shapes, edges and grain.

    Solid colours compress to almost nothing and decode far faster than photos; this has low-frequency
    gradients (upsampled noise), a dozen soft-edged shapes, and sensor-like noise, so file sizes land
    near those of real 1024x768 photos at quality 90 (a few hundred KB).
    """
    rng = np.random.default_rng(seed)
    field = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(field, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x1 + 1, y1 + 1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(5)]
            draw.polygon(points, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=1.5))
    pixels = np.asarray(image, dtype=np.int16)
    texture = rng.normal(0, 10, (height, width, 1)) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels + texture, 0, 255).astype(np.uint8), "RGB")


def ensure_images(count: int, size: tuple[int, int]) -> list[Path]:
    """`count` photo-like JPEGs of `size` (width, height), generated once into bench/.cache/images-WxH/."""
    width, height = size
    folder = CACHE / f"images-v{IMAGES_VERSION}-{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img-{i:05d}.jpg" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        say(f"generating {len(missing)} photo-like {width}x{height} JPEGs in {folder}")
        for i, path in missing:
            partial = path.with_suffix(".part")
            photo_like(width, height, seed=i).save(partial, "JPEG", quality=90)
            partial.rename(path)
    for path in paths:  # into the page cache, so the first rep does not pay for the disk
        path.read_bytes()
    return paths


def mean_file_kb(paths: Sequence[Path]) -> float:
    return round(sum(p.stat().st_size for p in paths) / len(paths) / 1024, 1)


def parse_size(text: str) -> tuple[int, int]:
    """"1024x768" -> (1024, 768)."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) < 16 or int(height) < 16:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 1024x768)")
    return int(width), int(height)


def bench_settings(
    *, bootstrap: str, data_dir: Path, model: str, batch: int, policy: Path = POLICY, session_timeout_ms: int = 6000,
    reuse: bool = False, media: dict[str, Any] | None = None, **model_extra: Any,
) -> Any:
    """Settings for one pipeline run: its own topics, group and SQLite file (the broker's groups are fragile).

    Duplicate reuse is off unless asked for: the throughput runs cycle over a fixed set of images, and
    with reuse on they would measure the cache instead of the model (bench/reuse.py measures reuse).
    """
    from consumers.settings import Settings

    tag = secrets.token_hex(4)
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(
        data_dir=data_dir,
        kafka={
            "bootstrap_servers": bootstrap,
            "input_topic": f"bench-images-{tag}",
            "review_topic": f"bench-review-{tag}",
            "dead_letter_topic": f"bench-dlq-{tag}",
            "consumer_group": f"bench-{tag}",
            "client_id": f"bench-{tag}",
            "session_timeout_ms": session_timeout_ms,
        },
        database={"url": f"sqlite:///{data_dir / f'verdicts-{tag}.db'}"},
        model={"name_or_path": model, "device": "cpu", **model_extra},
        policy={"path": policy},
        batching={"max_size": batch},
        embeddings={"reuse": reuse},
        ops={"host": "127.0.0.1", "port": 0},  # a free port: never clash with a worker on this host
        media=media or {},
        # The events are file:// URLs of the images generated under bench/.cache: a worker reads those only
        # under images.file_root, which is unset (every file:// refused) by default.
        images={"file_root": str(CACHE.resolve())},
    )


def supports_cpu_mode() -> bool:
    """Whether `ClipScorer.load` takes `cpu_mode` (int8 dynamic quantisation), checked, not assumed."""
    import inspect

    from moderation.clip_scorer import ClipScorer

    return "cpu_mode" in inspect.signature(ClipScorer.load).parameters


def quantised_linears(model: Any) -> int:
    """How many dynamically quantised linear layers a model holds (0: it is not int8 at all)."""
    return sum(1 for module in model.modules() if "quantized" in type(module).__module__.lower())
