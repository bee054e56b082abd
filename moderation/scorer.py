"""CLIP zero-shot scoring of images against a policy, on Hugging Face transformers.

A policy category is a set of prompts; its text embedding is the normalised mean of its prompts'
normalised embeddings, computed once per policy and cached. An image's score is the softmax over
categories of CLIP's logit scale times the cosine between the image and each category, exactly as in
CLIP's zero-shot classification, plus the single prompt closest to the image (to explain a verdict).

Models load only from a local directory or the local Hugging Face cache (hub ids are resolved on the
filesystem, then loaded with `local_files_only=True`): a moderation worker must never stall on, or
depend on, a download at startup.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from moderation.exceptions import ConfigurationError, ModelNotFoundError
from moderation.policy import LoadedPolicy

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds, and only loading a model needs it
    from transformers import CLIPModel

_POLICY_CACHE_SIZE = 8  # policies in use at once: the current one plus a few during a rollout
_TEXT_CHUNK = 256  # prompts per text-tower forward, to bound memory on policies with many prompts


@dataclass(frozen=True)
class ImageScore:
    probabilities: dict[str, float]  # category -> probability, in policy order; sums to 1
    best_prompt: str  # the prompt, across all categories, closest to the image
    best_prompt_similarity: float  # its cosine similarity to the image


@dataclass(frozen=True)
class _PolicyText:
    category_embeddings: torch.Tensor  # [n_categories, dim], normalised, float32 on the model's device
    prompt_embeddings: torch.Tensor  # [n_prompts, dim], normalised, float32
    prompts: list[str]  # row i of prompt_embeddings


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" bars: a worker's logs are not a terminal."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigurationError(f"device {device!r} requested but CUDA is not available on this machine")
        return torch.device(device)
    raise ConfigurationError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")


def _looks_like_path(name: str) -> bool:
    # A hub id is exactly "owner/name"; anything else with a separator, or anchored, is a filesystem path.
    return (
        Path(name).is_absolute()
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).expanduser().exists()
    )


def _not_found(name: str, problem: str) -> ModelNotFoundError:
    from huggingface_hub import constants

    if _looks_like_path(name):
        fix = (
            "point MODERATION_MODEL__NAME_OR_PATH (or --model) at a checkpoint directory holding config.json, "
            "the weights and the tokenizer and preprocessor files, as `save_pretrained` writes them"
        )
    else:
        fix = (
            f"on a machine with network run `hf download {name}` (older huggingface_hub: "
            f"`huggingface-cli download {name}`) and copy the cache here or point HF_HOME at it, "
            f"or pass a local checkpoint directory"
        )
    return ModelNotFoundError(
        f"CLIP model {name!r} not found: {problem}.\n"
        f"  Models load only from a local directory or the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}); nothing is downloaded.\n"
        f"  To fix: {fix}; or, for tests and demos, build the small offline test model with "
        f"`moderation test-model build`."
    )


def _resolve_local(name_or_path: str) -> str:
    """The checkpoint directory for a path, or for a hub id the snapshot in the local HF cache.

    Hub ids are resolved here, on the filesystem, rather than by `from_pretrained(hub_id,
    local_files_only=True)`: huggingface_hub 2.x still opens a connection on that path (it fetches an
    "agent harness" registry to build request headers) unless HF_HUB_OFFLINE was set before import.
    """
    if _looks_like_path(name_or_path):
        directory = Path(name_or_path).expanduser()
        if not directory.is_dir():
            raise _not_found(name_or_path, f"no such directory {str(directory)!r}")
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            config = try_to_load_from_cache(name_or_path, "config.json")
        except ValueError as exc:  # HFValidationError: neither a path nor a valid hub id
            raise _not_found(name_or_path, f"not a directory and not a valid hub id ({exc})") from exc
        if not isinstance(config, str):
            raise _not_found(name_or_path, "not a local directory and not in the local Hugging Face cache")
        directory = Path(config).parent
    if not (directory / "config.json").is_file():
        raise _not_found(name_or_path, f"{str(directory)!r} holds no config.json (not a checkpoint)")
    return str(directory)


def _load_parts(name_or_path: str) -> tuple[CLIPModel, Any, Any]:
    """Model, tokenizer and image processor, from disk only; ModelNotFoundError when they are not there."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    source = _resolve_local(name_or_path)
    # SDPA is faster on CPU and GPU; ask for it where this transformers' CLIP supports it.
    extra = {"attn_implementation": "sdpa"} if getattr(CLIPModel, "_supports_sdpa", False) else {}
    try:
        with quiet_progress_bars():
            model = CLIPModel.from_pretrained(source, local_files_only=True, **extra)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:  # e.g. weights or tokenizer files missing from the checkpoint
        raise _not_found(name_or_path, f"incomplete checkpoint in {source!r}: {exc}") from exc
    return model, tokenizer, processor


