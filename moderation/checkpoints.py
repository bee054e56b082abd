"""Finding and loading a CLIP or SigLIP checkpoint from local disk only, the device it runs on, its int8 variant.

Models load only from a local directory or the local Hugging Face cache (hub ids are resolved on the
filesystem, then loaded with `local_files_only=True`): a moderation worker must never stall on, or
depend on, a download at startup. Split from moderation/clip_scorer.py, which does the scoring.

A checkpoint's *identity* (`checkpoint_id`) is a hash of the files that decide its image embeddings,
not the name it was loaded by: stored embeddings are keyed by it, so a symlink, a copy, another mount
path or the hub id of the same files all find the same rows, and a changed checkpoint at the same
path does not.

The model class follows the checkpoint's family (config.json `model_type`, see
moderation/model_families.py): CLIP, SigLIP or SigLIP 2. An OpenAI `.pt` file (what
`clip.load("ViT-B/32")` caches) is converted once into a Hugging Face checkpoint in
~/.cache/moderation/converted/<sha256 of the file> (moderation/openai_clip.py) and loaded from there.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moderation.exceptions import ConfigurationError, ModelNotFoundError
from moderation.model_families import family_of, image_tower

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds, and only loading a model needs it
    from transformers import PreTrainedModel


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


def resolve_checkpoint(name_or_path: str) -> Path:
    """The local directory a path or hub id loads from; `ModelNotFoundError` when there is none."""
    return Path(_resolve_local(name_or_path))


def _resolve_local(name_or_path: str) -> str:
    """The checkpoint directory for a path, or for a hub id the snapshot in the local HF cache.

    Hub ids are resolved here, on the filesystem, rather than by `from_pretrained(hub_id,
    local_files_only=True)`: huggingface_hub 2.x still opens a connection on that path (it fetches an
    "agent harness" registry to build request headers) unless HF_HUB_OFFLINE was set before import.
    """
    if _looks_like_path(name_or_path):
        directory = Path(name_or_path).expanduser()
        if directory.suffix == ".pt" and directory.is_file():
            from moderation.openai_clip import converted_checkpoint

            return str(converted_checkpoint(directory))
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


def load_parts(name_or_path: str) -> tuple[PreTrainedModel, Any, Any]:
    """Model, tokenizer and image processor, from disk only; ModelNotFoundError when they are not there.

    The model class is the family's (config.json `model_type`: clip, siglip, siglip2); another type is
    a `ConfigurationError` naming it and the supported ones. One load at a time per process: transformers'
    lazy module is not safe to import from two threads at once (a class looked up while another thread
    imports a sibling module can come back missing), and a console loads its search model in the
    background while other code may load one too.
    """
    with _LOADING:
        return _load_parts(name_or_path)


_LOADING = threading.Lock()


def _load_parts(name_or_path: str) -> tuple[PreTrainedModel, Any, Any]:
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    source = _resolve_local(name_or_path)
    model_class = getattr(transformers, family_of(Path(source)).model_class)
    # SDPA is faster on CPU and GPU; ask for it where this transformers' model supports it.
    extra = {"attn_implementation": "sdpa"} if getattr(model_class, "_supports_sdpa", False) else {}
    try:
        with quiet_progress_bars():
            model = model_class.from_pretrained(source, local_files_only=True, **extra)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
    except ImportError as exc:  # SigLIP's sentencepiece tokenizer without the sentencepiece package
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        if "sentencepiece" in reason.lower():
            reason = "its tokenizer needs the sentencepiece package, which is not installed (pip install sentencepiece)"
        raise ConfigurationError(f"cannot load {source!r}: {reason}") from exc
    except (OSError, ValueError) as exc:  # e.g. weights or tokenizer files missing from the checkpoint
        raise _not_found(name_or_path, f"incomplete checkpoint in {source!r}: {exc}") from exc
    return model, tokenizer, processor


MODEL_ID_PREFIX = "sha256:"
_HASH_BLOCK = 8 * 1024 * 1024
# (realpath, size, mtime_ns) -> sha256 of the file: a process that loads the same checkpoint again
# (tests, the CLI's commands) reads its weights once.
_file_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def identity_files(directory: Path) -> list[Path]:
    """The files that decide a checkpoint's image embeddings: config.json, the weights transformers
    loads (safetensors when present, else pytorch_model*.bin; shards included) and the image processor
    config. Tokenizer files are left out: they change text embeddings, never stored image embeddings."""
    directory = Path(directory)
    weights = sorted(directory.glob("model*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    files = [directory / "config.json", *weights]
    if (directory / "preprocessor_config.json").is_file():
        files.append(directory / "preprocessor_config.json")
    return files


def checkpoint_id(directory: str | Path) -> str:
    """The stable identity of the checkpoint in `directory`: `sha256:` and a hash over its identity files.

    The same files give the same id wherever they are and by whatever name they are reached (symlinks,
    hub cache snapshots, copies). Each file is hashed once per process and (path, size, mtime): about
    a second per GB of weights at load, nothing on later loads.
    """
    combined = hashlib.sha256()
    for path in identity_files(Path(directory)):
        try:
            digest = _file_digest(path)
        except OSError as exc:
            raise ModelNotFoundError(f"cannot read checkpoint file {str(path)!r}: {exc.strerror or exc}") from exc
        combined.update(f"{path.name}\0{digest}\n".encode())
    return MODEL_ID_PREFIX + combined.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, hex; computed once per process and (path, size, mtime)."""
    try:
        return _file_digest(path)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc


def _file_digest(path: Path) -> str:
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        known = _file_digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    with _digests_lock:
        _file_digests[key] = digest.hexdigest()
    return _file_digests[key]


def legacy_model_ids(name_or_path: str, directory: Path, model_id: str) -> tuple[str, ...]:
    """The ids this checkpoint's rows were stored under before ids were content hashes: the name as
    typed, the directory it resolved to, and that directory with symlinks resolved."""
    names = (name_or_path, str(directory), os.path.realpath(directory))
    return tuple(name for name in dict.fromkeys(names) if name != model_id)


def quantise_image_tower(model: PreTrainedModel) -> None:
    """int8 dynamic quantisation of the image tower's linear layers, in place.

    Only the image side: it runs for every image, while the text tower runs once per policy and keeps
    the exact fp32 category embeddings every verdict is measured against. The tower's modules are the
    family's (`image_tower`): CLIP's vision model and projection, SigLIP's vision model and its head.
    """
    from torch.ao.quantization import quantize_dynamic

    names = image_tower(model)
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated in favour of torchao; it still works in
        # torch 2.13 and torchao is not a dependency. tests/unit/test_scorer.py checks it is really int8.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # quantize_dynamic swaps children, never the module it is given: the tower's parts (CLIP's
        # projection is a bare Linear) go through a container.
        tower = torch.nn.ModuleList([getattr(model, name) for name in names])
        quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        for name, module in zip(names, tower, strict=True):
            setattr(model, name, module)
