"""Fast CLIP preprocessing, done in the image-loader threads so the model forward is the only real work.

The Hugging Face image processor resizes the whole picture (shortest edge to 224, bicubic), crops the
centre, then rescales and normalises in float64/float32 numpy passes: ~21 ms for a 1024x768 JPEG on
this project's CPUs, as long as the ViT-B/32 forward of the same image. This module reproduces the
same result with much less work:

- JPEGs are decoded at a reduced scale (`Image.draft`, libjpeg's DCT scaling by 1/2, 1/4 or 1/8),
  never below the resize target, so most of the pixels are never decoded (`draft_size`);
- resize and centre crop are ONE Pillow resize with a source box: the crop expressed in source
  coordinates, so only the pixels that survive the crop are computed (`to_pixels`);
- rescale and normalise are one fused multiply-add per channel, written straight into the output.

The geometry (resize size, crop offsets, integer truncation) mirrors transformers' processor exactly.
Without a draft the pixels still differ by a grey level or two here and there: Pillow rounds to 8 bits
between its horizontal and vertical passes and picks their order by the sizes involved, so the smaller
cropped resize sometimes runs them the other way round. A draft adds about half a grey level on
average (a different low-pass filter). tests/unit/test_preprocess.py holds both to embedding cosine >= 0.999.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from moderation.exceptions import ConfigurationError

_RESAMPLE_BY_NAME = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
# The smallest drafted shortest edge, as a multiple of the resize target. 1 is the fastest decode; the
# bicubic resize after it then shrinks by less than 2x. Measured against a full decode at 224 px: half
# to one grey level apart on average (up to ~15 on sharp edges), embedding cosine > 0.9999. 2 halves
# that difference for ~40% more decode time.
_DRAFT_HEADROOM = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model's image processor does to a picture, in the terms `to_pixels` reproduces.

    Either `shortest_edge` is set (resize keeping the aspect ratio so the shorter side is that long,
    as CLIP does) or `resize_to` is (resize to exactly (height, width), as SigLIP does, where the crop
    is then the whole resized picture). The centre crop is always on: a batch needs one tensor shape.
    """

    crop_size: tuple[int, int]  # (height, width) of the model input
    shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None  # (height, width)
    resample: int = int(Image.Resampling.BICUBIC)  # a PIL.Image.Resampling value
    rescale_factor: float = 1 / 255  # 1.0 when the processor does not rescale
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (0, 0, 0) and (1, 1, 1) when it does not normalise
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if (self.shortest_edge is None) == (self.resize_to is None):
            raise ConfigurationError("a PreprocessSpec needs exactly one of shortest_edge and resize_to")
        ch, cw = self.crop_size
        if self.shortest_edge is not None and (ch > self.shortest_edge or cw > self.shortest_edge):
            # transformers would pad the crop with black here; nobody trains a model on that.
            raise ConfigurationError(f"crop {ch}x{cw} is larger than the resized shortest edge {self.shortest_edge}")
        if self.resize_to is not None and (ch > self.resize_to[0] or cw > self.resize_to[1]):
            raise ConfigurationError(f"crop {ch}x{cw} is larger than the resize target {self.resize_to}")
        if any(s == 0 for s in self.std):
            raise ConfigurationError("image std must not be zero")

    @classmethod
    def from_processor(cls, processor: Any) -> PreprocessSpec:
        """Read the spec from a loaded transformers image processor (CLIPImageProcessor and alikes).

        Raises `ConfigurationError` for settings this module cannot reproduce exactly (no resize, no
        centre crop, longest-edge or max-size limits, padding): better to refuse at start-up than to
        score with inputs the model was not trained on.
        """
        name = type(processor).__name__
        if getattr(processor, "max_num_patches", None) is not None:
            # SigLIP 2's NaFlex processor keeps each picture's aspect ratio and gives a variable number of
            # patches (with a patch mask and shapes), not a [3, H, W] picture: nothing here reproduces it.
            raise ConfigurationError(
                f"{name}: NaFlex preprocessing (variable patch counts) is not supported; "
                "use a fixed-resolution checkpoint (SigLIP 2 publishes them, e.g. google/siglip2-base-patch16-224)"
            )
        if not getattr(processor, "do_resize", False):
            raise ConfigurationError(f"{name}: do_resize is off; the fast preprocessing needs a resize")
        if getattr(processor, "do_pad", None):
            raise ConfigurationError(f"{name}: do_pad is not supported")
        size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
        unsupported = [k for k in ("longest_edge", "max_height", "max_width") if _field(size, k) is not None]
        if unsupported:
            raise ConfigurationError(f"{name}: resize size {unsupported} is not supported")
        shortest, height, width = _field(size, "shortest_edge"), _field(size, "height"), _field(size, "width")
        if not getattr(processor, "do_center_crop", False):
            # SigLIP's processor squashes the picture to exactly height x width and crops nothing: the
            # same as a crop of the whole resized picture. A shortest-edge resize without a crop leaves
            # every picture its own shape, which a batch cannot hold.
            if shortest is not None or height is None or width is None:
                raise ConfigurationError(f"{name}: do_center_crop is off; batches need one input size")
            crop = {"height": height, "width": width}
        crop_h, crop_w = _field(crop, "height"), _field(crop, "width")
        if crop_h is None or crop_w is None:
            raise ConfigurationError(f"{name}: crop_size {crop!r} has no height and width")
        if shortest is not None and height is None and width is None:
            resize: dict[str, Any] = {"shortest_edge": int(shortest)}
        elif shortest is None and height is not None and width is not None:
            resize = {"resize_to": (int(height), int(width))}
        else:
            raise ConfigurationError(f"{name}: resize size {size!r} is not supported")
        do_rescale = bool(getattr(processor, "do_rescale", False))
        do_normalize = bool(getattr(processor, "do_normalize", False))
        return cls(
            crop_size=(int(crop_h), int(crop_w)),
            resample=_resample(getattr(processor, "resample", None), name),
            rescale_factor=float(processor.rescale_factor) if do_rescale else 1.0,
            mean=_triple(processor.image_mean, name) if do_normalize else (0.0, 0.0, 0.0),
            std=_triple(processor.image_std, name) if do_normalize else (1.0, 1.0, 1.0),
            **resize,
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a `width` x `height` picture after the resize, exactly as transformers sizes it."""
        if self.resize_to is not None:
            return self.resize_to[1], self.resize_to[0]
        assert self.shortest_edge is not None
        target = self.shortest_edge
        # transformers truncates the long side (int(), not round()): keep that, or crops shift by a pixel.
        if width <= height:
            return target, int(target * height / width)
        return int(target * width / height), target

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The centre crop of the resized picture, in the coordinates of the `width` x `height` source."""
        resized_w, resized_h = self.resized_size(width, height)
        crop_h, crop_w = self.crop_size
        top, left = (resized_h - crop_h) // 2, (resized_w - crop_w) // 2  # transformers' integer offsets
        sx, sy = width / resized_w, height / resized_h
        # min(): a crop reaching the far edge lands a rounding error past it (2045 * (2045 / 224) / ...),
        # and Pillow refuses a box outside the picture.
        return left * sx, top * sy, min((left + crop_w) * sx, width), min((top + crop_h) * sy, height)


def _field(size: Any, key: str) -> Any:
    # transformers 5 gives a SizeDict (attributes); 4.x gave a plain dict.
    if size is None:
        return None
    return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)


