"""Every model family through the same scorer: tiny random SigLIP and SigLIP 2 checkpoints built offline."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moderation.checkpoints import load_parts
from moderation.clip_scorer import ClipScorer, pooled_embeddings
from moderation.exceptions import ConfigurationError
from moderation.images import load_bytes
from moderation.policy import LoadedPolicy, parse_policy
from moderation.preprocess import PreprocessSpec, to_pixels
from moderation.settings import ImageSettings
from moderation.testmodel import make_colour_image
from moderation.testmodels_families import LOGIT_BIAS, LOGIT_SCALE, TEXT_LENGTH, WIDTH, build_family_test_model
from tests.support.images import photo

SIGMOID = parse_policy(
    'version: "s1"\nscoring: sigmoid\ncategories:\n'
    "  red: {prompts: ['a red picture', 'crimson paint'], threshold: 0.5, action: review}\n"
    "  blue: {prompts: ['a blue picture'], threshold: 0.6, action: block}\n"
    "  green: {prompts: ['a green picture', 'grass', 'leaves'], threshold: 0.7, action: escalate}\n"
)
SOFTMAX = parse_policy(
    'version: "m1"\ncategories:\n'
    "  safe: {prompts: ['a blue picture', 'a green picture']}\n"
    "  red: {prompts: ['a red picture'], threshold: 0.5, action: review}\n"
)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_family_test_model("siglip", tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def siglip(siglip_dir: Path) -> ClipScorer:
    return ClipScorer.load(str(siglip_dir), device="cpu")


def pictures() -> list[Image.Image]:
    sizes = [(64, 64), (97, 131), (300, 200)]
    return [make_colour_image(c, size, seed=40 + i) for i, size in enumerate(sizes) for c in ("red", "blue")]


def test_a_siglip_checkpoint_loads_as_siglip(siglip: ClipScorer) -> None:
    assert siglip.family == "siglip"
    assert type(siglip.model).__name__ == "SiglipModel"
    assert siglip.embedding_dim == WIDTH
    assert siglip.max_text_length == TEXT_LENGTH
    # SigLIP's processor squashes to a square: reproduced as a resize to exactly 32x32 and a whole-picture crop.
    assert (siglip.preprocess_spec.resize_to, siglip.preprocess_spec.crop_size) == ((32, 32), (32, 32))
    assert siglip.preprocess_spec.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("size", [(500, 300), (300, 500), (224, 224), (97, 131)])
def test_the_fast_preprocessing_reproduces_siglips_processor(size: tuple[int, int]) -> None:
    """google/siglip-base-patch16-224's processor settings: 224x224 bicubic squash, mean and std 0.5."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    processor = SiglipImageProcessorPil(size={"height": 224, "width": 224}, resample=3)
    spec = PreprocessSpec.from_processor(processor)
    assert (spec.resize_to, spec.crop_size, spec.mean, spec.std) == ((224, 224), (224, 224), (0.5,) * 3, (0.5,) * 3)
    image = photo(size, seed=sum(size))
    reference = processor(images=[image], return_tensors="np")["pixel_values"][0]
    grey_levels = np.abs(to_pixels(image, spec) - reference) * 255 * 0.5
    assert grey_levels.max() <= 1.01 and grey_levels.mean() < 0.1


def test_siglip_text_is_padded_to_its_full_length_without_a_mask(siglip: ClipScorer) -> None:
    tokens = siglip.tokenize(["a red picture", "ab"])
    assert set(tokens) == {"input_ids"}
    assert tokens["input_ids"].shape == (2, TEXT_LENGTH)
    assert tokens["input_ids"][1, 3:].eq(0).all()  # "a", "b", "</s>", then <pad> to the end


def test_siglip_embeddings_are_normalised_and_as_wide_as_the_model(siglip: ClipScorer) -> None:
    images = pictures()
    pixels = [to_pixels(image, siglip.preprocess_spec) for image in images]
    fast = siglip.pixel_embeddings(pixels)
    reference = siglip.image_embeddings(images)
    assert fast.shape == reference.shape == (len(images), WIDTH)
    torch.testing.assert_close(fast.norm(dim=-1), torch.ones(len(images)))
    assert (fast * reference).sum(dim=-1).min() > 0.999  # the fast preprocessing matches SigLIP's processor
    assert siglip.pixel_embeddings([]).shape == (0, WIDTH)
    assert siglip.text_embeddings(["a red picture"]).shape == (1, WIDTH)


def test_the_workers_path_scores_siglip_as_the_reference_does(siglip: ClipScorer) -> None:
    """JPEG bytes through the loaders' decode (with its draft) and preprocessing, then `score_pixels`."""
    images = pictures()
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    pixels = [load_bytes(data, ImageSettings(), siglip.preprocess_spec).pixels for data in encoded]
    live = siglip.score_pixels(pixels, SIGMOID)
    reference = siglip.score([Image.open(io.BytesIO(data)).convert("RGB") for data in encoded], SIGMOID)
    for got, expected in zip(live, reference, strict=True):
        assert got.best_prompt == expected.best_prompt
        for name, value in expected.probabilities.items():
            assert got.probabilities[name] == pytest.approx(value, abs=0.01)


