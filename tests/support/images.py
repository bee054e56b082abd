"""Test pictures: flat colour images the test model tells apart, and photo-like noise for preprocessing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from moderation.testmodel import make_colour_image


def png(colour: str, seed: int = 0) -> bytes:
    """A 64x64 PNG of one colour, as bytes."""
    buffer = io.BytesIO()
    make_colour_image(colour, (64, 64), seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


def colour_files(directory: Path, colours: list[str]) -> list[Path]:
    """One JPEG per colour, named `<index>-<colour>.jpg`, so a content id says what it shows."""
    paths = []
    for i, colour in enumerate(colours):
        path = directory / f"{i}-{colour}.jpg"
        make_colour_image(colour, (200, 150), seed=i).save(path, "JPEG")
        paths.append(path)
    return paths


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB picture: smooth colour regions, edges and sensor noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (max(height // 24, 2), max(width // 24, 2), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    smooth[: height // 3, : width // 2] //= 2  # a hard edge
    noisy = smooth + rng.integers(-12, 13, smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
