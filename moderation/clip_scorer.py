"""CLIP (and SigLIP) zero-shot scoring of images against a policy, on Hugging Face transformers.

A policy category is a set of prompts; its text embedding is the normalised mean of its prompts'
normalised embeddings, computed once per policy and cached. An image's score is the softmax over
categories of CLIP's logit scale times the cosine between the image and each category, exactly as in
CLIP's zero-shot classification, plus the single prompt closest to the image (to explain a verdict).

`ClipScorer` is the real `Scorer` (moderation/contracts.py): the moderator embeds images with
`pixel_embeddings` (model inputs already made by `moderation.preprocess` in the loader threads, or on
the GPU by its `decoder`, see moderation/gpu_decode.py) and scores the embeddings under each policy with
`score_embeddings`; the scoring rules themselves are moderation/category_scores.py. `score_pixels` and
`score` embed and score in one call, the latter through the checkpoint's own Hugging Face image
processor, the reference the fast path is tested against. Checkpoints load from local disk only
(moderation/checkpoints.py): a real checkpoint and the offline test model (moderation/testmodel.py)
load through the same `load`.

`ClipScorer` runs every dual-encoder family moderation/model_families.py knows (`family`: clip, siglip,
siglip2); the name stays, as the contract's scorer. SigLIP's own score, a sigmoid with a learned bias,
is the policy scoring mode `sigmoid`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from moderation.category_scores import PolicyText, from_stored, score_embeddings
from moderation.checkpoints import (
    checkpoint_id,
    legacy_model_ids,
    load_parts,
    quantise_image_tower,
    resolve_checkpoint,
    resolve_device,
)
from moderation.exceptions import ConfigurationError, PolicyError
from moderation.gpu_decode import GpuJpegDecoder, gpu_decoder
from moderation.model_families import embedding_dim, logit_bias, model_family, text_length
from moderation.policy import LoadedPolicy
from moderation.preprocess import PreprocessSpec

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds, and only loading a model needs it
    from transformers import PreTrainedModel

    from moderation.settings import ModelSettings

__all__ = ["ClipScorer", "ImageScore", "PixelBatch", "pooled_embeddings"]

log = logging.getLogger(__name__)

_POLICY_CACHE_SIZE = 8  # at least: the policies in use plus a few during a rollout (see keep_policies)
_TEXT_CHUNK = 256  # prompts per text-tower forward, to bound memory on policies with many prompts

CpuMode = Literal["fp32", "int8"]
# Model inputs, float32 [3, H, W] each: numpy from the CPU loaders, tensors (maybe on the GPU) from
# gpu_decode; or one [N, 3, H, W] array or tensor.
PixelBatch = Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class ImageScore:
    # category -> score, in policy order: probabilities summing to 1 (softmax policies) or cosine
    # similarities (independent policies) or sigmoid probabilities (sigmoid policies); see
    # moderation/category_scores.py.
    probabilities: dict[str, float]
    best_prompt: str  # the prompt, across all categories, closest to the image
    best_prompt_similarity: float  # its cosine similarity to the image


class ClipScorer:
    """A CLIP or SigLIP model ready to score batches of images against policies. Thread-safe for inference."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        processor: Any,
        model_id: str,
        device: torch.device,
        *,
        cpu_mode: CpuMode = "fp32",
        compile: bool = False,
        gpu_decode: bool = False,
        model_name: str | None = None,
        legacy_model_ids: Sequence[str] = (),
    ) -> None:
        if cpu_mode not in ("fp32", "int8"):
            raise ConfigurationError(f"unknown cpu_mode {cpu_mode!r}: use 'fp32' or 'int8'")
        # model_id keys stored verdicts and embeddings (`load` makes it a hash of the checkpoint's files);
        # model_name is what it was loaded by, for people; legacy_model_ids are the names its rows were
        # stored under before ids were content hashes (backtests and tuning read those too).
        self.model_id = model_id
        self.model_name = model_name or model_id
        self.legacy_model_ids = tuple(legacy_model_ids)
        self.device = device
        self.family = model_family(model).name  # "clip", "siglip" or "siglip2"
        self._pad_to_max_length = model_family(model).pad_to_max_length
        self.embedding_dim = embedding_dim(model)
        # fp16 halves memory and doubles throughput on GPUs; CPUs (no fast fp16/bf16 here) stay in fp32.
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self._tokenizer = tokenizer
        self._processor = processor
        # Read (and refused, if it cannot be reproduced) at load time, not on the first batch.
        self.preprocess_spec = PreprocessSpec.from_processor(processor)
        self.precision = "fp16" if device.type == "cuda" else "fp32"
        if cpu_mode == "int8":
            if device.type == "cpu":
                quantise_image_tower(self.model)
                self.precision = "int8"
            else:  # one settings file may serve CPU and GPU hosts: the CPU-only option must not stop a GPU one
                log.warning("cpu_mode=int8 ignored on %s: int8 dynamic quantisation is for CPUs", device)
        self._image_features: Callable[..., Any] = self.model.get_image_features
        if compile:
            # Compiled lazily: the first batch (and the first of each new batch size) takes tens of seconds.
            self._image_features = torch.compile(self.model.get_image_features)
        self.compiled = compile
        # Where JPEGs are decoded in one batch (the `Scorer` contract's decoder); None: by the loaders.
        self.decoder: GpuJpegDecoder | None = gpu_decoder(self.preprocess_spec, device) if gpu_decode else None
        if gpu_decode and self.decoder is None and device.type == "cuda":
            log.warning("gpu_decode requested but torchvision's GPU JPEG decoder is unavailable: decoding on CPU")
        limits = [text_length(model)]
        tokenizer_limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000:  # huge means "unset"
            limits.append(tokenizer_limit)
        self.max_text_length = min(limits)
        self._policies: OrderedDict[str, PolicyText] = OrderedDict()
        self._policy_cache_size = _POLICY_CACHE_SIZE
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        name_or_path: str,
        device: str = "auto",
        *,
        cpu_mode: CpuMode = "fp32",
        compile: bool = False,
        gpu_decode: bool = False,
    ) -> ClipScorer:
        """Load a local checkpoint directory, a hub id already in the local HF cache, or an OpenAI `.pt`
        (converted once, see moderation/openai_clip.py); never downloads. CLIP, SigLIP or SigLIP 2, by
        the checkpoint's `model_type` (moderation/model_families.py).

        `device`: "auto" (CUDA when available, else CPU), "cpu" or "cuda[:N]"; CUDA runs fp16 weights
        and SDPA attention. `cpu_mode="int8"`: dynamic int8 quantisation of the image tower's linear
        layers, ~2x faster on CPU with embeddings at cosine ~0.999 of fp32; CPU only, ignored with a
        warning on CUDA (where fp16 is the fast mode) so one settings file serves both kinds of host.
        `compile`: `torch.compile` the image tower. `gpu_decode`: nvjpeg JPEG decode, when on CUDA and
        torchvision imports (`self.gpu_decode` says whether it is on, `self.decoder` does it).

        The scorer's `model_id` is `checkpoint_id` of the files (the same for a symlink, a copy or the
        hub id of the same checkpoint); `model_name` is `name_or_path` as given.

        Raises `ModelNotFoundError` when the checkpoint is not on disk, `ConfigurationError` for a bad
        device or cpu_mode, a model_type no family runs, or an image processor `PreprocessSpec` cannot
        reproduce (SigLIP 2 NaFlex).
        """
        torch_device = resolve_device(device)
        model, tokenizer, processor = load_parts(name_or_path)
        directory = resolve_checkpoint(name_or_path)
        model_id = checkpoint_id(directory)
        return cls(
            model, tokenizer, processor, model_id, torch_device,
            cpu_mode=cpu_mode, compile=compile, gpu_decode=gpu_decode,
            model_name=name_or_path, legacy_model_ids=legacy_model_ids(name_or_path, directory, model_id),
        )

    @property
    def gpu_decode(self) -> bool:
        """Whether JPEGs are decoded on the GPU (`gpu_decode` was asked for and is available here)."""
        return self.decoder is not None

    @property
    def stored_model_ids(self) -> tuple[str, ...]:
        """Every id this checkpoint's stored rows may carry: `model_id` first, then the legacy names."""
        return (self.model_id, *self.legacy_model_ids)

    @classmethod
    def from_settings(cls, settings: ModelSettings, name_or_path: str | None = None) -> ClipScorer:
        """`load` with every option from the `model` settings group; `name_or_path` overrides its name."""
        return cls.load(
            name_or_path or settings.name_or_path, settings.device,
            cpu_mode=settings.cpu_mode, compile=settings.compile, gpu_decode=settings.gpu_decode,
        )

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The text tower's inputs, truncated to the model: CLIP's padded to the longest prompt (not to 77,
        ~9x faster), SigLIP's to the full length it was trained on. Only the inputs the tokenizer names
        (`model_input_names`): SigLIP's own tokenizer gives no attention mask, and was trained without."""
        encoded = self._tokenizer(
            list(prompts),
            padding="max_length" if self._pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        names = getattr(self._tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"]
        return {k: encoded[k] for k in ("input_ids", "attention_mask") if k in names and k in encoded}

    @torch.inference_mode()
    def _embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        rows = []
        for start in range(0, len(prompts), _TEXT_CHUNK):
            chunk = {k: v[start : start + _TEXT_CHUNK] for k, v in tokens.items()}
            rows.append(pooled_embeddings(self.model.get_text_features(**chunk)).float())
        return _normalise(torch.cat(rows))

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings, [n, dim] float32 on the CPU: a search query, embedded like a prompt."""
        return self._embed_prompts(list(texts)).cpu()

    def policy_text(self, policy: LoadedPolicy) -> PolicyText:
        """The policy's text embeddings, computed once per policy hash (LRU of the last few) and reused."""
        with self._lock:
            cached = self._policies.get(policy.sha256)
            if cached is not None:
                self._policies.move_to_end(policy.sha256)
                return cached
        categories = list(policy.policy.categories.values())
        prompts = [prompt for category in categories for prompt in category.prompts]
        prompt_embeddings = self._embed_prompts(prompts)
        means, owners, start = [], [], 0
        for index, category in enumerate(categories):
            means.append(prompt_embeddings[start : start + len(category.prompts)].mean(dim=0))
            owners += [index] * len(category.prompts)
            start += len(category.prompts)
        text = PolicyText(
            category_embeddings=_normalise(torch.stack(means)),
            prompt_embeddings=prompt_embeddings,
            prompts=prompts,
            prompt_category=torch.tensor(owners, dtype=torch.long, device=prompt_embeddings.device),
            logit_scale=float(self.model.logit_scale.detach().float().exp()),
            logit_bias=logit_bias(self.model),
            **self._heads(policy, prompt_embeddings.shape[1], prompt_embeddings.device),
        )
        with self._lock:
            # Another thread may have computed it meanwhile; keep one, so callers see a stable object.
            text = self._policies.setdefault(policy.sha256, text)
            self._policies.move_to_end(policy.sha256)
            while len(self._policies) > self._policy_cache_size:
                self._policies.popitem(last=False)
        return text

    def _heads(self, policy: LoadedPolicy, dim: int, device: torch.device) -> dict[str, Any]:
        """The policy's trained heads stacked for scoring, refused (PolicyError) when they were trained on
        another checkpoint's embeddings or were not read with the policy."""
        if not policy.heads_loaded:
            raise PolicyError(policy.path, [("categories", "its trained heads were not read with it: load the "
                                             "policy from its file, next to its head files")])
        if not policy.heads:
            return {}
        names = policy.policy.category_names
        problems = []
        for name, head in policy.heads.items():
            if head.model_id not in self.stored_model_ids:
                problems.append((f"categories.{name}.head", f"trained on embeddings of model {head.model_id}, "
                                 f"but this is model {self.model_id} ({self.model_name}): train it again here"))
            elif head.dim != dim:
                problems.append((f"categories.{name}.head", f"{head.dim} wide, the model's embeddings {dim}"))
        if problems:
            raise PolicyError(policy.path, problems)
        ordered = list(policy.heads.items())
        return {
            "head_weights": torch.from_numpy(np.stack([h.weight for _, h in ordered])).to(device),
            "head_bias": torch.tensor([h.bias for _, h in ordered], dtype=torch.float32, device=device),
            "head_columns": tuple(names.index(name) for name, _ in ordered),
        }

    def keep_policies(self, count: int) -> None:
        """Keep the text embeddings of at least `count` policies (plus room for a rollout), so a book with
        many per-source and shadow policies never recomputes them batch after batch."""
        with self._lock:
            self._policy_cache_size = max(_POLICY_CACHE_SIZE, 2 * count)

    def policy_embeddings(self, policy: LoadedPolicy) -> torch.Tensor:
        """Per category, the normalised mean of its normalised prompt embeddings: [n_categories, dim]."""
        return self.policy_text(policy).category_embeddings

    # -- images ---------------------------------------------------------------------------------------

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised float32 embeddings of a [N, 3, H, W] batch already on the model's device."""
        output = self._image_features(pixel_values=pixel_values.to(dtype=self.dtype))
        return _normalise(pooled_embeddings(output).float())

    def _pixel_batch(self, pixels: PixelBatch) -> torch.Tensor:
        """One [N, 3, H, W] float32 tensor on the model's device, with as few copies as the inputs allow."""
        if isinstance(pixels, np.ndarray):
            batch = torch.from_numpy(pixels)
        elif isinstance(pixels, torch.Tensor):
            batch = pixels
        elif all(isinstance(p, np.ndarray) for p in pixels):
            arrays = list(pixels)
            if self.device.type == "cuda":
                # Stack straight into page-locked memory: the copy to the GPU is then a DMA that
                # overlaps the host, instead of a staging copy first.
                batch = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.float32, pin_memory=True)
                np.stack(arrays, out=batch.numpy())
            else:
                batch = torch.from_numpy(np.stack(arrays))
        else:  # some came decoded on the GPU already
            batch = torch.stack([torch.as_tensor(p).to(self.device, non_blocking=True) for p in pixels])
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"pixels must be [N, 3, H, W] (or N arrays of [3, H, W]), got {tuple(batch.shape)}")
        if batch.device != self.device:
            if self.device.type == "cuda" and not batch.is_pinned():
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
        return batch

    @torch.inference_mode()
    def pixel_embeddings(self, pixels: PixelBatch) -> torch.Tensor:
        """Normalised embeddings of preprocessed inputs, [n, dim], float32 on the CPU (ready to store)."""
        if len(pixels) == 0:
            return torch.empty(0, self.embedding_dim)
        return self._embed(self._pixel_batch(pixels)).cpu()

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Normalised embeddings of PIL images through the reference processor, [n, dim], float32 on the CPU."""
        if not images:
            return torch.empty(0, self.embedding_dim)
        return self._embed(self._reference_pixels(images)).cpu()

    def _reference_pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self._processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device)

    @torch.inference_mode()
    def score_pixels(self, pixels: PixelBatch, policy: LoadedPolicy) -> list[ImageScore]:
        """Score preprocessed inputs (`moderation.preprocess.to_pixels`) in one forward of the image tower."""
        if len(pixels) == 0:
            return []
        return self._scores(self._embed(self._pixel_batch(pixels)), policy)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], policy: LoadedPolicy) -> list[ImageScore]:
        """Score RGB images against `policy` through the checkpoint's own image processor (the reference)."""
        if not images:
            return []
        return self._scores(self._embed(self._reference_pixels(images)), policy)

    @torch.inference_mode()
    def score_embeddings(self, embeddings: np.ndarray | torch.Tensor, policy: LoadedPolicy) -> list[ImageScore]:
        """Score stored (float16) or fresh image embeddings [N, dim] against `policy`: no image tower."""
        if len(embeddings) == 0:
            return []
        if isinstance(embeddings, np.ndarray):
            embeddings = torch.from_numpy(from_stored(embeddings).astype(np.float32))
        return self._scores(embeddings, policy)

    def _scores(self, image_embeddings: torch.Tensor, policy: LoadedPolicy) -> list[ImageScore]:
        text = self.policy_text(policy)
        scored = score_embeddings(image_embeddings, text, policy.policy)
        names = policy.policy.category_names
        return [
            ImageScore(
                probabilities=dict(zip(names, row, strict=True)),
                best_prompt=text.prompts[index],
                best_prompt_similarity=similarity,
            )
            for row, index, similarity in zip(
                scored.scores.cpu().tolist(), scored.best_prompt.tolist(), scored.best_similarity.tolist(), strict=True
            )
        ]


def pooled_embeddings(output: Any) -> torch.Tensor:
    """The projected embeddings from `get_text_features` / `get_image_features`, on any transformers.

    transformers 5 returns an output object with the projected embeddings in `.pooler_output`;
    4.x returned the tensor itself.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalise(embeddings: torch.Tensor) -> torch.Tensor:
    return embeddings / embeddings.norm(dim=-1, keepdim=True)
