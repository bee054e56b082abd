"""A tiny CLIP written the way OpenAI's clip/model.py writes it: its weight names, layouts and forward.

The forward is the reference the converter (moderation/openai_clip.py) is checked against: the
converted transformers model must embed images and text as these few lines of OpenAI's own maths do
(fused q/k/v attention, QuickGELU, x @ proj, the text pooled at the highest token id).
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from moderation.openai_clip import bytes_to_unicode

WIDTH, LAYERS, IMAGE_SIZE, PATCH, EMBED, CONTEXT = 64, 2, 32, 8, 48, 20
# A real BPE file's first merges (the header line is skipped, as OpenAI's tokenizer does).
MERGES = ["t h", "i n", "p h", "o t", "o t</w>", "ph ot", "a n</w>", "r e", "e d</w>", "c t"]
VOCAB_SIZE = 2 * 256 + len(MERGES) + 2


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, causal: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, width // 64)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
        ))
        self.ln_2 = nn.LayerNorm(width)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [length, batch, width], as OpenAI's
        # Zeros: no mask (a None would need Optional typing in TorchScript); -inf above the diagonal: causal.
        mask = torch.zeros(x.shape[0], x.shape[0])
        if self.causal:
            mask = torch.full((x.shape[0], x.shape[0]), float("-inf")).triu(1)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, causal: bool) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, causal) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        scale = WIDTH**-0.5
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=PATCH, stride=PATCH, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(scale * torch.randn((IMAGE_SIZE // PATCH) ** 2 + 1, WIDTH))
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = Transformer(WIDTH, LAYERS, causal=False)
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(scale * torch.randn(WIDTH, EMBED))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).permute(0, 2, 1)  # [batch, grid*grid, width]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class OpenAIClip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = VisionTransformer()
        self.transformer = Transformer(WIDTH, LAYERS, causal=True)
        self.token_embedding = nn.Embedding(VOCAB_SIZE, WIDTH)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(CONTEXT, WIDTH))
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(WIDTH**-0.5 * torch.randn(WIDTH, EMBED))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        with torch.no_grad():  # LayerNorms away from identity, so a swapped or missed one shows
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    @torch.jit.export
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


def write_bpe_file(path: Path) -> Path:
    """A gzipped BPE vocabulary in OpenAI's format (a header line, then one merge per line)."""
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(["\"bpe_simple_vocab_16e6.txt#version: 0.2", *MERGES, "e x", "x t"]) + "\n")
    return path


def openai_token_ids(text: str) -> list[int]:
    """OpenAI's tokenizer on lower-case words of plain letters, for the vocabulary above."""
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in MERGES])}
    ranks = {tuple(m.split()): i for i, m in enumerate(MERGES)}
    ids = [VOCAB_SIZE - 2]
    for word in text.lower().split():
        parts = [*word[:-1], word[-1] + "</w>"]
        while True:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
            rank, i = min(pairs, default=(1 << 30, -1))
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [vocab[p] for p in parts]
    return [*ids, VOCAB_SIZE - 1]
