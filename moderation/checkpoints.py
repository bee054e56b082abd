"""Finding and loading a CLIP checkpoint from local disk only, the device it runs on, its int8 variant.

Models load only from a local directory or the local Hugging Face cache (hub ids are resolved on the
filesystem, then loaded with `local_files_only=True`): a moderation worker must never stall on, or
depend on, a download at startup. Split from moderation/scorer.py, which does the scoring.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moderation.exceptions import ConfigurationError, ModelNotFoundError

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds, and only loading a model needs it
    from transformers import CLIPModel


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


def resolve_device(device: str) -> torch.device:
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


def load_parts(name_or_path: str) -> tuple[CLIPModel, Any, Any]:
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


def quantise_image_tower(model: CLIPModel) -> None:
    """int8 dynamic quantisation of the image tower's linear layers, in place.

    Only the image side: it runs for every image, while the text tower runs once per policy and keeps
    the exact fp32 category embeddings every verdict is measured against.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated in favour of torchao; it still works in
        # torch 2.13 and torchao is not a dependency. tests/test_scorer.py checks it is really int8.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # quantize_dynamic swaps children, never the module it is given: the projection (a bare Linear)
        # goes through a one-element container.
        tower = torch.nn.ModuleList([model.vision_model, model.visual_projection])
        quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        model.vision_model, model.visual_projection = tower[0], tower[1]
