"""Random-init CLIP checkpoints with the real architectures, built offline, for throughput benchmarks.

No weights can be downloaded here, and throughput does not depend on the weights' values: a seeded
random ViT-B/32 runs exactly the same matrix products as `openai/clip-vit-base-patch32`. Its scores
are meaningless, and every report that uses it says so.

The tokenizer matters more than it seems: a character-level vocabulary (the offline test model's)
turns "a photo of a landscape" into ~24 tokens where the real BPE gives ~7, and the text tower's cost
grows with sequence length. The baselines that re-encode the prompts for every image would then look
slower than they are. So this module writes a byte-level BPE whose merges turn every word of the
policy's prompts into one token (close to the real vocabulary, where common words are single tokens),
or, when the real CLIP BPE file (`bpe_simple_vocab_16e6.txt.gz`, shipped in the `open_clip_torch`
wheel) is found on disk, the real vocabulary itself. The text embedding table keeps the real size
(49,408 rows), so the parameter count matches the real checkpoint either way.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

REAL_VOCAB_SIZE = 49_408
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_VERSION = 1  # bump when the builder changes: it names the cache directory
RANDOM_NOTE = "random-init weights of the real ViT-B/32 architecture; throughput only, scores are meaningless"

# ViT-L/14 at 224 px, as openai/clip-vit-large-patch14 (text tower 768 wide, 12 heads).
VIT_L14_VISION = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "projection_dim": 768,
}
VIT_L14_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character map (the alphabet of its byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, chars = printable[:], printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {code: chr(char) for code, char in zip(codes, chars, strict=True)}


def find_real_bpe() -> Path | None:
    """The real CLIP BPE merges file if an `open_clip` install is on disk (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if candidate.is_file():
            return candidate
    return None


def _real_merges(bpe_gz: Path) -> list[tuple[str, str]]:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # type: ignore[misc]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the best-ranked adjacent pair everywhere, until none applies."""
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:], strict=False)}
        best = min(pairs, key=lambda pair: ranks.get(pair, 1 << 30))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _word_merges(texts: list[str]) -> list[tuple[str, str]]:
    """Merges under which every word of `texts` is one token, as common words are in the real vocabulary.

    Prefix chains first (shorter prefixes ranked first); a word that another word's merges split is
    then joined by extra, lower-priority merges over the pieces it ends up in.
    """
    byte_chars = bytes_to_unicode()
    words = []
    for text in texts:
        for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
            symbols = [byte_chars[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words.append(symbols)
    chains: dict[tuple[str, str], int] = {}
    for symbols in words:
        prefix = symbols[0]
        for position, symbol in enumerate(symbols[1:], start=1):
            chains.setdefault((prefix, symbol), position)
            prefix += symbol
    merges = sorted(chains, key=lambda pair: (chains[pair], pair))
    for _ in range(8):
        ranks = {pair: rank for rank, pair in enumerate(merges)}
        stuck = [pieces for pieces in (_bpe(list(w), ranks) for w in words) if len(pieces) > 1]
        if not stuck:
            break
        for pieces in stuck:
            prefix = pieces[0]
            for piece in pieces[1:]:
                if (prefix, piece) not in ranks:
                    ranks[(prefix, piece)] = len(merges)
                    merges.append((prefix, piece))
                prefix += piece
    return merges


def write_tokenizer(directory: Path, prompts: list[str]) -> dict[str, Any]:
    """Write vocab.json, merges.txt and the tokenizer configs; return a description for reports."""
    real = find_real_bpe()
    merges = _real_merges(real) if real else _word_merges(prompts)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab_list = list(dict.fromkeys(vocab_list)) + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    kind = f"real CLIP BPE from {real}" if real else "byte-level BPE, every word of the policy prompts one token"
    return {"kind": kind, "vocab_used": len(vocab), "bos_id": vocab[BOS], "eos_id": vocab[EOS]}


def write_preprocessor_config(directory: Path, size: int = 224) -> None:
    """OpenAI's preprocessor_config.json: shortest edge 224 bicubic, centre crop 224, CLIP mean/std, RGB."""
    config = {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_convert_rgb": True,
        "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def clip_config(arch: str, bos_id: int, eos_id: int) -> Any:
    """A CLIPConfig of the real architecture: `CLIPConfig()` defaults are ViT-B/32; "L/14" as OpenAI's."""
    from transformers import CLIPConfig

    token_ids = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    text: dict[str, Any] = {"vocab_size": REAL_VOCAB_SIZE, "max_position_embeddings": 77, **token_ids}
    vision: dict[str, Any] = {}
    projection = 512
    if arch == "L/14":
        text |= VIT_L14_TEXT
        vision = dict(VIT_L14_VISION)
        projection = 768
    elif arch != "B/32":
        raise ValueError(f"unknown architecture {arch!r}: use 'B/32' or 'L/14'")
    text["projection_dim"] = vision["projection_dim"] = projection
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


def describe_model(model: Any) -> dict[str, Any]:
    """Architecture facts for a report: widths, depths, patch, parameter counts."""
    vision, text = model.config.vision_config, model.config.text_config
    return {
        "vision": f"ViT {vision.num_hidden_layers}x{vision.hidden_size}/{vision.patch_size} at {vision.image_size} px",
        "text": f"{text.num_hidden_layers}x{text.hidden_size}, vocab table {text.vocab_size}",
        "projection_dim": model.config.projection_dim,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "vision_parameters_m": round(sum(p.numel() for p in model.vision_model.parameters()) / 1e6, 1),
    }


def build_random_clip(out_dir: Path, prompts: list[str], arch: str = "B/32", seed: int = 0) -> Path:
    """Build (or reuse) a seeded random-init CLIP checkpoint with tokenizer and preprocessor files.

    Written to a temporary sibling and renamed into place, so an interrupted build is never reused.
    """
    marker = out_dir / "bench-model.json"
    if marker.is_file():
        return out_dir
    import torch
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars would garble the progress lines
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = write_tokenizer(work, prompts)
        write_preprocessor_config(work)
        torch.manual_seed(seed)
        model = CLIPModel(clip_config(arch, tokenizer["bos_id"], tokenizer["eos_id"])).eval()
        model.save_pretrained(work)
        info = {"arch": arch, "seed": seed, "builder": MODEL_VERSION, "note": RANDOM_NOTE, "tokenizer": tokenizer}
        info |= describe_model(model)
        (work / "bench-model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def model_info(model_dir: Path) -> dict[str, Any]:
    """The description a built bench model recorded, or a note that a real checkpoint was given."""
    marker = model_dir / "bench-model.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    return {"note": f"checkpoint {model_dir} given with --model", "path": str(model_dir)}