class ClipScorer:
    """A CLIP model ready to score batches of PIL images against policies. Thread-safe for inference."""

    def __init__(self, model: CLIPModel, tokenizer: Any, processor: Any, model_id: str, device: torch.device) -> None:
        self.model_id = model_id
        self.device = device
        # fp16 halves memory and doubles throughput on GPUs; CPUs (no fast fp16/bf16 here) stay in fp32.
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self._tokenizer = tokenizer
        self._processor = processor
        limits = [model.config.text_config.max_position_embeddings]
        tokenizer_limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000:  # huge means "unset"
            limits.append(tokenizer_limit)
        self.max_text_length = min(limits)
        self._policies: OrderedDict[str, _PolicyText] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, device: str = "auto") -> ClipScorer:
        """Load a local checkpoint directory or a hub id already in the local HF cache; never downloads.

        `device` is "auto" (CUDA when available, else CPU), "cpu" or "cuda[:N]". Raises
        `ModelNotFoundError` when the checkpoint is not on disk, `ConfigurationError` for a bad device.
        """
        torch_device = _resolve_device(device)
        model, tokenizer, processor = _load_parts(name_or_path)
        return cls(model, tokenizer, processor, name_or_path, torch_device)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded to the longest prompt (not to 77) and truncated to the model."""
        encoded = self._tokenizer(
            list(prompts),
            padding="longest",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    @torch.inference_mode()
    def _embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        rows = []
        for start in range(0, len(prompts), _TEXT_CHUNK):
            chunk = {k: v[start : start + _TEXT_CHUNK] for k, v in tokens.items()}
            rows.append(pooled_embeddings(self.model.get_text_features(**chunk)).float())
        return _normalise(torch.cat(rows))

    def _policy_text(self, policy: LoadedPolicy) -> _PolicyText:
        with self._lock:
            cached = self._policies.get(policy.sha256)
            if cached is not None:
                self._policies.move_to_end(policy.sha256)
                return cached
        categories = list(policy.policy.categories.values())
        prompts = [prompt for category in categories for prompt in category.prompts]
        prompt_embeddings = self._embed_prompts(prompts)
        means, start = [], 0
        for category in categories:
            means.append(prompt_embeddings[start : start + len(category.prompts)].mean(dim=0))
            start += len(category.prompts)
        text = _PolicyText(_normalise(torch.stack(means)), prompt_embeddings, prompts)
        with self._lock:
            # Another thread may have computed it meanwhile; keep one, so callers see a stable object.
            text = self._policies.setdefault(policy.sha256, text)
            self._policies.move_to_end(policy.sha256)
            while len(self._policies) > _POLICY_CACHE_SIZE:
                self._policies.popitem(last=False)
        return text

    def policy_embeddings(self, policy: LoadedPolicy) -> torch.Tensor:
        """Per category, the normalised mean of its normalised prompt embeddings: [n_categories, dim]."""
        return self._policy_text(policy).category_embeddings

    @torch.inference_mode()
    def _embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self._processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        return _normalise(pooled_embeddings(self.model.get_image_features(pixel_values=pixels)).float())

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Normalised image embeddings, [n_images, dim], float32 on the CPU (ready to store)."""
        if not images:
            return torch.empty(0, self.model.config.projection_dim)
        return self._embed_images(images).cpu()

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image], policy: LoadedPolicy) -> list[ImageScore]:
        """Score RGB images against `policy` in one batched forward of the image tower."""
        if not images:
            return []
        text = self._policy_text(policy)
        image_embeddings = self._embed_images(images)
        scale = self.model.logit_scale.float().exp()
        probabilities = (scale * image_embeddings @ text.category_embeddings.T).softmax(dim=-1).cpu()
        best_similarity, best_index = (image_embeddings @ text.prompt_embeddings.T).max(dim=-1)
        names = policy.policy.category_names
        return [
            ImageScore(
                probabilities=dict(zip(names, row.tolist(), strict=True)),
                best_prompt=text.prompts[index],
                best_prompt_similarity=similarity,
            )
            for row, index, similarity in zip(probabilities, best_index.tolist(), best_similarity.tolist(), strict=True)
        ]


def pooled_embeddings(output: Any) -> torch.Tensor:
    """The projected embeddings from `get_text_features` / `get_image_features`, on any transformers.

    transformers 5 returns an output object with the projected embeddings in `.pooler_output`;
    4.x returned the tensor itself.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalise(embeddings: torch.Tensor) -> torch.Tensor:
    return embeddings / embeddings.norm(dim=-1, keepdim=True)
