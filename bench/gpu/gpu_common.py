"""Pieces of the GPU benchmark that are not measures: the time budget, timing, models, inputs, the CPU loaders.

Everything here also runs on a CPU (for `gpu_bench.py --dry-run`), so the GPU session, which is short
and costly, does not discover a typo.
"""

from __future__ import annotations

import inspect
import io
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent.parent
if str(BENCH) not in sys.path:  # bench/common.py and bench/models.py, from the checkout that travelled
    sys.path.insert(0, str(BENCH))

from common import POLICY, photo_like, policy_prompts  # noqa: E402
from models import clip_config, describe_model, write_preprocessor_config, write_tokenizer  # noqa: E402


@dataclass
class Budget:
    """A hard wall-clock budget: each config asks first, and is skipped (and listed) when time is short."""

    limit_s: float
    started: float = field(default_factory=time.monotonic)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.limit_s - (time.monotonic() - self.started)

    def allows(self, what: str, estimate_s: float) -> bool:
        if self.left() >= estimate_s:
            return True
        self.skipped.append(f"{what} (needs ~{estimate_s:.0f} s, {max(self.left(), 0):.0f} s left)")
        print(f"  skipped: {self.skipped[-1]}", file=sys.stderr, flush=True)
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, min_s: float = 1.0, min_iters: int = 3) -> tuple[int, float]:
    """Run `fn` until at least `min_s` and `min_iters` have passed (after one warm-up call); (iters, seconds)."""
    fn()
    synchronize(device)
    iters, started = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - started < min_s:
        fn()
        iters += 1
    synchronize(device)
    return iters, time.perf_counter() - started


def build_scorer(arch: str, device: torch.device, workdir: Path, gpu_decode: bool) -> tuple[Any, dict[str, Any]]:
    """A `ClipScorer` around a seeded random-init CLIP of the real `arch` config (built on the device: fast)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from moderation.clip_scorer import ClipScorer

    prompts, _ = policy_prompts()
    folder = Path(tempfile.mkdtemp(prefix=f"clip-{arch.replace('/', '')}-", dir=workdir))
    tokenizer_info = write_tokenizer(folder, prompts)
    write_preprocessor_config(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = CLIPModel(clip_config(arch, tokenizer_info["bos_id"], tokenizer_info["eos_id"]))
    info = {"arch": arch, **describe_model(model), "note": "random-init weights of the real config; throughput only"}
    options: dict[str, Any] = {}
    if "gpu_decode" in inspect.signature(ClipScorer.__init__).parameters:
        options["gpu_decode"] = gpu_decode
    scorer = ClipScorer(model, tokenizer, processor, f"random-{arch}", device, **options)
    info["dtype"] = str(scorer.dtype)
    info["scorer_gpu_decode"] = bool(getattr(scorer, "gpu_decode", False))
    return scorer, info


def jpeg_corpus(count: int, distinct: int, size: tuple[int, int], threads: int) -> list[bytes]:
    """`count` photo-like JPEGs (quality 90); `distinct` different ones, cycled: decode cost is per image anyway."""

    def one(seed: int) -> bytes:
        buffer = io.BytesIO()
        photo_like(size[0], size[1], seed).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        unique = list(pool.map(one, range(min(count, distinct))))
    return [unique[i % len(unique)] for i in range(count)]


class CpuLoader:
    """What a worker's loader threads do with fetched bytes: `moderation.decoding.load_data` with the model's
    `PreprocessSpec` (draft decode + one resize + normalise -> float32 [3, 224, 224]), or, given a decoder,
    the header check a GPU-decoding worker does instead (the bytes go to nvjpeg)."""

    def __init__(self, scorer: Any) -> None:
        from moderation.decoding import load_data
        from moderation.settings import ImageSettings

        self.limits = ImageSettings()
        self.spec = scorer.preprocess_spec
        self.load_data = load_data
        if self.spec is None:
            raise RuntimeError("this scorer has no preprocess_spec: the fast CPU preprocessing this benchmark "
                               "measures is missing")

    def pixels(self, data: bytes) -> Any:
        return self.load_data(data, self.limits, self.spec).pixels

    def deferred(self, data: bytes) -> tuple[bytes, int]:
        # Any decoder makes load_data stop at the header check; this one is never asked to decode.
        item = self.load_data(data, self.limits, self.spec, _HeaderCheckOnly())
        if item.encoded is None:
            raise RuntimeError("load_data with a decoder did not defer a plain RGB JPEG")
        return item.encoded, item.orientation


class _HeaderCheckOnly:
    def decode_jpegs(self, datas: list[bytes], orientations: list[int]) -> list[Any]:
        raise AssertionError("the benchmark decodes deferred JPEGs itself")


def cpu_stand_in_decoder(scorer: Any) -> Callable[[list[bytes], list[int]], list[Any]]:
    """For --dry-run only: `decode_jpegs`' contract (bytes -> model inputs) with PIL decode and
    `moderation.gpu_decode.pixels_from_uint8` (the GPU path's resize/crop/normalise) on the CPU."""
    import numpy as np
    from PIL import Image

    from moderation.gpu_decode import pixels_from_uint8

    def decode(datas: list[bytes], orientations: list[int]) -> list[Any]:
        out = []
        for data, orientation in zip(datas, orientations, strict=True):
            rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            out.append(pixels_from_uint8(torch.from_numpy(rgb.copy()).permute(2, 0, 1), scorer.preprocess_spec,
                                         orientation))
        return out

    return decode


def load_policy_file() -> Any:
    from moderation.policy import load_policy

    return load_policy(POLICY)


def gpu_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"device": "cpu (dry run)"}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": props.name, "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
    }
