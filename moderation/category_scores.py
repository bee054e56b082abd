"""From image embeddings to category scores under a policy: the part of scoring that needs no image tower.

The image embedding does not depend on the policy. Everything a policy changes happens here, as a
couple of matrix products against the policy's text embeddings, so the same function scores a live
batch, re-scores stored embeddings in a backtest, and evaluates a shadow policy, with identical results.

Live scoring first rounds embeddings to float16, the precision they are stored in (`to_stored`), so a
backtest of the policy in force over stored embeddings reproduces the live verdicts exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moderation.policy import Policy
from moderation.verdict import EMBEDDING_DTYPE


@dataclass(frozen=True)
class PolicyText:
    """A policy's text side, computed once per policy version by the model's text tower."""

    category_embeddings: torch.Tensor  # [n_categories, dim]: normalised mean of each category's prompts
    prompt_embeddings: torch.Tensor  # [n_prompts, dim], normalised
    prompts: list[str]  # row i of prompt_embeddings
    prompt_category: torch.Tensor  # [n_prompts], long: the category (policy order) of each prompt
    logit_scale: float  # CLIP's learned temperature, exp(logit_scale)
    logit_bias: float = 0.0  # SigLIP's learned bias of the sigmoid scores; CLIP has none
    # Trained heads (moderation/heads.py), stacked: row k scores category column head_columns[k].
    head_weights: torch.Tensor | None = None  # [n_heads, dim] float32
    head_bias: torch.Tensor | None = None  # [n_heads] float32
    head_columns: tuple[int, ...] = ()


@dataclass(frozen=True)
class EmbeddingScores:
    scores: torch.Tensor  # [N, n_categories] float32: probabilities (softmax, sigmoid) or cosines (independent)
    best_prompt: torch.Tensor  # [N] long: index into PolicyText.prompts of the closest prompt
    best_similarity: torch.Tensor  # [N] float32: its cosine


def score_embeddings(embeddings: torch.Tensor, text: PolicyText, policy: Policy) -> EmbeddingScores:
    """Score normalised image embeddings [N, dim] under `policy`'s mode (see moderation/policy.py)."""
    embeddings = embeddings.to(device=text.prompt_embeddings.device, dtype=torch.float32)
    prompt_similarity = embeddings @ text.prompt_embeddings.T  # [N, n_prompts]
    best_similarity, best_prompt = prompt_similarity.max(dim=-1)
    if policy.scoring in ("independent", "sigmoid"):
        n_categories = text.category_embeddings.shape[0]
        index = text.prompt_category.expand(embeddings.shape[0], -1)
        scores = torch.full((embeddings.shape[0], n_categories), -1.0, device=embeddings.device)
        scores = scores.scatter_reduce(1, index, prompt_similarity, reduce="amax", include_self=True)
        if policy.scoring == "sigmoid":  # monotonic: the max of the sigmoids is the sigmoid of the max
            scores = torch.sigmoid(text.logit_scale * scores + text.logit_bias)
    else:
        scores = (text.logit_scale * embeddings @ text.category_embeddings.T).softmax(dim=-1)
    if text.head_weights is not None and text.head_bias is not None:
        # A trained head's calibrated probability replaces the category's zero-shot score; one small
        # matrix product for all heads (a few hundred multiply-adds per image per head).
        scores[:, list(text.head_columns)] = torch.sigmoid(embeddings @ text.head_weights.T + text.head_bias)
    return EmbeddingScores(scores.float(), best_prompt, best_similarity.float())


def to_stored(embeddings: torch.Tensor) -> np.ndarray:
    """Embeddings as stored and as scored: float16, [N, dim], on the CPU."""
    return embeddings.detach().to("cpu", torch.float32).numpy().astype(EMBEDDING_DTYPE)


def from_stored(stored: np.ndarray | bytes, dim: int | None = None) -> np.ndarray:
    """float16 bytes (one embedding, or several back to back) as a float16 array [N, dim]."""
    if isinstance(stored, bytes | bytearray | memoryview):
        array = np.frombuffer(stored, dtype=EMBEDDING_DTYPE)
        return array.reshape(-1, dim or array.shape[0])
    return np.asarray(stored, dtype=EMBEDDING_DTYPE)
