"""A tiny CLIP that really tells colours apart, built offline, so tests and demos need no downloads.

The real scorer runs `openai/clip-vit-base-patch32`, which cannot be fetched on machines without a
network (CI, this sandbox). Instead of mocking the model we build a real checkpoint in Hugging Face
format - config, safetensors weights, CLIP tokenizer files, preprocessor config - and train it for a
few seconds on synthetic colour pictures with the captions "a <colour> picture". The scorer then loads
it through exactly the `from_pretrained` code path a real checkout takes, and tests can assert real
behaviour ("red images are flagged") instead of the behaviour of a stub.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn.functional import cross_entropy, normalize

from moderation.checkpoints import quiet_progress_bars
from moderation.clip_scorer import pooled_embeddings
from moderation.exceptions import ModerationError
from moderation.openai_clip import bytes_to_unicode

# Bump whenever the architecture, data or training changes: it names the cache directory, so an old
# build is never mistaken for a new one.
BUILDER_VERSION = 3
MARKER_FILE = "moderation-test-model.json"  # written last: its presence means the build is complete

_RGB: dict[str, tuple[int, int, int]] = {  # far enough apart to survive the noise and jitter below
    **{"red": (210, 35, 35), "green": (40, 165, 50), "blue": (40, 70, 205)},
    **{"yellow": (232, 212, 40), "white": (236, 236, 236), "black": (22, 22, 22)},
}
TEST_MODEL_COLOURS: tuple[str, ...] = tuple(_RGB)  # red, green, blue, yellow, white, black
_IMAGE_SIZE = 32  # CLIP-B/32 uses 224; 32 px is plenty for colours and keeps training to seconds
_SEED = 1234
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI's values, as in the real preprocessor config
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def default_test_model_dir() -> Path:
    """Where the test model is cached: `$MODERATION_TEST_MODEL_DIR`, else a versioned dir in ~/.cache."""
    env = os.environ.get("MODERATION_TEST_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "moderation" / f"test-clip-v{BUILDER_VERSION}"


def caption(colour: str) -> str:
    """The caption the model was trained with, and the prompt a policy should use for that colour."""
    return f"a {colour} picture"


def make_colour_image(colour: str, size: tuple[int, int] = (256, 256), seed: int = 0) -> Image.Image:
    """A noisy RGB picture dominated by `colour`, with a shape in a nearby shade; `size` is (width, height).

    This is the training distribution: the same function at other seeds and sizes gives fresh test images.
    """
    if colour not in _RGB:
        raise ValueError(f"unknown colour {colour!r}; choose from {', '.join(TEST_MODEL_COLOURS)}")
    width, height = size
    rng = np.random.default_rng([seed, TEST_MODEL_COLOURS.index(colour)])
    base = np.array(_RGB[colour], dtype=np.float32) + rng.uniform(-18, 18, 3)
    pixels = np.broadcast_to(base, (height, width, 3)).copy()
    # A rectangle or an ellipse in a slightly different shade, so the picture is not a flat fill.
    shade = base + rng.choice([-1.0, 1.0]) * rng.uniform(12, 30)
    x0, x1 = sorted(rng.uniform(0, width, 2))
    y0, y1 = sorted(rng.uniform(0, height, 2))
    ys, xs = np.ogrid[:height, :width]
    if rng.random() < 0.5:
        mask = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    else:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    pixels[mask] = shade
    pixels += rng.normal(0, rng.uniform(4, 16), (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _vocabulary() -> dict[str, int]:
    # Real CLIP's layout without merges: every byte character, then the same with "</w>" (end of word),
    # then the two special tokens last (so "eos has the highest id" holds, as in the real vocabulary).
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [_BOS, _EOS]
    return {token: i for i, token in enumerate(tokens)}


def _write_tokenizer_files(directory: Path) -> None:
    vocab = _vocabulary()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")  # character level
    special = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_preprocessor_config(directory: Path) -> None:
    # OpenAI's preprocessor_config.json, at 32 px: resize the shortest edge (bicubic), centre crop.
    config = {
        **{"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor"},
        **{"do_resize": True, "size": {"shortest_edge": _IMAGE_SIZE}, "resample": 3},
        **{"do_center_crop": True, "crop_size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}},
        **{"do_rescale": True, "rescale_factor": 1 / 255, "do_convert_rgb": True},
        **{"do_normalize": True, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD},
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _new_model(vocab: dict[str, int]) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel

    width = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {
        **width,
        "vocab_size": len(vocab),
        "max_position_embeddings": 77,
        "bos_token_id": vocab[_BOS],
        "eos_token_id": vocab[_EOS],  # not 2: pool at the first eos, as real checkpoints do since 2023
        "pad_token_id": vocab[_EOS],
    }
    vision = {**width, "image_size": _IMAGE_SIZE, "patch_size": 8}
    text["projection_dim"] = vision["projection_dim"] = 64  # unused by CLIPModel; keeps config.json consistent
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    return CLIPModel(config)


def _jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _images(count_per_colour: int, first_seed: int) -> tuple[list[Image.Image], torch.Tensor]:
    """Pictures of every colour at varied sizes and aspect ratios, half of them through JPEG."""
    rng = np.random.default_rng(first_seed)
    images, labels = [], []
    for label, colour in enumerate(TEST_MODEL_COLOURS):
        labels += [label] * count_per_colour
        for k in range(count_per_colour):
            short = int(rng.integers(24, 200))
            long = int(short * rng.uniform(1.0, 1.6))
            size = (long, short) if k % 2 else (short, long)
            image = make_colour_image(colour, size, seed=first_seed + k)
            if rng.random() < 0.5:
                image = _jpeg_round_trip(image, int(rng.integers(40, 95)))
            images.append(image)
    return images, torch.tensor(labels)


def _zero_shot_accuracy(directory: Path) -> float:
    """Reload the written checkpoint through from_pretrained and classify fresh images, as the scorer will."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(directory, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(directory, local_files_only=True)
    prompts = [caption(c) for c in TEST_MODEL_COLOURS]
    images, labels = [], []
    for label, colour in enumerate(TEST_MODEL_COLOURS):
        for k, size in enumerate([(64, 64), (224, 224), (640, 480), (97, 131), (300, 200)]):
            image = make_colour_image(colour, size, seed=90_000 + k)
            images += [image, _jpeg_round_trip(image, 75)]
            labels += [label, label]
    with torch.inference_mode():
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
        predicted = model(**inputs).logits_per_image.argmax(dim=-1)
    return float((predicted == torch.tensor(labels)).float().mean())


