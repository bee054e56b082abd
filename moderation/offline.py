"""Embedding image files outside the pipeline (golden examples, tuning sets) exactly as live traffic is.

Files go through the same loading (limits, EXIF, fast preprocessing), the same image tower and the same
float16 rounding as a live batch, so a golden example or a labelled image gets the scores a real upload
with the same bytes would get.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moderation.category_scores import to_stored
from moderation.contracts import Scorer
from moderation.exceptions import ImageLoadError
from moderation.images import load_bytes
from moderation.settings import ImageSettings

if TYPE_CHECKING:
    import torch

_BATCH = 32


@dataclass(frozen=True)
class FileEmbeddings:
    embeddings: dict[int, np.ndarray]  # position in the input -> float16 [dim]
    failures: dict[int, str]  # position -> why the file could not be used


def embed_files(scorer: Scorer, paths: Sequence[Path], limits: ImageSettings | None = None) -> FileEmbeddings:
    """Embed image files with a scorer that makes model inputs (a ClipScorer), in batches; unreadable
    files are reported, not raised."""
    limits = limits or ImageSettings()
    spec = scorer.preprocess_spec
    if spec is None:  # files go the way of live traffic: model inputs made to the scorer's spec
        raise ValueError("embed_files needs a scorer with a preprocess_spec (a ClipScorer)")
    embeddings: dict[int, np.ndarray] = {}
    failures: dict[int, str] = {}
    pending: list[tuple[int, np.ndarray | torch.Tensor]] = []

    def flush() -> None:
        if pending:
            rows = to_stored(scorer.pixel_embeddings([pixels for _, pixels in pending]))
            embeddings.update({i: row for (i, _), row in zip(pending, rows, strict=True)})
            pending.clear()

    for i, path in enumerate(paths):
        try:
            loaded = load_bytes(Path(path).read_bytes(), limits, spec)
        except OSError as exc:
            failures[i] = f"cannot read {path}: {exc.strerror or exc}"
            continue
        except ImageLoadError as exc:
            failures[i] = f"{path}: {exc.reason}: {exc.detail}"
            continue
        assert loaded.pixels is not None  # made to `spec`
        pending.append((i, loaded.pixels))
        if len(pending) >= _BATCH:
            flush()
    flush()
    return FileEmbeddings(embeddings, failures)
