"""The offline test CLIP: a real Hugging Face checkpoint, cached, deterministic, and verified on build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from moderation import testmodel
from moderation.testmodel import (
    BUILDER_VERSION,
    MARKER_FILE,
    TEST_MODEL_COLOURS,
    ModelVerificationError,
    build_test_model,
    default_test_model_dir,
    make_colour_image,
)

EXPECTED_FILES = {
    "config.json",
    "model.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    MARKER_FILE,
}


def test_checkpoint_has_the_files_of_a_real_clip_checkout(test_model_dir: Path) -> None:
    assert EXPECTED_FILES <= {p.name for p in test_model_dir.iterdir()}
    marker = json.loads((test_model_dir / MARKER_FILE).read_text())
    assert marker["builder_version"] == BUILDER_VERSION
    assert marker["zero_shot_accuracy"] == 1.0


def test_loads_through_from_pretrained_like_a_hub_checkpoint(test_model_dir: Path) -> None:
    model = CLIPModel.from_pretrained(test_model_dir, local_files_only=True)
    assert model.config.vision_config.image_size == 32
    for processor_class in (CLIPImageProcessor, AutoImageProcessor):
        processor = processor_class.from_pretrained(test_model_dir, local_files_only=True)
        pixels = processor(images=[make_colour_image("red", (640, 480))], return_tensors="pt")["pixel_values"]
        assert pixels.shape == (1, 3, 32, 32)
    combined = CLIPProcessor.from_pretrained(test_model_dir, local_files_only=True)
    inputs = combined(
        text=["a red picture", "a blue picture"],
        images=[make_colour_image("red", (100, 80))],
        return_tensors="pt",
        padding=True,
    )
    with torch.inference_mode():
        logits = model(**inputs).logits_per_image
    assert logits.argmax().item() == 0


@pytest.mark.parametrize("tokenizer_class", [CLIPTokenizer, AutoTokenizer])
def test_tokenizer_round_trips_ids(test_model_dir: Path, tokenizer_class: type) -> None:
    tokenizer = tokenizer_class.from_pretrained(test_model_dir, local_files_only=True)
    vocab = json.loads((test_model_dir / "vocab.json").read_text(encoding="utf-8"))
    ids = tokenizer("a Red picture")["input_ids"]
    expected = ["<|startoftext|>", "a</w>", "r", "e", "d</w>", "p", "i", "c", "t", "u", "r", "e</w>"]
    assert ids == [vocab[t] for t in expected] + [vocab["<|endoftext|>"]]
    assert vocab["a</w>"] == 320  # the same id as in OpenAI's vocabulary: same byte ordering
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red picture"
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == vocab["<|endoftext|>"]


def test_second_build_reuses_the_cache(test_model_dir: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in test_model_dir.iterdir()}
    messages: list[str] = []
    assert build_test_model(test_model_dir, progress=messages.append) == test_model_dir
    assert messages == []  # returned before doing anything
    assert {p.name: p.stat().st_mtime_ns for p in test_model_dir.iterdir()} == before


@pytest.fixture
def untrained(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip training (the slow part) so build mechanics can be tested in about a second."""
    monkeypatch.setattr(testmodel, "_train", lambda model, directory, progress: None)


def test_build_replaces_an_incomplete_directory_atomically(
    tmp_path: Path, untrained: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(testmodel, "_zero_shot_accuracy", lambda directory: 1.0)
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a crashed build: files but no marker
    messages: list[str] = []
    assert build_test_model(out, progress=messages.append) == out
    assert EXPECTED_FILES <= {p.name for p in out.iterdir()}
    assert any("ready" in m for m in messages)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directories left behind
    # Fixed seeds: a second build gives the same weights, byte for byte.
    again = build_test_model(tmp_path / "again")
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()


def test_a_model_that_fails_verification_is_not_installed(tmp_path: Path, untrained: None) -> None:
    with pytest.raises(ModelVerificationError, match="zero-shot accuracy"):
        build_test_model(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_default_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODERATION_TEST_MODEL_DIR", str(tmp_path / "m"))
    assert default_test_model_dir() == tmp_path / "m"
    monkeypatch.delenv("MODERATION_TEST_MODEL_DIR")
    assert default_test_model_dir().name == f"test-clip-v{BUILDER_VERSION}"


def test_colour_images() -> None:
    assert {"red", "green", "blue", "yellow"} <= set(TEST_MODEL_COLOURS)
    image = make_colour_image("red", (640, 480), seed=3)
    assert image.mode == "RGB" and image.size == (640, 480)
    r, g, b = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
    assert r > 150 and g < 80 and b < 80
    assert image.tobytes() == make_colour_image("red", (640, 480), seed=3).tobytes()
    assert image.tobytes() != make_colour_image("red", (640, 480), seed=4).tobytes()
    with pytest.raises(ValueError, match="unknown colour"):
        make_colour_image("purple")
