"""OpenAI's original CLIP checkpoints (the `.pt` files `clip.load("ViT-B/32")` caches) as Hugging Face ones.

Those files are TorchScript archives (or, from some tools, plain state dicts) of OpenAI's own model
code, which transformers cannot load. `convert_openai_checkpoint` maps their weights onto `CLIPModel`
(the mapping of transformers' convert_clip_original_pytorch_to_hf.py), reads the architecture from the
weights' shapes as OpenAI's `build_model` does, and writes a checkpoint directory the scorer loads like
any other: config.json, model.safetensors, tokenizer files and preprocessor_config.json. Only the ViT
image towers convert; the ResNet ones ("RN50" and kin) have no transformers class and are refused.

The tokenizer is not in the `.pt`: it comes from a Hugging Face CLIP tokenizer directory, or is built
from OpenAI's BPE vocabulary file `bpe_simple_vocab_16e6.txt.gz` (shipped in the `clip` and
`open_clip_torch` packages), exactly as OpenAI's tokenizer reads it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from moderation.exceptions import ConfigurationError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
log = logging.getLogger(__name__)
_OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# Not weights: OpenAI's TorchScript models carry these as integer entries beside them.
_NOT_WEIGHTS = frozenset({"input_resolution", "context_length", "vocab_size"})
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable unicode character map used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, chars = printable[:], printable[:]
    for byte in range(256):  # the unprintable bytes get the next free code points, in byte order
        if byte not in printable:
            codes.append(byte)
            chars.append(256 + len(codes) - len(printable) - 1)
    return {code: chr(char) for code, char in zip(codes, chars, strict=True)}


def read_state_dict(source: Path) -> dict[str, torch.Tensor]:
    """The weights in an OpenAI `.pt`: a TorchScript archive (what `clip.load` caches) or a plain state dict."""
    if not source.is_file():
        raise ConfigurationError(f"{str(source)!r}: no such file")
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript in favour of torch.export; OpenAI's files are TorchScript all the same.
            warnings.simplefilter("ignore", DeprecationWarning)
            state = torch.jit.load(str(source), map_location="cpu").state_dict()
    except (RuntimeError, ValueError):  # not TorchScript: maybe a state dict saved with torch.save
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle and zip raise a zoo of types; all mean "not this"
            raise ConfigurationError(
                f"{str(source)!r} is neither a TorchScript archive nor a state dict: {str(exc).splitlines()[0]}"
            ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigurationError(f"{str(source)!r} holds no state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items() if k not in _NOT_WEIGHTS}


def _layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.attn\.in_proj_weight$")
    found = [int(m.group(1)) for key in state if (m := pattern.match(key))]
    return max(found) + 1 if found else 0


def clip_config(state: Mapping[str, torch.Tensor]) -> Any:
    """The `CLIPConfig` of an OpenAI ViT state dict, read from its shapes as OpenAI's `build_model` does."""
    from transformers import CLIPConfig

    if "visual.layer1.0.conv1.weight" in state or "visual.attnpool.positional_embedding" in state:
        raise ConfigurationError(
            "this is a ResNet CLIP (RN50, RN101, RN50x4...): only the ViT ones (ViT-B/32, ViT-B/16, ViT-L/14) convert"
        )
    required = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
                "positional_embedding", "ln_final.weight", "text_projection", "logit_scale"]
    missing = [key for key in required if key not in state]
    if missing:
        raise ConfigurationError(f"not an OpenAI CLIP state dict: no {', '.join(missing)}")
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    vocab_size = state["token_embedding.weight"].shape[0]
    embed_dim = state["text_projection"].shape[1]
    vision = {
        "hidden_size": vision_width,
        "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _layers(state, "visual.transformer.resblocks."),
        "num_attention_heads": vision_width // 64,  # OpenAI's rule: 64-wide heads
        "image_size": patch * grid,
        "patch_size": patch,
        "hidden_act": "quick_gelu",
        "projection_dim": embed_dim,
    }
    text = {
        "hidden_size": text_width,
        "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _layers(state, "transformer.resblocks."),
        "num_attention_heads": text_width // 64,
        "max_position_embeddings": state["positional_embedding"].shape[0],
        "vocab_size": vocab_size,
        "hidden_act": "quick_gelu",
        "projection_dim": embed_dim,
        # <|startoftext|> and <|endoftext|> are the last two ids; OpenAI pools at the highest id (the
        # first <|endoftext|>), which transformers does when eos_token_id is set (and not 2).
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _tower(state: Mapping[str, torch.Tensor], source: str, target: str, layers: int) -> dict[str, torch.Tensor]:
    """One transformer's blocks: OpenAI's fused q/k/v `in_proj` split into transformers' three."""
    out: dict[str, torch.Tensor] = {}
    for i in range(layers):
        s, t = f"{source}{i}.", f"{target}{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{s}attn.in_proj_{kind}"].chunk(3, dim=0)
            out |= {f"{t}self_attn.{name}_proj.{kind}": part for name, part in zip("qkv", (q, k, v), strict=True)}
            out[f"{t}self_attn.out_proj.{kind}"] = state[f"{s}attn.out_proj.{kind}"]
            out[f"{t}layer_norm1.{kind}"] = state[f"{s}ln_1.{kind}"]
            out[f"{t}layer_norm2.{kind}"] = state[f"{s}ln_2.{kind}"]
            out[f"{t}mlp.fc1.{kind}"] = state[f"{s}mlp.c_fc.{kind}"]
            out[f"{t}mlp.fc2.{kind}"] = state[f"{s}mlp.c_proj.{kind}"]
    return out