def _resample(value: Any, name: str) -> int:
    if value is None:
        return int(Image.Resampling.BILINEAR)  # transformers' default when the config names none
    if isinstance(value, int):  # also PIL's Resampling enum
        if value not in _RESAMPLE_BY_NAME.values():
            raise ConfigurationError(f"{name}: unknown resample filter {value!r}")
        return int(value)
    # The torchvision backend stores an InterpolationMode, whose value is the filter's name.
    key = str(getattr(value, "value", value)).lower()
    if key not in _RESAMPLE_BY_NAME:
        raise ConfigurationError(f"{name}: resample filter {value!r} is not supported")
    return _RESAMPLE_BY_NAME[key]


def _triple(values: Any, name: str) -> tuple[float, float, float]:
    floats = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values] * 3)]
    if len(floats) != 3:
        raise ConfigurationError(f"{name}: expected 3 channel values, got {values!r}")
    return floats[0], floats[1], floats[2]


def draft_size(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The size to pass to JPEG `Image.draft("RGB", size)` for a `width` x `height` picture.

    Pillow picks the largest DCT scale s in (8, 4, 2, 1) with s <= width // w and s <= height // h,
    so asking for (n, n) keeps BOTH sides at least n: the shortest edge (which sets the resize scale
    and is the same before and after an EXIF 90-degree rotation) never drops below the resize target.
    For a `resize_to` spec each side must stay at least its own target, in either orientation.
    """
    if spec.shortest_edge is not None:
        need = spec.shortest_edge * _DRAFT_HEADROOM
    else:
        assert spec.resize_to is not None
        need = max(spec.resize_to) * _DRAFT_HEADROOM  # orientation-proof: the larger target on both sides
    # Never ask for more than the picture has: draft would then just decode at full size anyway.
    return min(need, width), min(need, height)


def _draft_scale(source: tuple[int, int], image: tuple[int, int]) -> tuple[float, float]:
    """Source pixels per `image` pixel, per axis: the JPEG DCT scale when `image` came from a draft.

    A draft at scale s gives ceil(size / s) pixels, pixel j covering source pixels [j*s, (j+1)*s);
    mapping by the ratio of sizes instead would stretch the last partial pixel over the whole width.
    """
    for s in (1, 2, 4, 8):
        if all(-(-src // s) == got for src, got in zip(source, image, strict=True)):
            return float(s), float(s)
    return source[0] / image[0], source[1] / image[1]  # resized some other way: proportional


def to_pixels(
    image: Image.Image, spec: PreprocessSpec, source_size: tuple[int, int] | None = None
) -> np.ndarray:
    """The model input for one RGB picture: float32 [3, crop_h, crop_w], as the processor would make it.

    `source_size` is the (width, height) of the full picture when `image` is a reduced (JPEG-drafted)
    decode of it: the geometry is then computed on the full picture, as the reference processor sees
    it, and mapped onto the reduced one.
    """
    if image.mode != "RGB":
        raise ValueError(f"to_pixels needs an RGB image, got mode {image.mode!r}")
    source = source_size or image.size
    left, top, right, bottom = spec.crop_box(*source)
    sx, sy = _draft_scale(source, image.size) if source != image.size else (1.0, 1.0)
    crop_h, crop_w = spec.crop_size
    # One resize: Pillow's filter support follows the box-to-output scale, which equals the full resize's,
    # and output pixel i samples box_left + (i + 0.5) * scale, the same source point the full resize
    # then crop would sample. So this is the reference's resize + crop, computing only the kept pixels.
    box = (left / sx, top / sy, min(right / sx, image.width), min(bottom / sy, image.height))
    resized = image.resize((crop_w, crop_h), spec.resample, box=box)
    rgb = np.asarray(resized, dtype=np.uint8)  # [h, w, 3]: one 150 KB copy out of Pillow
    return _normalise(rgb, spec)


def _normalise(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(x * rescale - mean) / std per channel as one multiply-add, written into a fresh CHW float32 array."""
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (spec.rescale_factor / std).astype(np.float32)
    shift = (np.asarray(spec.mean, dtype=np.float64) / std).astype(np.float32)
    out = np.empty((3, rgb.shape[0], rgb.shape[1]), dtype=np.float32)
    for channel in range(3):
        np.multiply(rgb[:, :, channel], scale[channel], out=out[channel], dtype=np.float32)
        out[channel] -= shift[channel]
    return out