def _train(model: torch.nn.Module, directory: Path, progress: Callable[[str], None]) -> None:
    from transformers import AutoImageProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    # The Auto class picks the PIL backend silently when torchvision is missing (the CLIP class warns).
    processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
    prompts = [caption(c) for c in TEST_MODEL_COLOURS]
    text = tokenizer(prompts, padding=True, return_tensors="pt")

    images, labels = _images(count_per_colour=80, first_seed=_SEED)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    progress(f"training on {len(images)} synthetic images")

    generator = torch.Generator().manual_seed(_SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    max_logit_scale = math.log(100)  # CLIP's clamp
    model.train()
    for step in range(150):
        index = torch.randint(0, len(labels), (96,), generator=generator)
        batch = pixels[index]
        # Cheap robustness: brightness/contrast jitter and sensor noise on top of the real preprocessing.
        gain = 1 + 0.1 * torch.randn(len(index), 1, 1, 1, generator=generator)
        batch = batch * gain + 0.15 * torch.randn(batch.shape, generator=generator)
        image_emb = normalize(pooled_embeddings(model.get_image_features(pixel_values=batch)), dim=-1)
        text_emb = normalize(pooled_embeddings(model.get_text_features(**text)), dim=-1)
        logits = model.logit_scale.exp() * image_emb @ text_emb.T
        # Policies average prompts into a category (safe = blue + green). That works when each colour's
        # text embedding is near orthogonal to the others and an image lies close to its own caption
        # (cosine near 1, near 0 to the rest); cross-entropy alone leaves images anti-correlated with
        # the other captions, and a green picture then scored barely above "yellow" against "safe".
        off_diagonal = text_emb @ text_emb.T - torch.eye(len(prompts))
        own_caption = (image_emb * text_emb[labels[index]]).sum(dim=-1)
        loss = cross_entropy(logits, labels[index]) + off_diagonal.square().mean() + (1 - own_caption).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_logit_scale)
        if step % 50 == 0:
            progress(f"step {step}: loss {loss.item():.4f}")
    model.eval()


@contextmanager
def _one_thread() -> Iterator[None]:
    # The same bits whatever the core count, and no OpenMP spinning on a busy machine (with 2 threads a
    # build beside other jobs took 5x longer); a model this small gains nothing from more threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ModelVerificationError(ModerationError):
    """The freshly trained test model does not separate the colours; it is not written to the cache."""


def _is_complete(directory: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("builder_version") == BUILDER_VERSION


def build_test_model(
    out_dir: Path | None = None, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> Path:
    """Build (or reuse) the test CLIP checkpoint in `out_dir` and return that directory.

    The build happens in a temporary sibling directory and is renamed into place only after it has
    verified itself (100% zero-shot accuracy on fresh images), so a crash or a concurrent build never
    leaves a half-written model where the scorer would load it.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_test_model_dir()
    say = progress or (lambda _message: None)
    if not force and _is_complete(out_dir):
        return out_dir

    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        torch.manual_seed(_SEED)
        _write_tokenizer_files(work)
        _write_preprocessor_config(work)
        model = _new_model(_vocabulary())
        with _one_thread(), quiet_progress_bars():
            _train(model, work, say)
            model.save_pretrained(work)  # config.json + model.safetensors
            accuracy = _zero_shot_accuracy(work)
        say(f"zero-shot accuracy on fresh images: {accuracy:.1%}")
        if accuracy < 1.0:
            raise ModelVerificationError(f"test model reached only {accuracy:.1%} zero-shot accuracy")
        marker = {"builder_version": BUILDER_VERSION, "colours": list(TEST_MODEL_COLOURS)}
        marker |= {"zero_shot_accuracy": accuracy, "build_seconds": round(time.perf_counter() - started, 2)}
        (work / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        _move_into_place(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when the rename succeeded
    say(f"test model ready in {out_dir} ({time.perf_counter() - started:.1f} s)")
    return out_dir


def _move_into_place(work: Path, out_dir: Path) -> None:
    # mkdtemp (and safetensors' writer) create owner-only files; a shared cache should be readable.
    work.chmod(0o755)
    for path in work.iterdir():
        path.chmod(0o644)
    # An old or incomplete build is moved aside first (rename is atomic, rmtree is not).
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        try:
            out_dir.rename(old / "model")
        except FileNotFoundError:
            pass  # a concurrent build moved it first
        shutil.rmtree(old, ignore_errors=True)
    try:
        work.rename(out_dir)
    except OSError:
        # A concurrent build finished first; its complete model is as good as ours.
        if not _is_complete(out_dir):
            raise
