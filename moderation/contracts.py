"""The contracts between the moderator and the model: what a scorer and a JPEG decoder must offer.

The moderator, the offline embedding of files and the runtime's start-up log read a scorer only through
`Scorer`; `ClipScorer` (moderation/clip_scorer.py) is the real one and tests/support/fakes.py the one fake, and
both implement all of it, so nobody probes a scorer for what it happens to have. Like
moderation/verdict.py this module imports nothing from `moderation` at run time: it is safe to import
from anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the contract costs no imports
    import numpy as np
    import torch
    from PIL import Image

    from moderation.category_scores import PolicyText
    from moderation.policy import LoadedPolicy
    from moderation.preprocess import PreprocessSpec
    from moderation.verdict import Scores


@runtime_checkable
class JpegDecoder(Protocol):
    """Decodes a batch of JPEGs into model inputs somewhere faster than the loader threads (a GPU)."""

    def decode_jpegs(
        self, datas: Sequence[bytes], orientations: Sequence[int]
    ) -> Sequence[np.ndarray | torch.Tensor | None]:
        """Model inputs, float32 [3, H, W] each, for JPEG bytes whose EXIF `orientations` (1-8) were read
        from their headers; None where this decoder cannot take an image (the CPU then decodes it).
        Raising means the decoder failed as a whole: every image is decoded on the CPU instead."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """An image model scoring images against policies in two steps: embed each image once, then score
    the embeddings under each policy that applies (see moderation/category_scores.py).

    Embeddings come back as float32 [n, dim] on the CPU, normalised; the moderator rounds them to the
    float16 they are stored in before scoring them, so live scores and backtests agree.
    """

    @property
    def model_id(self) -> str:
        """The identity stored with every verdict and embedding (a hash of the checkpoint's files)."""
        ...

    @property
    def model_name(self) -> str:
        """What the model was loaded by (a path or hub id), for people."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def precision(self) -> str:
        """The precision it runs in: "fp32", "fp16" or "int8"."""
        ...

    @property
    def preprocess_spec(self) -> PreprocessSpec | None:
        """How to make this model's inputs in the loader threads (`pixel_embeddings` takes those);
        None for a scorer that takes only decoded pictures (`image_embeddings`)."""
        ...

    @property
    def decoder(self) -> JpegDecoder | None:
        """Where JPEGs go to be decoded in one batch (nvjpeg); None: the loader threads decode them."""
        ...

    def pixel_embeddings(self, pixels: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Embeddings of model inputs made to `preprocess_spec`: [n, dim]."""
        ...

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Embeddings of RGB pictures: [n, dim]."""
        ...

    def score_embeddings(self, embeddings: np.ndarray, policy: LoadedPolicy) -> Sequence[Scores]:
        """Scores of stored (float16) embeddings [n, dim] under `policy`: one per row, in order."""
        ...

    def policy_text(self, policy: LoadedPolicy) -> PolicyText:
        """The policy's text embeddings, computed once per policy and cached."""
        ...

    def keep_policies(self, count: int) -> None:
        """Keep the text side of at least `count` policies cached (every policy of the book in force)."""
        ...
