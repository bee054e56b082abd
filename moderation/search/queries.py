"""Query vectors, embedded exactly as what they are compared with: text through the text tower like a
one-prompt policy category, image bytes through the same loading and image tower as live traffic
(including the float16 rounding stored embeddings have)."""

from __future__ import annotations

import numpy as np

from moderation.category_scores import to_stored
from moderation.clip_scorer import ClipScorer
from moderation.images import load_bytes
from moderation.settings import ImageSettings


def text_vector(scorer: ClipScorer, text: str) -> np.ndarray:
    """The normalised text embedding of `text`, float32 [dim]."""
    return scorer.text_embeddings([text])[0].numpy().astype(np.float32)


def image_vector(scorer: ClipScorer, data: bytes, limits: ImageSettings | None = None) -> np.ndarray:
    """The embedding stored for an upload of these bytes, float32 [dim]; raises ImageLoadError."""
    spec = scorer.preprocess_spec
    loaded = load_bytes(data, limits or ImageSettings(), spec)
    assert loaded.pixels is not None  # made to the scorer's spec
    return to_stored(scorer.pixel_embeddings([loaded.pixels]))[0].astype(np.float32)
