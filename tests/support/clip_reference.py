"""The reference CLIP preprocessing the fast path is held to: the real checkpoint's constants and processor."""

from __future__ import annotations

from typing import Any

from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GREY_LEVEL = 1 / 255 / min(CLIP_STD)  # one grey level, in normalised units (~0.0146)


def real_style_processor(**overrides: Any) -> Any:
    """A CLIP processor as transformers builds it for the real checkpoint: 224 shortest edge, crop 224."""
    config = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "resample": 3}
    return CLIPImageProcessorPil(**{**config, **overrides})
