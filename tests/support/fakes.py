"""The one fake scorer of the test suite: the `Scorer` contract over flat colours, with no model at all.

`FakeScorer` reads each picture's colour (from its corner pixel, or from preprocessed model inputs) and
embeds it as the one-hot vector of that colour; scoring an embedding looks the colour up in a table of
probabilities. Every call is recorded, and magenta "breaks the model", so tests can watch what the
moderator asks of a scorer and how it isolates failures. Options choose which of the contract's paths
the fake offers: a `preprocess_spec` (model inputs made by the loaders, `pixel_embeddings`; without one
only decoded pictures, `image_embeddings`) and a `decoder` (`FakeDecoder`: JPEGs left encoded for it).
Tests that need real CLIP behaviour use the offline test model through `ClipScorer` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import torch
from PIL import Image

from moderation.category_scores import PolicyText
from moderation.policy import LoadedPolicy
from moderation.preprocess import PreprocessSpec, to_pixels

COLOURS = {
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "blue": (0, 0, 255),
    "green": (0, 255, 0),
    "magenta": (255, 0, 255),  # the fake scorer chokes on this one
}
PROBABILITIES = {
    "red": {"safe": 0.1, "red": 0.8, "yellow": 0.1},
    "yellow": {"safe": 0.05, "red": 0.25, "yellow": 0.7},
    "blue": {"safe": 0.9, "red": 0.05, "yellow": 0.05},
    "green": {"safe": 0.6, "red": 0.3, "yellow": 0.1},
}
# Model inputs of 8x8 pixels in [-1, 1]: small enough to check by eye.
SPEC = PreprocessSpec(crop_size=(8, 8), shortest_edge=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_NAMES = tuple(COLOURS)


@dataclass(frozen=True)
class FakeScore:
    probabilities: dict[str, float]
    best_prompt: str


class FakeDecoder:
    """A `JpegDecoder` that "decodes" on the CPU to `spec` and refuses (None) the image at position
    `refuse` of each call; `calls` records the EXIF orientations it was given, call by call."""

    def __init__(self, spec: PreprocessSpec = SPEC, refuse: int = -1) -> None:
        self.spec = spec
        self.refuse = refuse
        self.calls: list[list[int]] = []

    def decode_jpegs(self, datas: Sequence[bytes], orientations: Sequence[int]) -> list[np.ndarray | None]:
        self.calls.append(list(orientations))
        return [
            None if i == self.refuse else to_pixels(Image.open(BytesIO(data)).convert("RGB"), self.spec)
            for i, data in enumerate(datas)
        ]


class FakeScorer:
    """A `Scorer` (moderation/contracts.py) over flat colours; see the module docstring.

    `table`: colour -> probabilities that its embedding scores as (best prompt "a <colour> picture").
    `only_policy`: the one policy it may be asked to score under (asserted). `error`: raised by every
    embedding call instead of magenta's. `short_by_one`: batches of several images get one embedding
    too few, as a broken model might return.
    """

    model_id = "fake/colour-scorer-1"
    model_name = "fake colour scorer"
    device = torch.device("cpu")
    precision = "fp32"

    def __init__(
        self,
        *,
        spec: PreprocessSpec | None = None,
        decoder: FakeDecoder | None = None,
        table: Mapping[str, Mapping[str, float]] = PROBABILITIES,
        only_policy: LoadedPolicy | None = None,
        error: Exception | None = None,
        short_by_one: bool = False,
    ) -> None:
        self.preprocess_spec = spec
        self.decoder = decoder
        self.table = table
        self.only_policy = only_policy
        self.error = error
        self.short_by_one = short_by_one
        self.calls: list[list[str]] = []  # colours of each `image_embeddings` call
        self.pixel_calls: list[list[str]] = []  # colours of each `pixel_embeddings` call
        self.texts: list[str] = []  # versions of the policies whose text side was asked for
        self.kept = 0  # the last `keep_policies` count

    # -- the images side -------------------------------------------------------------------------------

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        colours = [self.colour_of_image(image) for image in images]
        self.calls.append(colours)
        return self._embed(colours)

    def pixel_embeddings(self, pixels: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        colours = [self.colour_of_pixels(np.asarray(p)) for p in pixels]
        self.pixel_calls.append(colours)
        return self._embed(colours)

    def _embed(self, colours: list[str]) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        if "magenta" in colours:
            raise RuntimeError("magenta breaks the model")
        if self.short_by_one and len(colours) > 1:
            colours = colours[:-1]
        return torch.eye(len(_NAMES))[[_NAMES.index(c) for c in colours]].reshape(len(colours), len(_NAMES))

    @staticmethod
    def colour_of_image(image: Image.Image) -> str:
        assert image.mode == "RGB"
        pixel = image.getpixel((0, 0))
        return next(name for name, rgb in COLOURS.items() if rgb == pixel)

    @staticmethod
    def colour_of_pixels(pixels: np.ndarray) -> str:
        assert pixels.shape == (3, 8, 8) and pixels.dtype == np.float32
        rgb = (pixels[:, 0, 0] * 0.5 + 0.5) * 255
        # The nearest colour: JPEG moves a flat colour by a few levels.
        return min(COLOURS, key=lambda name: float(np.abs(rgb - np.array(COLOURS[name])).sum()))

    # -- the policies side -----------------------------------------------------------------------------

    def score_embeddings(self, embeddings: np.ndarray, policy: LoadedPolicy) -> list[FakeScore]:
        if self.only_policy is not None:
            assert policy is self.only_policy
        colours = [_NAMES[int(np.argmax(row))] for row in np.asarray(embeddings, dtype=np.float32)]
        return [FakeScore(dict(self.table[c]), f"a {c} picture") for c in colours]

    def policy_text(self, policy: LoadedPolicy) -> PolicyText:
        self.texts.append(policy.version)
        categories = list(policy.policy.categories.values())
        prompts = [prompt for category in categories for prompt in category.prompts]
        owners = [index for index, category in enumerate(categories) for _ in category.prompts]
        return PolicyText(
            category_embeddings=torch.zeros(len(categories), len(_NAMES)),
            prompt_embeddings=torch.zeros(len(prompts), len(_NAMES)),
            prompts=prompts,
            prompt_category=torch.tensor(owners, dtype=torch.long),
            logit_scale=1.0,
        )

    def keep_policies(self, count: int) -> None:
        self.kept = count
