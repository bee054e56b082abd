"""Where each image is decoded: on the CPU in the loader threads, or left encoded for one batched GPU decode.

A scorer with a `JpegDecoder` (nvjpeg on a CUDA worker) decodes JPEGs faster than the loader threads
can. This module makes every decision on that path, in two steps of a batch:

1. `load_event` / `load_data` (loader threads): a JPEG the decoder can take as it is (RGB or greyscale,
   within the pixel and scan limits, judged from its header alone) is returned undecoded, with its EXIF
   orientation; anything else, and everything when there is no decoder, is decoded here on the CPU by
   moderation/images.py, which also produces the right error for what cannot be decoded at all.
2. `finish_deferred` (the model's thread, before the forward pass): the JPEGs left encoded go to the
   decoder in one batch; the CPU decodes any it refuses, and all of them when it fails as a whole.

moderation/gpu_decode.py only decodes; moderation/images.py only decodes on the CPU.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from PIL import ExifTags

from moderation.contracts import JpegDecoder
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.fetch import fetch_bytes
from moderation.images import MAX_JPEG_SCANS, REASON_DECODE_FAILED, LoadedImage, jpeg_scans, load_bytes, read_header
from moderation.preprocess import PreprocessSpec
from moderation.settings import ImageSettings
from moderation.verdict import LoadFailure

if TYPE_CHECKING:  # the model inputs' types only: the CPU path needs no torch
    import numpy as np
    import torch

_DECODER_MODES = ("RGB", "L")  # what nvjpeg decodes as is; CMYK and the rest go the CPU way


def load_event(
    event: ImageEvent,
    limits: ImageSettings,
    spec: PreprocessSpec | None = None,
    decoder: JpegDecoder | None = None,
    *,
    keep_bytes: bool = False,
) -> LoadedImage:
    """Fetch one event's image and `load_data` it; `load_ms` counts the fetch too. Raises `ImageLoadError`.

    With `keep_bytes`, the fetched bytes stay on the result (`original`), for a reviewer copy."""
    started = time.perf_counter()
    data = fetch_bytes(event, limits)
    loaded = load_data(data, limits, spec, decoder)
    return replace(loaded, load_ms=(time.perf_counter() - started) * 1000.0, original=data if keep_bytes else None)


def load_data(
    data: bytes, limits: ImageSettings, spec: PreprocessSpec | None = None, decoder: JpegDecoder | None = None
) -> LoadedImage:
    """The loader's step for fetched bytes: left encoded (`encoded`, `orientation`) when `decoder` can
    take them, else decoded (and, given `spec`, preprocessed) on the CPU. Raises `ImageLoadError`."""
    if decoder is not None:
        started = time.perf_counter()
        orientation = gpu_decodable_jpeg(data, limits)
        if orientation is not None:
            sha256 = hashlib.sha256(data).hexdigest()
            elapsed = (time.perf_counter() - started) * 1000.0
            return LoadedImage(None, sha256, len(data), elapsed, encoded=data, orientation=orientation)
    return load_bytes(data, limits, spec)


def gpu_decodable_jpeg(data: bytes, limits: ImageSettings) -> int | None:
    """The EXIF orientation of a JPEG nvjpeg can decode as is, from its header; None for anything else.

    Anything else - other formats, CMYK JPEGs, oversized, unreadable or scan-heavy headers - goes the
    CPU way, which also produces the right error for it.
    """
    if "JPEG" not in limits.allowed_formats:
        return None
    try:
        image = read_header(data, ["JPEG"])
        if image.mode not in _DECODER_MODES or image.width * image.height > limits.max_pixels:
            return None
        if jpeg_scans(image, data) > MAX_JPEG_SCANS:
            return None
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - not for the GPU, whatever the reason: the CPU path will say why
        return None
    return orientation if orientation in range(1, 9) else 1


def finish_deferred(
    items: Sequence[LoadedImage | LoadFailure],
    decoder: JpegDecoder | None,
    limits: ImageSettings,
    spec: PreprocessSpec | None,
) -> list[LoadedImage | LoadFailure]:
    """`items` with every JPEG the loaders left encoded decoded: by `decoder`, in one batch, or on the CPU
    (to `spec`) where it refuses one, fails as a whole, or is None (the scorer was swapped meanwhile)."""
    items = list(items)
    deferred = [i for i, item in enumerate(items) if isinstance(item, LoadedImage) and item.encoded is not None]
    if not deferred:
        return items
    started = time.perf_counter()
    jpegs: list[LoadedImage] = [items[i] for i in deferred]  # type: ignore[misc]
    datas = [jpeg.encoded for jpeg in jpegs if jpeg.encoded is not None]
    decoded: list[np.ndarray | torch.Tensor | None] = [None] * len(jpegs)  # None: for the CPU
    if decoder is not None:
        try:
            decoded = list(decoder.decode_jpegs(datas, [jpeg.orientation for jpeg in jpegs]))
        except Exception:  # noqa: BLE001 - the GPU decoder failing as a whole: every image goes the CPU way
            decoded = [None] * len(jpegs)
    per_image_ms = (time.perf_counter() - started) * 1000.0 / len(jpegs)
    for i, jpeg, pixels in zip(deferred, jpegs, decoded, strict=True):
        if pixels is not None:
            items[i] = replace(jpeg, pixels=pixels, encoded=None, load_ms=jpeg.load_ms + per_image_ms)
        else:
            items[i] = _decode_on_cpu(jpeg, limits, spec)
    return items


def _decode_on_cpu(jpeg: LoadedImage, limits: ImageSettings, spec: PreprocessSpec | None) -> LoadedImage | LoadFailure:
    started = time.perf_counter()
    try:
        assert jpeg.encoded is not None
        loaded = load_bytes(jpeg.encoded, limits, spec)
    except ImageLoadError as exc:
        return LoadFailure(exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - whatever broke, it is this image's error alone
        return LoadFailure(REASON_DECODE_FAILED, f"{type(exc).__name__}: {exc}")
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return replace(loaded, load_ms=jpeg.load_ms + elapsed_ms, original=jpeg.original)
