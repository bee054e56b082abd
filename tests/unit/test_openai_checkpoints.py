"""OpenAI's `.pt` CLIP checkpoints: converted weights embed exactly as OpenAI's own forward does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from consumers import cli
from moderation.checkpoints import checkpoint_id, resolve_checkpoint
from moderation.clip_scorer import ClipScorer
from moderation.exceptions import ConfigurationError
from moderation.openai_clip import convert_openai_checkpoint, read_state_dict
from moderation.preprocess import to_pixels
from moderation.testmodel import make_colour_image
from tests.support import openai_reference as ref

# OpenAI's checkpoints are TorchScript archives, which torch 2.13 deprecates: the test writes one all the same.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]*` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def openai_model() -> ref.OpenAIClip:
    torch.manual_seed(7)
    return ref.OpenAIClip().eval()


@pytest.fixture(scope="module")
def files(openai_model: ref.OpenAIClip, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model as a TorchScript archive (what clip.load caches), as a plain state dict, and a BPE file."""
    root = tmp_path_factory.mktemp("openai")
    torch.jit.save(torch.jit.script(openai_model), str(root / "ViT-T-8.pt"))
    torch.save(openai_model.state_dict(), root / "state-dict.pt")
    return {"jit": root / "ViT-T-8.pt", "plain": root / "state-dict.pt", "bpe": ref.write_bpe_file(root / "bpe.txt.gz")}


@pytest.fixture(scope="module")
def converted(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> ClipScorer:
    out = convert_openai_checkpoint(files["jit"], tmp_path_factory.mktemp("hf") / "clip", bpe_path=files["bpe"])
    return ClipScorer.load(str(out), device="cpu")


def test_the_archive_is_torchscript_with_openai_names(files: dict[str, Path]) -> None:
    keys = torch.jit.load(str(files["jit"])).state_dict().keys()
    assert {"visual.transformer.resblocks.1.attn.in_proj_weight", "visual.proj", "ln_final.weight"} <= set(keys)
    assert set(read_state_dict(files["jit"])) == set(read_state_dict(files["plain"]))


def test_converted_image_embeddings_equal_openai_forward(converted: ClipScorer, openai_model: ref.OpenAIClip) -> None:
    images = [make_colour_image(colour, (70, 50), seed=3) for colour in ("red", "blue", "white")]
    pixels = np.stack([to_pixels(image, converted.preprocess_spec) for image in images])
    with torch.inference_mode():
        expected = openai_model(torch.from_numpy(pixels))
    expected = expected / expected.norm(dim=-1, keepdim=True)
    got = converted.pixel_embeddings(pixels)
    assert got.shape == (3, ref.EMBED) and converted.embedding_dim == ref.EMBED
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    assert converted.family == "clip"


def test_converted_text_embeddings_equal_openai_forward(converted: ClipScorer, openai_model: ref.OpenAIClip) -> None:
    prompts = ["a photo", "the red cat", "a photo in the photo"]
    ids = [ref.openai_token_ids(p) for p in prompts]
    tokens = converted.tokenize(prompts)["input_ids"]
    for row, expected_ids in zip(tokens.tolist(), ids, strict=True):
        assert row[: len(expected_ids)] == expected_ids  # the BPE vocabulary built from the .gz gives OpenAI's ids
    width = max(map(len, ids))
    padded = torch.tensor([i + [0] * (width - len(i)) for i in ids])  # OpenAI pads with zeros
    with torch.inference_mode():
        expected = openai_model.encode_text(padded)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(converted.text_embeddings(prompts), expected, atol=2e-5, rtol=0)
    assert converted.max_text_length == ref.CONTEXT


def test_a_plain_state_dict_converts_to_the_same_checkpoint(
    files: dict[str, Path], converted: ClipScorer, tmp_path: Path
) -> None:
    out = convert_openai_checkpoint(files["plain"], tmp_path / "plain", bpe_path=files["bpe"])
    assert checkpoint_id(out) == converted.model_id


def test_loading_a_pt_converts_it_once_into_the_cache(
    files: dict[str, Path], converted: ClipScorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    source = tmp_path / "models" / "ViT-T-8.pt"
    source.parent.mkdir()
    source.write_bytes(files["jit"].read_bytes())
    with pytest.raises(ConfigurationError, match="bpe_simple_vocab_16e6.txt.gz beside it"):
        ClipScorer.load(str(source), device="cpu")
    (source.parent / "bpe_simple_vocab_16e6.txt.gz").write_bytes(files["bpe"].read_bytes())
    scorer = ClipScorer.load(str(source), device="cpu")
    cached = list((tmp_path / ".cache" / "moderation" / "converted").iterdir())
    assert len(cached) == 1 and len(cached[0].name) == 64  # the .pt's sha256
    assert resolve_checkpoint(str(source)) == cached[0]
    assert scorer.model_id == converted.model_id  # the same weights: the same stored rows
    assert scorer.model_name == str(source)
    mtime = (cached[0] / "model.safetensors").stat().st_mtime_ns
    ClipScorer.load(str(source), device="cpu")
    assert (cached[0] / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not converted again


def test_resnet_checkpoints_are_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    state = read_state_dict(files["plain"])
    state["visual.layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "RN50.pt")
    with pytest.raises(ConfigurationError, match="ResNet CLIP"):
        convert_openai_checkpoint(tmp_path / "RN50.pt", tmp_path / "out", bpe_path=files["bpe"])
    assert not (tmp_path / "out").exists()


def test_a_bpe_file_too_short_for_the_vocabulary_is_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    import gzip

    with gzip.open(tmp_path / "short.txt.gz", "wt") as handle:
        handle.write("header\nt h\n")
    with pytest.raises(ConfigurationError, match="has 1 merges"):
        convert_openai_checkpoint(files["plain"], tmp_path / "out", bpe_path=tmp_path / "short.txt.gz")
    assert list(tmp_path.iterdir()) == [tmp_path / "short.txt.gz"]  # no half-written checkpoint left


def test_convert_command(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "converted"
    assert cli.main(["model", "convert", str(files["jit"]), str(out), "--bpe", str(files["bpe"])]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "converting ViT-T-8.pt: ViT 2 layers x 64 wide, patch 8, 32 px" in captured.err
    assert (out / "config.json").is_file() and (out / "vocab.json").is_file()
    # A HF tokenizer directory is the other source: the one just written will do.
    again = tmp_path / "again"
    assert cli.main(["model", "convert", str(files["plain"]), str(again), "--tokenizer", str(out)]) == 0
    assert checkpoint_id(again) == checkpoint_id(out)


@pytest.mark.parametrize(
    ("make_args", "status", "message"),
    [
        (lambda d, f: [str(d / "missing.pt"), str(d / "o"), "--bpe", str(f["bpe"])], 2, "no such file"),
        (lambda d, f: [str(f["bpe"]), str(d / "o"), "--bpe", str(f["bpe"])], 1, "neither a TorchScript archive"),
        (lambda d, f: [str(f["jit"]), str(d / "o")], 2, "give --tokenizer DIR"),
        (lambda d, f: [str(f["jit"]), str(d), "--bpe", str(f["bpe"])], 1, "not an empty directory"),
    ],
)
def test_convert_command_errors_are_one_line(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    make_args: object, status: int, message: str,
) -> None:
    (tmp_path / "occupied").touch()
    args = make_args(tmp_path, files)  # type: ignore[operator]
    assert cli.main(["model", "convert", *args]) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
