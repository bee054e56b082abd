"""ClipScorer on the offline test CLIP: real scores, cached policy text, and loading that never downloads."""

from __future__ import annotations

import io
import math
import socket
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _detect_agent
from PIL import Image

from moderation.exceptions import ConfigurationError, ModelNotFoundError
from moderation.policy import LoadedPolicy, parse_policy
from moderation.scorer import ClipScorer, ImageScore, pooled_embeddings
from moderation.testmodel import make_colour_image

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
    assert scorer.model_id == str(test_model_dir)
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
    assert hub_scorer.model_id == "local/tiny-clip"
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
