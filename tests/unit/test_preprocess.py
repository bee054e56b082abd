"""moderation/preprocess.py: the fast path must give the model what the Hugging Face processor gives it.

The reference is `processor(images=decode_image(data))`: full decode, the checkpoint's own image
processor. The fast path is `load_bytes(data, limits, spec).pixels`: JPEG draft, one resize with a crop
box, fused normalisation. They are compared on raw pixels and on embeddings, with the test model
(32 px input) and with a seeded random-init ViT-B/32 image tower at the real 224 px configuration.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from moderation.clip_scorer import ClipScorer
from moderation.exceptions import ConfigurationError
from moderation.images import decode_image, load_bytes
from moderation.preprocess import PreprocessSpec, draft_size, to_pixels
from moderation.settings import ImageSettings
from tests.support.clip_reference import CLIP_MEAN, CLIP_STD, GREY_LEVEL, real_style_processor
from tests.support.images import photo

# OpenAI's preprocessor_config.json for clip-vit-base-patch32, as the hub serves it (old-style keys).
OPENAI_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "resample": 3,
    "size": 224,
}
LIMITS = ImageSettings()
def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def exif_jpeg(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


def corpus() -> dict[str, bytes]:
    """Varied sizes, aspect ratios, orientations, modes and formats, each as an encoded file."""
    rgba = photo((400, 300), 7).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((400, 300)))
    palette = photo((300, 200), 8).quantize(64)
    palette.info["transparency"] = 0
    sixteen = (np.asarray(photo((320, 240), 9).convert("L"), dtype=np.uint16) * 257).astype("<u2")
    return {
        "png-20x20": encode(photo((20, 20), 1), "PNG"),
        "jpeg-1024x768": encode(photo((1024, 768), 2), "JPEG", quality=90),
        "jpeg-1600x1200": encode(photo((1600, 1200), 3), "JPEG", quality=85),
        "jpeg-1023x767-odd": encode(photo((1023, 767), 4), "JPEG", quality=90),
        "jpeg-512x512": encode(photo((512, 512), 5), "JPEG", quality=90),
        "jpeg-wide-1600x180": encode(photo((1600, 180), 6), "JPEG", quality=90),
        "png-tall-150x1200": encode(photo((150, 1200), 10), "PNG"),
        "jpeg-progressive-1200x900": encode(photo((1200, 900), 11), "JPEG", quality=90, progressive=True),
        "jpeg-exif6-1024x768": exif_jpeg(photo((1024, 768), 12), 6),
        "jpeg-exif8-900x1300": exif_jpeg(photo((900, 1300), 13), 8),
        "jpeg-exif3-800x600": exif_jpeg(photo((800, 600), 14), 3),
        "jpeg-exif5-1000x500": exif_jpeg(photo((1000, 500), 15), 5),
        "jpeg-greyscale-800x600": encode(photo((800, 600), 16).convert("L"), "JPEG", quality=90),
        "png-greyscale-300x200": encode(photo((300, 200), 17).convert("L"), "PNG"),
        "png-palette-transparent": encode(palette, "PNG"),
        "png-rgba-400x300": encode(rgba, "PNG"),
        "jpeg-cmyk-900x700": encode(photo((900, 700), 18).convert("CMYK"), "JPEG", quality=90),
        "png-16bit-320x240": encode(Image.frombytes("I;16", (320, 240), sixteen.tobytes()), "PNG"),
        "webp-640x480": encode(photo((640, 480), 19), "WEBP", quality=90),
    }


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return corpus()


def reference_and_fast(processor: Any, files: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    spec = PreprocessSpec.from_processor(processor)
    reference = [processor(images=[decode_image(d, LIMITS.max_pixels)], return_tensors="np")["pixel_values"][0]
                 for d in files.values()]
    fast = [load_bytes(d, LIMITS, spec).pixels for d in files.values()]
    return np.stack(reference), np.stack(fast)  # type: ignore[arg-type]


def report(title: str, names: list[str], reference: np.ndarray, fast: np.ndarray, cosines: Any = None) -> None:
    """Printed for `pytest -s`: per image, mean and max absolute difference in grey levels."""
    also = " and embedding cosine" if cosines is not None else ""
    print(f"\n{title}: |fast - reference| in grey levels (mean / max){also}")
    for i, name in enumerate(names):
        diff = np.abs(fast[i] - reference[i]) / GREY_LEVEL
        extra = f"  cos {float(cosines[i]):.6f}" if cosines is not None else ""
        print(f"  {name:28s} {diff.mean():6.3f} / {diff.max():6.2f}{extra}")


# --- reading the spec -------------------------------------------------------------------------------


def test_spec_from_the_test_model_processor(scorer: ClipScorer) -> None:
    spec = scorer.preprocess_spec
    assert spec == PreprocessSpec.from_processor(scorer._processor)
    assert (spec.shortest_edge, spec.crop_size, spec.resample) == (32, (32, 32), Image.Resampling.BICUBIC)
    assert spec.mean == pytest.approx(CLIP_MEAN) and spec.std == pytest.approx(CLIP_STD)
    assert spec.rescale_factor == pytest.approx(1 / 255)


def test_spec_from_openais_preprocessor_config_json(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(OPENAI_CONFIG))
    processor = AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    spec = PreprocessSpec.from_processor(processor)
    assert spec == PreprocessSpec(crop_size=(224, 224), shortest_edge=224, resample=3, mean=CLIP_MEAN, std=CLIP_STD)


def test_square_resize_configs_are_supported() -> None:
    spec = PreprocessSpec.from_processor(real_style_processor(size={"height": 256, "width": 256}))
    assert (spec.resize_to, spec.shortest_edge, spec.crop_size) == ((256, 256), None, (224, 224))
    image = photo((500, 300), 3)
    reference = real_style_processor(size={"height": 256, "width": 256})(images=[image], return_tensors="np")
    assert np.abs(to_pixels(image, spec) - reference["pixel_values"][0]).max() <= GREY_LEVEL * 1.01


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"do_center_crop": False}, "do_center_crop is off"),
        ({"do_resize": False}, "do_resize is off"),
        ({"crop_size": {"height": 256, "width": 224}}, "larger than the resized shortest edge"),
        ({"size": {"shortest_edge": 224, "longest_edge": 400}}, "longest_edge"),
        ({"do_pad": True}, "do_pad"),
    ],
)
def test_unreproducible_processors_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PreprocessSpec.from_processor(real_style_processor(**overrides))


def test_no_rescale_and_no_normalise_are_honoured() -> None:
    processor = real_style_processor(do_rescale=False, do_normalize=False)
    spec = PreprocessSpec.from_processor(processor)
    assert (spec.rescale_factor, spec.mean, spec.std) == (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    image = photo((300, 400), 4)
    reference = processor(images=[image], return_tensors="np")["pixel_values"][0]
    difference = np.abs(to_pixels(image, spec) - reference)  # in whole grey levels here
    assert difference.max() <= 2.0 and difference.mean() < 0.5


# --- draft sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(20, 20), (224, 224), (447, 447), (448, 448), (1024, 768), (768, 1024), (1600, 1200), (4000, 300),
             (2000, 1793), (3585, 3585), (1023, 767)]
)
def test_draft_never_takes_the_shortest_edge_below_the_target_and_goes_as_low_as_it_can(size: tuple[int, int]) -> None:
    spec = PreprocessSpec.from_processor(real_style_processor())
    image = Image.open(BytesIO(encode(Image.new("RGB", size, (90, 40, 200)), "JPEG")))
    image.draft("RGB", draft_size(*size, spec))
    drafted = image.size
    assert min(drafted) >= min(224, min(size))
    scale = round(size[0] / drafted[0])  # the DCT scale: 1, 2, 4 or 8
    assert drafted == (-(-size[0] // scale), -(-size[1] // scale))
    if scale < 8:  # one more halving would have gone below the target (or below the picture)
        assert min(size) // (scale * 2) < 224


def test_draft_request_is_the_same_for_both_orientations() -> None:
    spec = PreprocessSpec.from_processor(real_style_processor())
    assert draft_size(1600, 1200, spec) == draft_size(1200, 1600, spec) == (224, 224)
    assert draft_size(100, 3000, spec) == (100, 224)


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
def test_decode_with_a_draft_applies_the_orientation_and_keeps_the_resolution(orientation: int) -> None:
    spec = PreprocessSpec.from_processor(real_style_processor())
    data = exif_jpeg(photo((1800, 1000), 20), orientation)
    full = decode_image(data, LIMITS.max_pixels)
    drafted = decode_image(data, LIMITS.max_pixels, draft_to=spec)
    assert full.size == ((1000, 1800) if orientation in (5, 6, 7, 8) else (1800, 1000))
    assert drafted.size == (-(-full.width // 4), -(-full.height // 4))  # 1/4 scale: 1000 // 4 >= 224
    assert min(drafted.size) >= 224
    # Same picture, same way up: the drafted one is the full one shrunk.
    shrunk = np.asarray(full.resize(drafted.size, Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(shrunk - np.asarray(drafted, dtype=np.float32)).mean() < 6


def test_drafting_is_for_jpegs_only() -> None:
    spec = PreprocessSpec.from_processor(real_style_processor())
    png = encode(photo((1600, 1200), 21), "PNG")
    assert decode_image(png, LIMITS.max_pixels, draft_to=spec).size == (1600, 1200)


# --- equivalence with the reference processor -------------------------------------------------------


def test_without_a_draft_the_pixels_match_the_processor_within_two_grey_levels() -> None:
    processor = real_style_processor()
    spec = PreprocessSpec.from_processor(processor)
    sizes = [(20, 20), (224, 224), (225, 500), (1024, 768), (1023, 767), (3000, 300), (97, 131), (80, 1185)]
    for i, size in enumerate(sizes):
        image = photo(size, 30 + i)
        reference = processor(images=[image], return_tensors="np")["pixel_values"][0]
        fast = to_pixels(image, spec)
        assert fast.shape == (3, 224, 224) and fast.dtype == np.float32
        difference = np.abs(fast - reference) / GREY_LEVEL
        # Pillow rounds to 8 bits between its two passes, and may run them in the other order for the
        # smaller cropped resize (portrait pictures): a grey level or two on some pixels, no more.
        assert difference.max() <= 2.01, size
        assert difference.mean() < 0.5, size


@pytest.mark.parametrize("size", [(2045, 2045), (1, 1), (1, 5000), (5000, 1), (4093, 1351)])
def test_crops_reaching_the_far_edge_stay_inside_the_picture(size: tuple[int, int]) -> None:
    spec = PreprocessSpec.from_processor(real_style_processor())
    left, top, right, bottom = spec.crop_box(*size)
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    assert to_pixels(Image.new("RGB", size, (10, 200, 30)), spec).shape == (3, 224, 224)


def test_real_config_pixels_through_decode_and_draft(files: dict[str, bytes]) -> None:
    reference, fast = reference_and_fast(real_style_processor(), files)
    report("224 px real config", list(files), reference, fast)
    assert fast.shape == reference.shape == (len(files), 3, 224, 224)
    for name, ref, got in zip(files, reference, fast, strict=True):
        difference = np.abs(got - ref) / GREY_LEVEL
        assert difference.mean() < 2.0, name  # JPEG DCT scaling is a different low-pass than bicubic


def test_test_model_embeddings_match_the_reference(scorer: ClipScorer, files: dict[str, bytes]) -> None:
    reference, fast = reference_and_fast(scorer._processor, files)
    cosines = (scorer.pixel_embeddings(reference) * scorer.pixel_embeddings(fast)).sum(dim=-1)
    report("test model (32 px)", list(files), reference, fast, cosines)
    assert cosines.min().item() >= 0.999, dict(zip(files, cosines.tolist(), strict=True))


def test_vit_b32_embeddings_match_the_reference(files: dict[str, bytes]) -> None:
    """The real image-tower architecture at 224 px (random init, seeded): the fast path moves each
    embedding far less than the distance between different pictures."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=768, num_hidden_layers=12, projection_dim=512)
    model = CLIPVisionModelWithProjection(config).eval()
    names = ["jpeg-1600x1200", "jpeg-exif6-1024x768", "png-tall-150x1200", "jpeg-cmyk-900x700", "png-20x20"]
    reference, fast = reference_and_fast(real_style_processor(), {n: files[n] for n in names})
    with torch.inference_mode():
        embeddings = model(pixel_values=torch.from_numpy(np.concatenate([reference, fast]))).image_embeds
    embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
    ref, got = embeddings[: len(names)], embeddings[len(names) :]
    cosines = (ref * got).sum(dim=-1)
    report("ViT-B/32 (224 px, random init)", names, reference, fast, cosines)
    assert cosines.min().item() >= 0.999
    # A random-init tower maps all pictures close together (cosines ~0.99 between different ones), so
    # 0.999 alone proves little: also hold the fast path's shift to a small part of that spread.
    between = 1 - ref @ ref.T
    closest_other = between[~torch.eye(len(names), dtype=torch.bool)].min().item()
    assert (1 - cosines).max().item() < 0.05 * closest_other
