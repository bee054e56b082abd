"""The weak-prompt task trained heads are tested on: category "warm" is red or yellow, but its only prompt
is "a red picture", so the prompts find half of it (zero-shot F1 about 0.67) and labels must teach the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moderation.category_scores import to_stored
from moderation.clip_scorer import ClipScorer
from moderation.preprocess import to_pixels
from moderation.testmodel import TEST_MODEL_COLOURS, make_colour_image

WARM = ("red", "yellow")
WARM_POLICY = """
version: "{version}"
scoring: independent
categories:
  warm:
    prompts: ["a red picture"]
    threshold: 0.5
    action: review
{head}"""


def warm_policy(version: str = "warm-1", head_file: str | None = None, sha256: str | None = None) -> str:
    head = f"    head: {{file: {head_file}, sha256: {sha256}}}\n" if head_file else ""
    return WARM_POLICY.format(version=version, head=head)


def colour_embeddings(scorer: ClipScorer, per_colour: int, first_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored-precision embeddings of `per_colour` fresh pictures of each test colour, and their colours."""
    pixels, colours = [], []
    for colour in TEST_MODEL_COLOURS:
        for i in range(per_colour):
            pixels.append(to_pixels(make_colour_image(colour, (48, 48), seed=first_seed + i), scorer.preprocess_spec))
            colours.append(colour)
    return to_stored(scorer.pixel_embeddings(pixels)), np.array(colours)


def warm_labels(colours: np.ndarray) -> list[frozenset[str]]:
    return [frozenset({"warm"}) if colour in WARM else frozenset() for colour in colours]


def write_labelled_folders(directory: Path, per_colour: int, first_seed: int) -> Path:
    """DIRECTORY/warm/ (red and yellow pictures) and DIRECTORY/safe/ (the other colours), as PNGs."""
    for colour in TEST_MODEL_COLOURS:
        folder = directory / ("warm" if colour in WARM else "safe")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_colour):
            make_colour_image(colour, (48, 48), seed=first_seed + i).save(folder / f"{colour}-{i}.png")
    return directory
