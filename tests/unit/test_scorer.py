"""ClipScorer on the offline test CLIP: real scores, cached policy text, and loading that never downloads."""

from __future__ import annotations

import io
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _detect_agent
from PIL import Image

from moderation.checkpoints import checkpoint_id
from moderation.clip_scorer import ClipScorer, ImageScore, pooled_embeddings
from moderation.decision import decide
from moderation.exceptions import ConfigurationError, ModelNotFoundError
from moderation.images import load_bytes
from moderation.policy import LoadedPolicy, parse_policy
from moderation.preprocess import to_pixels
from moderation.settings import ImageSettings, ModelSettings
from moderation.testmodel import TEST_MODEL_COLOURS, make_colour_image

SIZES = [(64, 64), (224, 224), (640, 480), (97, 131)]


def round_trip(image: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def images_of(colour: str) -> list[Image.Image]:
    """Fresh pictures (seeds the build never used), through JPEG and PNG, at several sizes."""
    return [
        round_trip(make_colour_image(colour, size, seed=500 + i), fmt)
        for i, size in enumerate(SIZES)
        for fmt in ("JPEG", "PNG")
    ]


def policy_variant(version: str, extra_prompt: str | None = None) -> LoadedPolicy:
    safe = ["a blue picture", "a green picture"] + ([extra_prompt] if extra_prompt else [])
    return parse_policy(
        f"version: {version!r}\n"
        "categories:\n"
        f"  safe: {{prompts: {safe!r}}}\n"
        "  red: {prompts: ['a red picture'], threshold: 0.5, action: review}\n"
    )


@pytest.mark.parametrize("colour", ["red", "yellow"])
def test_flagged_colours_score_above_their_threshold(
    scorer: ClipScorer, test_policy: LoadedPolicy, colour: str
) -> None:
    threshold = test_policy.policy.categories[colour].threshold
    for score in scorer.score(images_of(colour), test_policy):
        assert score.probabilities[colour] >= max(threshold, 0.9)
        assert max(score.probabilities, key=score.probabilities.__getitem__) == colour
        assert score.best_prompt == f"a {colour} picture"


@pytest.mark.parametrize("colour", ["blue", "green"])
def test_safe_colours_are_not_flagged(scorer: ClipScorer, test_policy: LoadedPolicy, colour: str) -> None:
    for score in scorer.score(images_of(colour), test_policy):
        for name, category in test_policy.policy.unsafe_categories.items():
            assert score.probabilities[name] < category.threshold
        assert score.probabilities["safe"] > 0.9
        assert score.best_prompt == f"a {colour} picture"
        assert 0.0 < score.best_prompt_similarity <= 1.0


def test_scores_are_distributions_in_policy_order_and_batch_order(
    scorer: ClipScorer, test_policy: LoadedPolicy
) -> None:
    colours = ["yellow", "blue", "red", "green"]
    scores = scorer.score([make_colour_image(c, (120, 90), seed=9) for c in colours], test_policy)
    assert all(isinstance(s, ImageScore) for s in scores)
    assert [s.best_prompt for s in scores] == [f"a {c} picture" for c in colours]
    for score in scores:
        assert list(score.probabilities) == ["safe", "red", "yellow"]
        assert math.isclose(sum(score.probabilities.values()), 1.0, abs_tol=1e-5)


def test_empty_batch(scorer: ClipScorer, test_policy: LoadedPolicy) -> None:
    assert scorer.score([], test_policy) == []
    assert scorer.image_embeddings([]).shape == (0, 64)


def test_image_embeddings_are_normalised_float32_on_cpu(scorer: ClipScorer) -> None:
    embeddings = scorer.image_embeddings([make_colour_image("red"), make_colour_image("blue")])
    assert embeddings.shape == (2, 64)
    assert embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_policy_embeddings_are_normalised_means_and_cached(scorer: ClipScorer, test_policy: LoadedPolicy) -> None:
    embeddings = scorer.policy_embeddings(test_policy)
    assert embeddings.shape == (3, 64)
    assert scorer.policy_embeddings(test_policy) is embeddings
    # `safe` is the normalised mean of its prompts' normalised embeddings.
    with torch.inference_mode():
        output = scorer.model.get_text_features(**scorer.tokenize(test_policy.policy.categories["safe"].prompts))
    prompts = pooled_embeddings(output)
    mean = torch.nn.functional.normalize(prompts, dim=-1).mean(dim=0)
    assert torch.allclose(embeddings[0], mean / mean.norm(), atol=1e-5)
    other = scorer.policy_embeddings(policy_variant("another"))
    assert other is not embeddings and other.shape == (2, 64)


def test_policy_cache_is_bounded(scorer: ClipScorer) -> None:
    first = policy_variant("bounded-0")
    embeddings = scorer.policy_embeddings(first)
    for i in range(1, 9):
        scorer.policy_embeddings(policy_variant(f"bounded-{i}"))
    assert scorer.policy_embeddings(first) is not embeddings  # evicted, computed again
    assert torch.equal(scorer.policy_embeddings(first), embeddings)


def test_prompts_are_padded_to_the_longest_not_to_77(scorer: ClipScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    shapes: list[tuple[int, ...]] = []
    original = scorer.model.get_text_features

    def spy(**kwargs: torch.Tensor) -> object:
        shapes.append(tuple(kwargs["input_ids"].shape))
        return original(**kwargs)

    monkeypatch.setattr(scorer.model, "get_text_features", spy)
    long_prompt = "a blue picture of a calm and very peaceful lake"
    scorer.policy_embeddings(policy_variant("padding", long_prompt))
    longest = len(scorer.tokenize([long_prompt])["input_ids"][0])  # every character is a token here
    assert shapes == [(4, longest)] and longest < 77
    assert scorer.tokenize(["a " * 200])["input_ids"].shape == (1, 77)  # truncated to the model


def test_scorer_attributes(scorer: ClipScorer, test_model_dir: Path) -> None:
    assert scorer.model_id == checkpoint_id(test_model_dir)
    assert scorer.model_name == str(test_model_dir)
    assert scorer.device == torch.device("cpu") and scorer.dtype == torch.float32
    assert not scorer.model.training
    assert scorer.model.config._attn_implementation == "sdpa"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every attempt to resolve a host or open a connection."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import, so too late to matter: belt and braces
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    # huggingface_hub 2.x fetches an "agent harness" registry once per process when it builds request
    # headers; forget any copy fetched earlier, so a code path that would fetch it is caught here.
    monkeypatch.setattr(_detect_agent, "_registry", None, raising=False)
    return attempts


@pytest.fixture
def no_network_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face hub cache, so tests never depend on what this machine has downloaded."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_unknown_hub_id_is_not_found_without_network(no_network: list[str], no_network_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        ClipScorer.load("definitely/not-a-model", device="cpu")
    message = str(caught.value)
    assert "definitely/not-a-model" in message
    assert "download definitely/not-a-model" in message
    assert "moderation test-model build" in message
    assert str(no_network_cache) in message  # names the cache directory it looked in
    assert no_network == []


def test_hub_id_resolves_from_the_local_cache_without_network(
    no_network: list[str], no_network_cache: Path, test_model_dir: Path, test_policy: LoadedPolicy
) -> None:
    # The layout huggingface_hub writes: refs/main names a snapshot holding the files.
    repo = no_network_cache / "models--local--tiny-clip"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for path in test_model_dir.iterdir():
        (snapshot / path.name).symlink_to(path)
    hub_scorer = ClipScorer.load("local/tiny-clip", device="cpu")
    assert hub_scorer.model_id == checkpoint_id(test_model_dir)
    assert hub_scorer.model_name == "local/tiny-clip"
    [score] = hub_scorer.score([make_colour_image("red")], test_policy)
    assert score.best_prompt == "a red picture"
    assert no_network == []


def test_missing_directory_is_not_found(no_network: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no such directory") as caught:
        ClipScorer.load(str(missing))
    assert str(missing) in str(caught.value)
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        ClipScorer.load(str(tmp_path))
    assert no_network == []


def test_bad_devices(test_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown device"):
        ClipScorer.load(str(test_model_dir), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="CUDA is not available"):
            ClipScorer.load(str(test_model_dir), device="cuda")


# --- the fast path: preprocessed pixels -------------------------------------------------------------


def fast_pixels(scorer: ClipScorer, images: list[Image.Image]) -> list[np.ndarray]:
    return [to_pixels(image, scorer.preprocess_spec) for image in images]


@pytest.mark.parametrize("colour", ["red", "yellow", "blue", "green"])
def test_score_pixels_agrees_with_score(scorer: ClipScorer, test_policy: LoadedPolicy, colour: str) -> None:
    images = images_of(colour)
    reference = scorer.score(images, test_policy)
    fast = scorer.score_pixels(fast_pixels(scorer, images), test_policy)
    assert len(fast) == len(reference)
    for got, want in zip(fast, reference, strict=True):
        assert list(got.probabilities) == list(want.probabilities)
        for name, probability in want.probabilities.items():
            assert got.probabilities[name] == pytest.approx(probability, abs=2e-3)
        assert got.best_prompt == want.best_prompt
        assert got.best_prompt_similarity == pytest.approx(want.best_prompt_similarity, abs=2e-3)


def test_score_pixels_takes_a_list_an_array_or_a_tensor(scorer: ClipScorer, test_policy: LoadedPolicy) -> None:
    pixels = fast_pixels(scorer, [make_colour_image(c, (90, 120), seed=3) for c in ("red", "blue", "yellow")])
    as_list = scorer.score_pixels(pixels, test_policy)
    as_array = scorer.score_pixels(np.stack(pixels), test_policy)
    as_tensor = scorer.score_pixels(torch.from_numpy(np.stack(pixels)), test_policy)
    assert [s.best_prompt for s in as_list] == ["a red picture", "a blue picture", "a yellow picture"]
    for a, b, c in zip(as_list, as_array, as_tensor, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities) == c.probabilities


def test_score_pixels_empty_and_malformed(scorer: ClipScorer, test_policy: LoadedPolicy) -> None:
    assert scorer.score_pixels([], test_policy) == []
    assert scorer.pixel_embeddings([]).shape == (0, 64)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        scorer.score_pixels(np.zeros((2, 32, 32), dtype=np.float32), test_policy)
    with pytest.raises(ValueError):  # arrays of different sizes cannot be one batch
        scorer.score_pixels([np.zeros((3, 32, 32), np.float32), np.zeros((3, 16, 16), np.float32)], test_policy)


def test_pixel_embeddings_are_normalised_float32_on_cpu(scorer: ClipScorer) -> None:
    embeddings = scorer.pixel_embeddings(fast_pixels(scorer, [make_colour_image("red"), make_colour_image("blue")]))
    assert embeddings.shape == (2, 64) and embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_a_processor_the_fast_path_cannot_reproduce_is_refused_at_load(test_model_dir: Path, tmp_path: Path) -> None:
    for path in test_model_dir.iterdir():
        if path.name != "preprocessor_config.json":
            (tmp_path / path.name).symlink_to(path)
    config = json.loads((test_model_dir / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "do_center_crop": False}))
    with pytest.raises(ConfigurationError, match="do_center_crop is off"):
        ClipScorer.load(str(tmp_path), device="cpu")


# --- int8 on CPU ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_scorer(test_model_dir: Path) -> ClipScorer:
    return ClipScorer.load(str(test_model_dir), device="cpu", cpu_mode="int8")


def quantised(module: torch.nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(1 for m in module.modules() if isinstance(m, DynamicQuantizedLinear))


def test_int8_quantises_the_image_tower_only(int8_scorer: ClipScorer, scorer: ClipScorer) -> None:
    assert int8_scorer.precision == "int8" and scorer.precision == "fp32"
    linears = sum(1 for m in scorer.model.vision_model.modules() if isinstance(m, torch.nn.Linear))
    assert quantised(int8_scorer.model.vision_model) == linears > 0
    assert quantised(int8_scorer.model.visual_projection) == 1
    assert quantised(int8_scorer.model.text_model) == 0  # policy text stays exact fp32
    assert quantised(scorer.model) == 0


def int8_corpus(count: int = 240) -> list[bytes]:
    """Colour pictures of every test colour at varied sizes and aspect ratios, half JPEG, half PNG."""
    rng = np.random.default_rng(2024)
    files = []
    for i in range(count):
        colour = TEST_MODEL_COLOURS[i % len(TEST_MODEL_COLOURS)]
        size = (int(rng.integers(24, 640)), int(rng.integers(24, 640)))
        image = make_colour_image(colour, size, seed=7_000 + i)
        buffer = io.BytesIO()
        if i % 2:
            image.save(buffer, "JPEG", quality=int(rng.integers(50, 95)))
        else:
            image.save(buffer, "PNG")
        files.append(buffer.getvalue())
    return files


def test_int8_gives_the_same_verdicts_as_fp32(
    int8_scorer: ClipScorer, scorer: ClipScorer, test_policy: LoadedPolicy
) -> None:
    files = int8_corpus()
    pixels = [load_bytes(data, ImageSettings(), scorer.preprocess_spec).pixels for data in files]
    decisions = {}
    for name, model in (("fp32", scorer), ("int8", int8_scorer)):
        batches = [pixels[start : start + 32] for start in range(0, len(pixels), 32)]
        scores = [score for batch in batches for score in model.score_pixels(batch, test_policy)]
        decisions[name] = [
            (d.flagged, d.top_category, d.action)
            for d in (decide(s.probabilities, test_policy.policy) for s in scores)
        ]
    agreement = np.mean([a == b for a, b in zip(decisions["fp32"], decisions["int8"], strict=True)])
    cosines = (scorer.pixel_embeddings(pixels) * int8_scorer.pixel_embeddings(pixels)).sum(dim=-1)
    print(
        f"\nint8 vs fp32 on {len(files)} images: verdict agreement {agreement:.1%}, "
        f"embedding cosine mean {cosines.mean().item():.5f} min {cosines.min().item():.5f}"
    )
    assert agreement >= 0.99
    assert cosines.min().item() > 0.95


def test_cpu_mode_is_validated(test_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown cpu_mode"):
        ClipScorer.load(str(test_model_dir), device="cpu", cpu_mode="int4")  # type: ignore[arg-type]


def test_load_from_the_model_settings(test_model_dir: Path) -> None:
    settings = ModelSettings(name_or_path=str(test_model_dir), device="cpu", cpu_mode="int8", compile=False)
    loaded = ClipScorer.from_settings(settings)
    assert (loaded.model_name, loaded.precision, loaded.compiled, loaded.gpu_decode) == (
        str(test_model_dir), "int8", False, False
    )
    assert ClipScorer.from_settings(settings, name_or_path=str(test_model_dir)).device == torch.device("cpu")
