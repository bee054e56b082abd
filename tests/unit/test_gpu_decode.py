"""moderation/gpu_decode.py without a GPU: the device-independent math, and staying off when unavailable.

nvjpeg itself needs CUDA and torchvision; everything after the decode (EXIF orientation, resize, crop,
normalisation) is plain torch and is checked here on CPU tensors against the CPU path.
"""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from moderation.clip_scorer import ClipScorer
from moderation.gpu_decode import decode_jpegs, gpu_decode_available, orient, pixels_from_uint8
from moderation.preprocess import PreprocessSpec, to_pixels
from tests.support.clip_reference import GREY_LEVEL, real_style_processor
from tests.support.images import photo


def as_tensor(image: Image.Image) -> torch.Tensor:
    """What decode_jpeg(mode=RGB) returns: uint8 [3, H, W]."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientations_match_pillows_exif_transpose(orientation: int) -> None:
    image = photo((7, 4), orientation)  # small, non-square, no symmetry
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = BytesIO()
    image.save(buffer, "PNG", exif=exif.tobytes())
    expected = ImageOps.exif_transpose(Image.open(BytesIO(buffer.getvalue())))
    assert torch.equal(orient(as_tensor(image), orientation), as_tensor(expected))


@pytest.mark.parametrize("size", [(1024, 768), (300, 1200), (20, 20), (640, 480)])
def test_device_preprocessing_matches_the_cpu_path(size: tuple[int, int]) -> None:
    spec = PreprocessSpec.from_processor(real_style_processor())
    image = photo(size, 40)
    on_device = pixels_from_uint8(as_tensor(image), spec)
    assert on_device.shape == (3, 224, 224) and on_device.dtype == torch.float32
    difference = (on_device.numpy() - to_pixels(image, spec)) / GREY_LEVEL
    # torch's antialiased bicubic is not Pillow's to the last bit; the geometry is the same.
    assert np.abs(difference).mean() < 1.5, size


def test_device_preprocessing_embeds_like_the_cpu_path(scorer: ClipScorer) -> None:
    spec = scorer.preprocess_spec
    images = [photo((900, 600), 41), photo((333, 777), 42), photo((48, 40), 43)]
    cpu = np.stack([to_pixels(image, spec) for image in images])
    device = torch.stack([pixels_from_uint8(as_tensor(image), spec) for image in images])
    cosines = (scorer.pixel_embeddings(cpu) * scorer.pixel_embeddings(device)).sum(dim=-1)
    assert cosines.min().item() >= 0.999


def test_greyscale_and_orientation_on_device() -> None:
    spec = PreprocessSpec.from_processor(real_style_processor())
    grey = photo((500, 300), 44).convert("L")
    tensor = torch.from_numpy(np.array(grey))[None]  # decode_jpeg(mode=GRAY) shape
    rotated = pixels_from_uint8(tensor, spec, orientation=6)
    expected = to_pixels(grey.transpose(Image.Transpose.ROTATE_270).convert("RGB"), spec)
    assert np.abs(rotated.numpy() - expected).mean() / GREY_LEVEL < 1.5


def test_unavailable_without_cuda() -> None:
    assert gpu_decode_available("cpu") is False
    assert gpu_decode_available(torch.device("cpu")) is False
    with pytest.raises(RuntimeError, match="CUDA"):
        decode_jpegs([b"\xff\xd8"], PreprocessSpec(crop_size=(8, 8), shortest_edge=8), torch.device("cpu"))


def test_scorer_reports_gpu_decode_off_on_cpu(test_model_dir: object) -> None:
    scorer = ClipScorer.load(str(test_model_dir), device="cpu", gpu_decode=True)
    assert scorer.gpu_decode is False


def test_importing_the_package_never_imports_torchvision() -> None:
    # torchvision from PyPI does not import beside every torch build; it may only be tried lazily.
    code = (
        "import sys, moderation.clip_scorer, moderation.moderator, moderation.gpu_decode, moderation.images;"
        "print('torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "False"
