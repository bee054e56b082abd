"""The dual encoders the scorer runs, by family: what differs between CLIP and SigLIP, in one place.

A checkpoint's family is its config.json `model_type`. Everything else in the scorer is the same for
every family: a text tower and an image tower whose outputs, normalised, are compared by cosine.
What differs is read here: the transformers class, the embedding width, the text length limit, how
text is padded, the sigmoid bias, and which modules make up the image tower (for int8).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moderation.exceptions import ConfigurationError


@dataclass(frozen=True)
class ModelFamily:
    name: str  # config.json's model_type
    model_class: str  # the transformers class that loads it
    # SigLIP was trained on text padded to its full length (64 tokens) and pools the LAST position,
    # pad or not: padding to the longest prompt would pool a different token and change the embedding.
    pad_to_max_length: bool


FAMILIES: dict[str, ModelFamily] = {
    "clip": ModelFamily("clip", "CLIPModel", pad_to_max_length=False),
    "siglip": ModelFamily("siglip", "SiglipModel", pad_to_max_length=True),
    "siglip2": ModelFamily("siglip2", "Siglip2Model", pad_to_max_length=True),
}


def family_of(directory: Path) -> ModelFamily:
    """The family of the checkpoint in `directory`, from its config.json; `ConfigurationError` otherwise."""
    config_path = Path(directory) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {str(config_path)!r}: {exc}") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ConfigurationError(
            f"checkpoint {str(directory)!r} has model_type {model_type!r}, which the scorer does not run; "
            f"supported: {', '.join(FAMILIES)} (dual encoders with image and text features)"
        )
    return family


def model_family(model: Any) -> ModelFamily:
    """The family of a loaded model, by its config's model_type."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigurationError(f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def embedding_dim(model: Any) -> int:
    """The width of the image (and text) embeddings the model's `get_*_features` return."""
    config = model.config
    if config.model_type == "clip":
        return int(config.projection_dim)
    # SigLIP's image embedding is the attention-pooling head's output, as wide as the vision tower;
    # its text head projects onto the same width.
    return int(config.vision_config.hidden_size)


def text_length(model: Any) -> int:
    """The most tokens the text tower takes (its position embeddings)."""
    return int(model.config.text_config.max_position_embeddings)


def logit_bias(model: Any) -> float:
    """SigLIP's learned bias of its sigmoid scores; CLIP has none (0.0)."""
    bias = getattr(model, "logit_bias", None)
    return float(bias.detach().float().reshape(-1)[0]) if isinstance(bias, torch.Tensor) else 0.0


def image_tower(model: Any) -> list[str]:
    """The model's attributes that make up its image tower: CLIP's vision model and its projection;
    SigLIP's vision model alone (its pooling head, inside it, is the projection)."""
    names = ("vision_model", "visual_projection")
    return [name for name in names if isinstance(getattr(model, name, None), torch.nn.Module)]
