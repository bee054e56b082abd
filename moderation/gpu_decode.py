"""JPEG decode and preprocessing on the GPU (nvjpeg through torchvision), for CUDA workers.

On a GPU the forward pass of ViT-B/32 runs at thousands of images per second and the CPU side - JPEG
decode and resize - becomes the bottleneck. nvjpeg decodes a whole batch on the device; the resize,
centre crop and normalisation then run there too, to the same `PreprocessSpec` as the CPU path
(bicubic with antialiasing, the crop geometry of `PreprocessSpec.crop_box`), and only the encoded
bytes cross the PCIe bus.

torchvision is optional and imported lazily, inside functions only: the PyPI wheel does not import
beside every torch build (it does not beside torch 2.13.0+cpu here), and a broken install must only
turn this path off, never break the worker. `pixels_from_uint8` needs no torchvision and runs on any
device, which is how the CPU-only test suite checks the GPU math.

This module only decodes; which JPEGs come here, and what happens to those it refuses, is decided in
moderation/decoding.py.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from moderation.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

# torch's interpolate modes for the PIL filters it has; the others fall back to the CPU path's choice.
_TORCH_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@functools.lru_cache(maxsize=1)
def _torchvision_decoder() -> object | None:
    """torchvision.io.decode_jpeg, or None when torchvision is missing or does not import here."""
    try:
        from torchvision.io import decode_jpeg
    except Exception as exc:  # noqa: BLE001 - a mismatched build raises RuntimeError/AttributeError/OSError too
        log.info("GPU JPEG decode unavailable: torchvision does not import (%s: %s)", type(exc).__name__, exc)
        return None
    return decode_jpeg


def gpu_decode_available(device: torch.device | str) -> bool:
    """Whether JPEGs can be decoded on `device`: a CUDA device, CUDA present, torchvision importable."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and _torchvision_decoder() is not None


@dataclass(frozen=True)
class GpuJpegDecoder:
    """nvjpeg on `device`, preprocessing to `spec`: the `JpegDecoder` (moderation/contracts.py) of a CUDA
    scorer. Made by `gpu_decoder`, which gives None where GPU decode is unavailable."""

    spec: PreprocessSpec
    device: torch.device

    def decode_jpegs(self, datas: Sequence[bytes], orientations: Sequence[int]) -> list[torch.Tensor | None]:
        return decode_jpegs(datas, self.spec, self.device, orientations)


def gpu_decoder(spec: PreprocessSpec, device: torch.device) -> GpuJpegDecoder | None:
    """The GPU JPEG decoder for `device`, or None when `gpu_decode_available` says there is none."""
    return GpuJpegDecoder(spec, device) if gpu_decode_available(device) else None


def decode_jpegs(
    datas: Sequence[bytes], spec: PreprocessSpec, device: torch.device, orientations: Sequence[int] | None = None
) -> list[torch.Tensor | None]:
    """Decode JPEGs on `device` with nvjpeg and preprocess them there: float32 [3, crop_h, crop_w] each.

    `orientations` are the EXIF orientation tags (1-8) read from the headers on the CPU: nvjpeg ignores
    EXIF. An entry is None where the GPU could not decode that image (a CMYK or damaged JPEG, say);
    the caller decodes those on the CPU instead. Raises `RuntimeError` when GPU decode is unavailable.
    """
    decode_jpeg = _torchvision_decoder()
    if decode_jpeg is None or torch.device(device).type != "cuda":
        raise RuntimeError("GPU JPEG decode needs a CUDA device and an importable torchvision")
    from torchvision.io import ImageReadMode

    if not datas:
        return []
    orientations = list(orientations) if orientations is not None else [1] * len(datas)
    # decode_jpeg wants CPU uint8 tensors; bytearray makes the buffer writable (no warning, one small copy).
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    decoded: list[torch.Tensor | None]
    try:
        # One batched nvjpeg call: much faster than one call per image. It returns no partial results...
        decoded = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))  # type: ignore[operator]
    except RuntimeError:
        decoded = []
        for tensor in encoded:  # ...so on failure find the bad images one by one, keeping the good ones.
            try:
                decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))  # type: ignore[operator]
            except RuntimeError:
                decoded.append(None)
    return [
        None if image is None else pixels_from_uint8(image, spec, orientation)
        for image, orientation in zip(decoded, orientations, strict=True)
    ]


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a [C, H, W] tensor, as PIL's `ImageOps.exif_transpose` does."""
    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # upside down
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:  # PIL's TRANSPOSE: mirror across the main diagonal
        return image.transpose(-1, -2)
    if orientation == 6:  # turned: rotate 90 degrees clockwise to display
        return image.rot90(-1, (-2, -1))
    if orientation == 7:  # PIL's TRANSVERSE: mirror across the other diagonal
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


def pixels_from_uint8(image: torch.Tensor, spec: PreprocessSpec, orientation: int = 1) -> torch.Tensor:
    """Resize, centre-crop and normalise a decoded uint8 [C, H, W] picture on its own device.

    The geometry is `PreprocessSpec`'s (transformers' integer sizes and crop offsets); the filter is
    torch's antialiased bicubic, which differs from PIL's by about a grey level. Values are clamped and
    rounded to whole grey levels between resize and normalisation, as PIL's uint8 output is.
    """
    image = orient(image, orientation)
    if image.shape[0] == 1:  # greyscale
        image = image.expand(3, -1, -1)
    height, width = int(image.shape[-2]), int(image.shape[-1])
    resized_w, resized_h = spec.resized_size(width, height)
    crop_h, crop_w = spec.crop_size
    top, left = (resized_h - crop_h) // 2, (resized_w - crop_w) // 2
    mode = _TORCH_MODES.get(spec.resample, "bicubic")
    batch = image[None].float()
    if (resized_h, resized_w) != (height, width):
        antialias = mode in ("bilinear", "bicubic")  # PIL always filters over the whole footprint
        batch = F.interpolate(batch, size=(resized_h, resized_w), mode=mode, antialias=antialias, align_corners=None)
    crop = batch[0, :, top : top + crop_h, left : left + crop_w].clamp(0, 255).round()
    scale, shift = _affine(spec, crop.device)
    return torch.addcmul(-shift, crop, scale)  # crop * rescale / std - mean / std


@functools.lru_cache(maxsize=8)
def _affine(spec: PreprocessSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift of the normalisation, made once per device (not a copy per image)."""
    std = torch.tensor(spec.std, dtype=torch.float64)
    scale = (spec.rescale_factor / std).float().view(3, 1, 1)
    shift = (torch.tensor(spec.mean, dtype=torch.float64) / std).float().view(3, 1, 1)
    return scale.to(device), shift.to(device)
