"""The in-process measures: two baselines a user writes first, our scorer alone, and the bare forward.

Each function times one repetition and returns images per second; `run.py` calls them round-robin
(one rep of every measure, then the next rep), so on this noisy machine each measure's reps see the
same mix of quiet and busy moments and the ratios between them hold better than the absolute figures.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image


class ReadmeLoop:
    """(a) The CLIP README / model-card loop, verbatim: one image at a time, the text re-encoded every time.

    `processor(text=prompts, images=image, ...)` tokenises and `model(**inputs)` runs the text tower
    on all the prompts again for every image; no `torch.no_grad()`, as in the README.
    """

    def __init__(self, model_dir: Path, prompts: list[str]) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True)
        self.processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
        self.prompts = prompts

    def one(self, path: Path) -> torch.Tensor:
        image = Image.open(path)
        inputs = self.processor(text=self.prompts, images=image, return_tensors="pt", padding=True)
        outputs = self.model(**inputs)
        return outputs.logits_per_image.softmax(dim=1)

    def rep(self, paths: Sequence[Path]) -> float:
        started = time.perf_counter()
        for path in paths:
            self.one(path)
        return len(paths) / (time.perf_counter() - started)


class ZeroShotPipeline:
    """(b) `transformers.pipeline("zero-shot-image-classification", batch_size=32)` over file paths.

    One prompt per category as candidate labels (the pipeline has no notion of several prompts per
    class); it tokenises and encodes the labels again for every image. Shares the README loop's
    weights (same compute as loading them again, less memory).
    """

    def __init__(self, readme: ReadmeLoop, labels: list[str], batch_size: int = 32) -> None:
        from transformers import pipeline

        self.pipe = pipeline(
            "zero-shot-image-classification",
            model=readme.model,
            tokenizer=readme.processor.tokenizer,
            image_processor=readme.processor.image_processor,
            batch_size=batch_size,
            device="cpu",
        )
        self.labels = labels

    def run(self, paths: Sequence[Path]) -> list[Any]:
        return self.pipe([str(p) for p in paths], candidate_labels=self.labels, hypothesis_template="{}")

    def rep(self, paths: Sequence[Path]) -> float:
        started = time.perf_counter()
        results = self.run(paths)
        elapsed = time.perf_counter() - started
        assert len(results) == len(paths)
        return len(paths) / elapsed


def file_events(paths: Sequence[Path]) -> list[Any]:
    """Parsed `ImageEvent`s for file:// URLs, through the same contract parser the worker uses."""
    from consumers.producer import file_event
    from moderation.events import parse_event

    return [
        parse_event(json.dumps(file_event(p, source="bench", content_id=f"{p.stem}-{i}")).encode())
        for i, p in enumerate(paths)
    ]


def moderate_rep(moderator: Any, events: Sequence[Any], batch: int) -> float:
    """(c) `Moderator.moderate` in batches: load + decode + preprocess + forward + decide; no Kafka, no DB."""
    started = time.perf_counter()
    errors = 0
    for start in range(0, len(events), batch):
        verdicts = moderator.moderate(events[start : start + batch])
        errors += sum(1 for v in verdicts if str(getattr(v.status, "value", v.status)) != "ok")
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} of {len(events)} images came back as error verdicts: the measure is void")
    return len(events) / elapsed


def loading_rep(moderator: Any, events: Sequence[Any]) -> float:
    """(l) what a loader thread does per image, alone, on one thread: read + decode + preprocess.

    `moderation.images.load_image` with the scorer's `PreprocessSpec` when this checkout has one (JPEG
    draft decode + one resize + normalise, as the worker's loader threads run it), else the plain decode.
    Its cost per image is what the pipeline spends outside the forward, image by image.
    """
    import inspect

    from moderation.images import load_image

    spec = getattr(moderator.scorer, "preprocess_spec", None)
    with_spec = spec is not None and "spec" in inspect.signature(load_image).parameters
    started = time.perf_counter()
    for event in events:
        if with_spec:
            load_image(event, moderator.limits, spec)
        else:
            load_image(event, moderator.limits)
    return len(events) / (time.perf_counter() - started)


def pixel_batch(model_dir: Path, paths: Sequence[Path], batch: int) -> torch.Tensor:
    """A prebuilt [batch, 3, 224, 224] tensor from the checkpoint's own image processor (content is irrelevant)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    images = [Image.open(paths[i % len(paths)]).convert("RGB") for i in range(batch)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def forward_rep(model: Any, pixels: torch.Tensor, forwards: int) -> float:
    """(e) `get_image_features` on a prebuilt batch, under inference_mode: the model's own ceiling."""
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    pixels = pixels.to(dtype=dtype)
    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(forwards):
            model.get_image_features(pixel_values=pixels)
        elapsed = time.perf_counter() - started
    return forwards * len(pixels) / elapsed


def forwards_per_rep(images: int, batch: int) -> int:
    """Half the batches that (c) runs per rep, at least two: enough for a stable figure, and cheaper."""
    return max(2, math.ceil(images / batch) // 2)


class KeepOpen:
    """The moderator with `close()` made a no-op, so `run_worker` (which closes it on the way out) can be
    run again and again on one moderator: the model is loaded and the policy's text encoded once, outside
    every timing, as a long-lived worker would have them. Every other attribute is the moderator's own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # The worker sets the moderator's switches (keep_bytes): on the moderator itself, not this wrapper.
        if name == "_inner":
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    def close(self) -> None:
        """Left open on purpose; the benchmark closes the real moderator at the very end."""
