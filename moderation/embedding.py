"""Embedding a batch: each distinct image through the image tower once, the repeats reusing it.

The image tower is the expensive step and its result does not depend on the policy, so a batch is
embedded once and every policy scores the same embeddings (moderation/policy_scoring.py,
moderation/shadows.py). Bytes embedded before are found in the `EmbeddingCache` (moderation/reuse.py)
and a repeat inside the batch reuses the first occurrence's forward pass. A batch the model rejects is
retried image by image, so one bad image fails only its own event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from moderation.category_scores import to_stored
from moderation.contracts import Scorer
from moderation.images import LoadedImage
from moderation.reuse import EmbeddingCache
from moderation.verdict import REASON_SCORE_FAILED, LoadFailure


@dataclass(frozen=True)
class Embedded:
    embedding: np.ndarray  # float16 [dim], normalised: what is stored and what every policy scores
    reused: bool  # found in the cache, or a repeat of an image earlier in the batch


def embed_batch(
    scorer: Scorer, items: Mapping[int, LoadedImage], cache: EmbeddingCache | None
) -> dict[int, Embedded | LoadFailure]:
    """One embedding per image (keys as in `items`): reused when its bytes were embedded before (here or
    in `cache`), else from one forward pass over the rest; a batch that fails is retried image by image.
    Without a cache reuse is off: every image runs, repeats within the batch included."""
    reuse = cache is not None
    known = cache.get_many(item.sha256 for item in items.values()) if cache is not None else {}

    def key(i: int) -> str:
        return items[i].sha256 if reuse else f"#{i}"

    first_of: dict[str, int] = {}
    to_run: list[int] = []
    for i in items:
        if key(i) not in known and key(i) not in first_of:
            first_of[key(i)] = i
            to_run.append(i)
    computed: dict[int, np.ndarray | LoadFailure] = {}
    if to_run:
        try:
            rows = to_stored(_embed_many(scorer, [items[i] for i in to_run]))
            computed.update(zip(to_run, rows, strict=True))
        except Exception:  # noqa: BLE001 - isolate the image that breaks the batch, embed the rest alone
            for i in to_run:
                try:
                    computed[i] = to_stored(_embed_many(scorer, [items[i]]))[0]
                except Exception as exc:  # noqa: BLE001 - one bad image must not fail its batch
                    computed[i] = LoadFailure(REASON_SCORE_FAILED, f"{type(exc).__name__}: {exc}")
    if cache is not None:
        cache.put_many({key(i): e for i, e in computed.items() if isinstance(e, np.ndarray)})
    result: dict[int, Embedded | LoadFailure] = {}
    for i in items:
        if key(i) in known:
            result[i] = Embedded(known[key(i)], reused=True)
            continue
        first_index = first_of[key(i)]
        first = computed[first_index]
        # A repeat inside the batch reuses the first occurrence's forward pass.
        result[i] = first if isinstance(first, LoadFailure) else Embedded(first, reused=first_index != i)
    return result


def _embed_many(scorer: Scorer, items: list[LoadedImage]) -> torch.Tensor:
    """The model inputs made in the loader threads when the scorer takes them, else the decoded pictures."""
    pixels = [item.pixels for item in items if item.pixels is not None]
    if scorer.preprocess_spec is not None and len(pixels) == len(items):
        return scorer.pixel_embeddings(pixels)
    images = [item.image for item in items if item.image is not None]
    if len(images) < len(items):
        if scorer.preprocess_spec is None:  # only if the scorer was swapped between loading and scoring
            raise ValueError("loaded as model inputs (or left undecoded) for a scorer that takes only images")
        raise ValueError("some images were neither decoded nor made into model inputs")
    return scorer.image_embeddings(images)