def hf_state_dict(state: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """OpenAI's weight names and layouts as `CLIPModel`'s, in float32 (OpenAI ships fp16)."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        # OpenAI multiplies x @ proj; a Linear computes x @ weight.T.
        "visual_projection.weight": state["visual.proj"].T,
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"].reshape(()),
    }
    for kind in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{kind}"] = state[f"visual.ln_pre.{kind}"]  # sic: transformers' name
        out[f"vision_model.post_layernorm.{kind}"] = state[f"visual.ln_post.{kind}"]
        out[f"text_model.final_layer_norm.{kind}"] = state[f"ln_final.{kind}"]
    out |= _tower(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.",
                  config.vision_config.num_hidden_layers)
    out |= _tower(state, "transformer.resblocks.", "text_model.encoder.layers.", config.text_config.num_hidden_layers)
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def _used_keys(config: Any) -> set[str]:
    keys = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
            "token_embedding.weight", "positional_embedding", "text_projection", "logit_scale"}
    for prefix in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        keys |= {f"{prefix}.weight", f"{prefix}.bias"}
    for tower, layers in (("visual.transformer.resblocks.", config.vision_config.num_hidden_layers),
                          ("transformer.resblocks.", config.text_config.num_hidden_layers)):
        for i in range(layers):
            for part in ("attn.in_proj", "attn.out_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"):
                sep = "_" if part == "attn.in_proj" else "."
                keys |= {f"{tower}{i}.{part}{sep}weight", f"{tower}{i}.{part}{sep}bias"}
    return keys


def write_bpe_tokenizer(bpe_path: Path, vocab_size: int, directory: Path, context_length: int) -> None:
    """vocab.json + merges.txt for `CLIPTokenizer` from OpenAI's `bpe_simple_vocab_16e6.txt.gz`, as OpenAI's
    SimpleTokenizer builds its vocabulary: bytes, bytes + "</w>", the merges, the two special tokens.
    As many merges as the checkpoint's vocabulary has room for (48,894 for OpenAI's 49,408)."""
    try:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{str(bpe_path)!r}: not a gzipped BPE vocabulary ({exc})") from exc
    chars = list(bytes_to_unicode().values())
    n_merges = vocab_size - 2 * len(chars) - 2
    merges = [line for line in lines[1:] if line][:n_merges]
    if n_merges < 0 or len(merges) != n_merges or any(len(m.split()) != 2 for m in merges):
        raise ConfigurationError(
            f"{str(bpe_path)!r} has {len(merges)} merges; this checkpoint's vocabulary of {vocab_size} needs {n_merges}"
        )
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [_BOS, _EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != vocab_size:
        raise ConfigurationError(f"{str(bpe_path)!r}: its merges repeat tokens; not OpenAI's vocabulary format")
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": context_length, "do_lower_case": True, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _copy_tokenizer(tokenizer_dir: Path, directory: Path) -> None:
    found = [name for name in _TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if "tokenizer_config.json" not in found or not ({"vocab.json", "tokenizer.json"} & set(found)):
        raise ConfigurationError(
            f"{str(tokenizer_dir)!r} is not a Hugging Face CLIP tokenizer directory "
            "(needs tokenizer_config.json and vocab.json + merges.txt or tokenizer.json)"
        )
    for name in found:
        shutil.copyfile(tokenizer_dir / name, directory / name)


def _check_tokenizer(directory: Path, config: Any) -> None:
    """The tokenizer must give the ids the checkpoint was trained on: same vocabulary size, specials last."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    text = config.text_config
    ids = tokenizer("a photo")["input_ids"]
    if len(tokenizer) != text.vocab_size or ids[0] != text.bos_token_id or ids[-1] != text.eos_token_id:
        raise ConfigurationError(
            f"the tokenizer ({len(tokenizer)} tokens) does not match the checkpoint's vocabulary of {text.vocab_size} "
            f"with {_BOS} and {_EOS} as its last two ids"
        )


