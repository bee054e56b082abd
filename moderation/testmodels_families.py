"""Tiny random-initialised SigLIP and SigLIP 2 checkpoints, built offline, for the tests of each family.

Like the test CLIP (moderation/testmodel.py) they are real checkpoints written by `save_pretrained`
and loaded through the scorer's own `from_pretrained` path; unlike it they are not trained (what is
tested is the plumbing of each family - classes, tokenizer, preprocessing, sigmoid scores - not zero-shot
accuracy). The tokenizers are character-level, built with the `tokenizers` library: SigLIP's real one
is sentencepiece-based, and the sentencepiece package is not a dependency (a real SigLIP checkpoint
needs it installed; see the README's model table). SigLIP 2's is its own `Siglip2Tokenizer`, built
from a character vocabulary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch

from moderation.checkpoints import quiet_progress_bars

TestFamily = Literal["siglip", "siglip2"]
IMAGE_SIZE = 32
PATCH_SIZE = 8
TEXT_LENGTH = 16  # SigLIP's real checkpoints take 64 tokens; prompts here are short
WIDTH = 64
LOGIT_SCALE = math.log(10.0)  # SigLIP's published models learn ~log(110) and a bias near -16; any
LOGIT_BIAS = -2.0  # non-trivial pair does: the tests compare the sigmoid with a hand computation
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,'-"
_TOWER = {"hidden_size": WIDTH, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}


def _siglip_tokenizer(directory: Path) -> int:
    """A character-level tokenizer shaped like SigLIP's: lower case, `</s>` appended, right padding
    with `<pad>`, input ids only (SigLIP's text tower was trained without an attention mask)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *_CHARS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))  # noqa: S106 - a token, not a password
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # every character a token
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=TEXT_LENGTH, model_input_names=["input_ids"], **specials
    )
    tokenizer.save_pretrained(directory)
    return len(vocab)


def _siglip2_tokenizer(directory: Path) -> int:
    """SigLIP 2's own tokenizer class (Gemma's byte-fallback BPE, lower-casing) over a character vocabulary."""
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {token: i for i, token in enumerate([*specials, "▁", *_CHARS.replace(" ", "")])}
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)
    tokenizer.save_pretrained(directory)
    return len(vocab)


def _preprocessor(directory: Path, family: TestFamily) -> None:
    common = {
        "do_rescale": True, "rescale_factor": 1 / 255, "do_convert_rgb": True,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
    }
    if family == "siglip":  # as google/siglip-base-patch16-224: squash to a square, no crop
        config = {"image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
                  "do_resize": True, "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, **common}
    else:  # NaFlex: aspect ratio kept, up to max_num_patches patches of patch_size
        config = {"image_processor_type": "Siglip2ImageProcessor", "processor_class": "Siglip2Processor",
                  "do_resize": True, "patch_size": PATCH_SIZE, "max_num_patches": 16, **common}
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _model(family: TestFamily, vocab_size: int) -> torch.nn.Module:
    from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    # The special ids of the tokenizers above (SigLIP's has no <bos>: its </s> stands in).
    specials = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1 if family == "siglip" else 2}
    text = {**_TOWER, "vocab_size": vocab_size, "max_position_embeddings": TEXT_LENGTH, **specials}
    if family == "siglip":
        vision = {**_TOWER, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}
        model: torch.nn.Module = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    else:
        vision = {**_TOWER, "patch_size": PATCH_SIZE, "num_patches": 16}
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    return model.eval()


def build_family_test_model(family: TestFamily, out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random `family` checkpoint into `out_dir` (created) and return it; deterministic per seed.

    `siglip`: `SiglipModel`, 32 px squares; what fixed-resolution SigLIP and SigLIP 2 checkpoints are.
    `siglip2`: `Siglip2Model` with the NaFlex processor, which the scorer refuses (see moderation/preprocess.py).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab_size = _siglip_tokenizer(out_dir) if family == "siglip" else _siglip2_tokenizer(out_dir)
    _preprocessor(out_dir, family)
    with quiet_progress_bars():
        _model(family, vocab_size).save_pretrained(out_dir)
    return out_dir