def test_sigmoid_scores_are_siglips_own_probabilities(siglip: ClipScorer, siglip_dir: Path) -> None:
    """Per category, the max over its prompts of SigLIP's sigmoid(logits_per_image), from the model's own forward."""
    images = pictures()
    model, tokenizer, processor = load_parts(str(siglip_dir))
    prompts = [p for category in SIGMOID.policy.categories.values() for p in category.prompts]
    text = tokenizer(prompts, padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        logits = model(input_ids=text["input_ids"], **processor(images=images, return_tensors="pt")).logits_per_image
    probabilities = torch.sigmoid(logits)  # [images, prompts]
    red, blue, green = probabilities[:, 0:2].amax(dim=1), probabilities[:, 2], probabilities[:, 3:6].amax(dim=1)
    expected = torch.stack([red, blue, green], dim=1)
    scores = siglip.score(images, SIGMOID)
    got = torch.tensor([[s.probabilities[name] for name in ("red", "blue", "green")] for s in scores])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, got.mean())  # not a constant: the bias and scale really apply
    text_side = siglip.policy_text(SIGMOID)
    assert text_side.logit_bias == pytest.approx(LOGIT_BIAS)
    assert text_side.logit_scale == pytest.approx(np.exp(LOGIT_SCALE), rel=1e-6)


def test_sigmoid_scores_by_hand_from_the_embeddings(siglip: ClipScorer) -> None:
    images = pictures()
    image = siglip.image_embeddings(images)
    prompts = siglip.text_embeddings(["a red picture", "crimson paint"])
    by_hand = torch.sigmoid(np.exp(LOGIT_SCALE) * (image @ prompts.T).amax(dim=1) + LOGIT_BIAS)
    got = torch.tensor([s.probabilities["red"] for s in siglip.score_embeddings(image, SIGMOID)])
    torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=0)


def test_a_softmax_policy_on_siglip(siglip: ClipScorer, siglip_dir: Path) -> None:
    images = pictures()
    image = siglip.image_embeddings(images)
    safe = siglip.text_embeddings(["a blue picture", "a green picture"]).mean(dim=0)
    categories = torch.stack([safe / safe.norm(), siglip.text_embeddings(["a red picture"])[0]])
    expected = (np.exp(LOGIT_SCALE) * image @ categories.T).softmax(dim=-1)  # no bias: it cancels in a softmax
    scores = siglip.score(images, SOFTMAX)
    got = torch.tensor([[s.probabilities["safe"], s.probabilities["red"]] for s in scores])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(len(images)))


def test_int8_cpu_mode_quantises_siglips_vision_tower(siglip: ClipScorer, siglip_dir: Path) -> None:
    int8 = ClipScorer.load(str(siglip_dir), device="cpu", cpu_mode="int8")
    assert int8.precision == "int8"
    # Every Linear of the encoder and of the pooling head's MLP; the head's attention keeps its fp32
    # out_proj (torch marks it non-quantisable), and the text tower stays exact fp32.
    linears = sum(1 for m in siglip.model.vision_model.modules() if type(m) is torch.nn.Linear)
    assert quantised(int8.model.vision_model) == linears == 2 * 6 + 2
    assert quantised(int8.model.text_model) == 0
    images = pictures()
    close = (int8.image_embeddings(images) * siglip.image_embeddings(images)).sum(dim=-1)
    assert close.min() > 0.98
    assert len(int8.score(images, SIGMOID)) == len(images)


def quantised(module: torch.nn.Module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear))


def test_sigmoid_on_clip_has_no_bias(scorer: ClipScorer, test_policy: LoadedPolicy) -> None:
    policy = parse_policy(test_policy.text.replace("version:", "scoring: sigmoid\nversion:", 1))
    images = [make_colour_image(c, (80, 60), seed=9) for c in ("red", "yellow", "blue")]
    embeddings = scorer.image_embeddings(images)
    prompt = scorer.text_embeddings(["a red picture"])
    scale = float(scorer.model.logit_scale.detach().exp())
    expected = torch.sigmoid(scale * (embeddings @ prompt.T)[:, 0])
    assert scorer.policy_text(policy).logit_bias == 0.0
    got = torch.tensor([s.probabilities["red"] for s in scorer.score(images, policy)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got[0] > 0.9 > got[2]  # the trained test model: red reads as red, blue does not


def test_a_sigmoid_policy_needs_no_safe_category() -> None:
    assert SIGMOID.policy.scoring == "sigmoid"
    assert all(c.unsafe for c in SIGMOID.policy.categories.values())


def test_siglip2_naflex_loads_as_siglip2_but_is_refused_by_the_scorer(tmp_path: Path) -> None:
    directory = build_family_test_model("siglip2", tmp_path / "siglip2")
    model, tokenizer, _processor = load_parts(str(directory))
    assert type(model).__name__ == "Siglip2Model"
    assert type(tokenizer).__name__ == "Siglip2Tokenizer"
    with torch.inference_mode():  # the text side works as for SigLIP
        ids = tokenizer(["a red picture"], padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt")
        assert pooled_embeddings(model.get_text_features(**ids)).shape == (1, WIDTH)
    with pytest.raises(ConfigurationError, match="NaFlex preprocessing .* not supported.*fixed-resolution"):
        ClipScorer.load(str(directory), device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed")
def test_a_sentencepiece_tokenizer_without_sentencepiece_is_one_clear_line(siglip_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        shutil.copyfile(siglip_dir / name, tmp_path / name)
    # What a real SigLIP checkpoint ships: SiglipTokenizer over a sentencepiece model.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SiglipTokenizer"}))
    (tmp_path / "spiece.model").write_bytes(b"")
    with pytest.raises(ConfigurationError) as raised:
        ClipScorer.load(str(tmp_path), device="cpu")
    assert "needs the sentencepiece package" in str(raised.value) and "\n" not in str(raised.value)


def test_an_unsupported_model_type_is_named(siglip_dir: Path, tmp_path: Path) -> None:
    config = json.loads((siglip_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "blip"}))
    with pytest.raises(ConfigurationError, match=r"model_type 'blip'.*supported: clip, siglip, siglip2"):
        ClipScorer.load(str(tmp_path), device="cpu")