def _write_preprocessor_config(directory: Path, resolution: int) -> None:
    # OpenAI's preprocessing: bicubic resize of the shortest edge, centre crop, their mean and std.
    config = {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": resolution}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": resolution, "width": resolution},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_convert_rgb": True,
        "do_normalize": True, "image_mean": _OPENAI_MEAN, "image_std": _OPENAI_STD,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def convert_openai_checkpoint(
    source: Path,
    out_dir: Path,
    *,
    tokenizer_dir: Path | None = None,
    bpe_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Convert an OpenAI CLIP `.pt` into a Hugging Face checkpoint directory `out_dir` and return it.

    The tokenizer comes from `tokenizer_dir` (a Hugging Face CLIP tokenizer directory) or is built from
    `bpe_path` (OpenAI's `bpe_simple_vocab_16e6.txt.gz`); one of them is needed. Written in a sibling
    temporary directory and renamed into place, so a failed conversion leaves nothing to load.
    """
    from transformers import CLIPModel

    from moderation.checkpoints import quiet_progress_bars

    say = progress or (lambda _line: None)
    source, out_dir = Path(source), Path(out_dir)
    if (tokenizer_dir is None) == (bpe_path is None):
        raise ConfigurationError(f"converting needs exactly one tokenizer source: a tokenizer directory or {BPE_FILE}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigurationError(f"{str(out_dir)!r} exists and is not an empty directory")
    state = read_state_dict(source)
    config = clip_config(state)
    unknown = sorted(set(state) - _used_keys(config))
    if unknown:  # a weight we would drop silently: a variant this converter does not know
        raise ConfigurationError(f"unexpected weights in {str(source)!r}: {', '.join(unknown[:5])}")
    vision = config.vision_config
    say(f"converting {source.name}: ViT {vision.num_hidden_layers} layers x {vision.hidden_size} wide, "
        f"patch {vision.patch_size}, {vision.image_size} px, embeddings of {config.projection_dim}")
    model = CLIPModel(config)
    model.load_state_dict(hf_state_dict(state, config), strict=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.converting-", dir=out_dir.parent))
    try:
        with quiet_progress_bars():
            model.save_pretrained(work)
        if tokenizer_dir is not None:
            _copy_tokenizer(Path(tokenizer_dir), work)
        else:
            assert bpe_path is not None
            write_bpe_tokenizer(Path(bpe_path), config.text_config.vocab_size, work,
                                config.text_config.max_position_embeddings)
        _check_tokenizer(work, config)
        _write_preprocessor_config(work, vision.image_size)
        # mkdtemp (and safetensors' writer) create owner-only files; a shared cache should be readable.
        work.chmod(0o755)
        for path in work.iterdir():
            path.chmod(0o644)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when the rename succeeded
    say(f"wrote {out_dir}")
    return out_dir


def default_converted_dir() -> Path:
    """Where `.pt` files loaded directly are converted to: ~/.cache/moderation/converted."""
    return Path.home() / ".cache" / "moderation" / "converted"


def find_bpe_vocabulary(source: Path) -> Path | None:
    """OpenAI's BPE vocabulary for a `.pt` loaded directly: beside it, else inside an installed `clip` or
    `open_clip` package (found, not imported: importing open_clip needs torchvision)."""
    beside = source.parent / BPE_FILE
    if beside.is_file():
        return beside
    for package in ("clip", "open_clip"):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / BPE_FILE
            if candidate.is_file():
                return candidate
    return None


def converted_checkpoint(source: Path, cache_dir: Path | None = None) -> Path:
    """The Hugging Face checkpoint for an OpenAI `.pt`, converted on first use into
    `cache_dir`/<sha256 of the file> (default ~/.cache/moderation/converted) and reused after."""
    from moderation.checkpoints import file_sha256

    source = Path(source)
    target = (cache_dir or default_converted_dir()) / file_sha256(source)
    if (target / "config.json").is_file():
        return target
    bpe = find_bpe_vocabulary(source)
    if bpe is None:
        raise ConfigurationError(
            f"{str(source)!r} is an OpenAI checkpoint without a tokenizer: put {BPE_FILE} beside it, or convert it "
            f"once with `moderation model convert {source} DIR --tokenizer HF_TOKENIZER_DIR` and load DIR"
        )
    try:
        # Seconds for ViT-B/32, tens of seconds for ViT-L/14: once per file and machine, so say so.
        return convert_openai_checkpoint(source, target, bpe_path=bpe, progress=log.info)
    except (ConfigurationError, OSError):
        if (target / "config.json").is_file():  # a concurrent load converted it first
            return target
        raise
