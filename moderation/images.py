"""Image loading: fetch an event's image bytes under limits and decode them to an RGB picture.

Every failure raises `ImageLoadError` with a short reason code; the pipeline turns it into an
``error`` verdict for that one event while the rest of the batch goes on.

Given the model's `PreprocessSpec`, loading also produces the model input (`LoadedImage.pixels`):
JPEGs are decoded at a reduced DCT scale and the picture is resized, cropped and normalised here, in
the loader threads, so that work overlaps the forward pass instead of running before it.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.preprocess import PreprocessSpec, draft_size, to_pixels
from moderation.settings import ImageSettings

if TYPE_CHECKING:  # only for the pixels' type: loading images needs no torch
    import torch

REASON_TOO_LARGE = "too_large"
REASON_NOT_FOUND = "not_found"
REASON_FETCH_FAILED = "fetch_failed"
REASON_NOT_ALLOWED = "not_allowed"
REASON_NOT_AN_IMAGE = "not_an_image"
REASON_TOO_MANY_PIXELS = "too_many_pixels"
REASON_DECODE_FAILED = "decode_failed"

_READ_CHUNK = 256 * 1024
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the picture by 90 degrees (with or without a flip)


@dataclass(frozen=True)
class LoadedImage:
    # RGB, EXIF orientation applied, when loaded without a spec. None with a spec (`pixels` are what
    # the model takes), or when decoding is left to the GPU (`encoded` and `orientation` are set then).
    image: Image.Image | None
    sha256: str  # of the encoded bytes: identifies the same upload seen twice
    nbytes: int
    load_ms: float
    pixels: np.ndarray | torch.Tensor | None = None  # the model input, float32 [3, H, W], given a spec
    encoded: bytes | None = None
    orientation: int = 1


def load_image(
    event: ImageEvent, limits: ImageSettings, spec: PreprocessSpec | None = None, *, defer_jpeg: bool = False
) -> LoadedImage:
    """Fetch and decode the image of one event, or raise `ImageLoadError`.

    With `spec`, JPEGs decode at the smallest DCT scale that keeps the model's resolution and the
    result is the model input (`pixels`, no `image`): a worker's loader threads do all the preprocessing.
    With `defer_jpeg`, a JPEG the GPU can decode (RGB or greyscale, within the pixel limit) is checked
    from its header only and returned undecoded (`encoded`), for a batched GPU decode.
    """
    started = time.perf_counter()
    loaded = load_bytes(fetch_bytes(event, limits), limits, spec, defer_jpeg=defer_jpeg)
    return replace(loaded, load_ms=(time.perf_counter() - started) * 1000.0)


def load_bytes(
    data: bytes, limits: ImageSettings, spec: PreprocessSpec | None = None, *, defer_jpeg: bool = False
) -> LoadedImage:
    """`load_image` for bytes already fetched (`load_ms` counts the decoding only)."""
    started = time.perf_counter()
    sha256 = hashlib.sha256(data).hexdigest()
    if defer_jpeg:
        orientation = _gpu_decodable_jpeg(data, limits.max_pixels)
        if orientation is not None:
            elapsed = (time.perf_counter() - started) * 1000.0
            return LoadedImage(None, sha256, len(data), elapsed, encoded=data, orientation=orientation)
    image, source_size = _decode(data, limits.max_pixels, spec)
    if spec is None:
        return LoadedImage(image, sha256, len(data), (time.perf_counter() - started) * 1000.0)
    try:
        pixels = to_pixels(image, spec, source_size)
    except (OSError, ValueError, MemoryError) as exc:
        raise ImageLoadError(REASON_DECODE_FAILED, f"preprocessing failed: {exc}") from exc
    # The picture is dropped once the model input exists: a worker holds several batches in flight,
    # and 600 KB per image (224 px) beats the decoded upload (36 MB for a 12 Mpx PNG).
    return LoadedImage(None, sha256, len(data), (time.perf_counter() - started) * 1000.0, pixels=pixels)


def _gpu_decodable_jpeg(data: bytes, max_pixels: int) -> int | None:
    """The EXIF orientation of a JPEG nvjpeg can decode as is, from its header; None for anything else.

    Anything else - other formats, CMYK JPEGs, oversized or unreadable headers - goes the CPU way,
    which also produces the right error for it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data))
        if image.format != "JPEG" or image.mode not in ("RGB", "L") or image.width * image.height > max_pixels:
            return None
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - not for the GPU, whatever the reason: the CPU path will say why
        return None
    return orientation if orientation in range(1, 9) else 1


def fetch_bytes(event: ImageEvent, limits: ImageSettings) -> bytes:
    if event.inline_bytes is not None:
        data = event.inline_bytes
    else:
        assert event.image_url is not None  # the event contract guarantees one of the two
        url = urlsplit(event.image_url)
        scheme = url.scheme.lower()
        if scheme == "file":
            data = _read_file(url.path, limits)
        elif scheme in ("http", "https"):
            data = _read_http(event.image_url, limits)
        else:  # pragma: no cover - refused by the event contract already
            raise ImageLoadError(REASON_NOT_ALLOWED, f"scheme {scheme!r}")
    if len(data) > limits.max_bytes:
        raise ImageLoadError(REASON_TOO_LARGE, f"{len(data)} bytes is over the limit of {limits.max_bytes}")
    if not data:
        raise ImageLoadError(REASON_NOT_AN_IMAGE, "zero bytes")
    return data


def _read_file(raw_path: str, limits: ImageSettings) -> bytes:
    if not limits.allow_file:
        raise ImageLoadError(REASON_NOT_ALLOWED, "file:// images are disabled (images.allow_file)")
    path = Path(unquote(raw_path))
    if limits.file_root is not None:
        root = limits.file_root.resolve()
        if not path.resolve().is_relative_to(root):
            raise ImageLoadError(REASON_NOT_ALLOWED, f"{path} is outside images.file_root {root}")
    try:
        with path.open("rb") as handle:
            return _read_capped(handle, limits.max_bytes)
    except FileNotFoundError as exc:
        raise ImageLoadError(REASON_NOT_FOUND, f"no such file: {path}") from exc
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise ImageLoadError(REASON_FETCH_FAILED, f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_http(url: str, limits: ImageSettings) -> bytes:
    if not limits.allow_http:
        raise ImageLoadError(REASON_NOT_ALLOWED, "http(s) images are disabled (images.allow_http)")
    request = urllib.request.Request(url, headers={"User-Agent": "moderation-image-fetcher"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=limits.fetch_timeout_s) as response:  # noqa: S310
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_bytes:
                raise ImageLoadError(REASON_TOO_LARGE, f"Content-Length {length} is over {limits.max_bytes}")
            return _read_capped(response, limits.max_bytes, deadline=time.monotonic() + limits.fetch_timeout_s)
    except urllib.error.HTTPError as exc:
        reason = REASON_NOT_FOUND if exc.code in (404, 410) else REASON_FETCH_FAILED
        raise ImageLoadError(reason, f"HTTP {exc.code} from {url}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ImageLoadError(REASON_FETCH_FAILED, f"{url}: {getattr(exc, 'reason', exc)}") from exc


def _read_capped(handle, max_bytes: int, deadline: float | None = None) -> bytes:  # noqa: ANN001 - binary file-like
    """Read at most max_bytes + 1 so an endless body cannot exhaust memory, and stop at `deadline`.

    The socket timeout bounds each read; the deadline bounds the whole body, so a server trickling a
    byte at a time cannot hold a loader thread for longer than the fetch timeout (plus one read).
    """
    # read1() returns what has arrived instead of waiting for a full chunk, so the deadline is checked
    # between network reads even when a server trickles bytes.
    read = getattr(handle, "read1", handle.read)
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        if deadline is not None and time.monotonic() > deadline:
            raise ImageLoadError(REASON_FETCH_FAILED, f"body not received within the fetch timeout ({total} bytes)")
        chunk = read(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise ImageLoadError(REASON_TOO_LARGE, f"more than {max_bytes} bytes")
    return b"".join(chunks)


def decode_image(data: bytes, max_pixels: int, draft_to: PreprocessSpec | None = None) -> Image.Image:
    """Decode to RGB with the pixel count checked from the header, before any pixel is decoded.

    With `draft_to`, a JPEG is decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that still leaves its
    shortest edge at least the spec's resize target: most of the decoding work is skipped, and
    `to_pixels` gives nearly the same model input (pass it the full size, see `load_image`).
    """
    return _decode(data, max_pixels, draft_to)[0]


def _decode(data: bytes, max_pixels: int, draft_to: PreprocessSpec | None) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB picture and the (width, height) it has at full resolution, EXIF orientation applied."""
    # Pillow's own bomb check (in Image.open, ~89 Mpx by default) must not be stricter than the setting,
    # or `max_pixels` could never be raised above it. It is only ever raised, never lowered.
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        # Pillow only warns below twice its own limit; a decompression bomb must be an error here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(BytesIO(data))
        except UnidentifiedImageError as exc:
            raise ImageLoadError(REASON_NOT_AN_IMAGE, "not a recognised image format") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(REASON_TOO_MANY_PIXELS, str(exc)) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageLoadError(REASON_DECODE_FAILED, f"unreadable header: {exc}") from exc
        width, height = image.size
        if width * height > max_pixels:
            raise ImageLoadError(
                REASON_TOO_MANY_PIXELS, f"{width}x{height} is over the limit of {max_pixels} pixels"
            )
        try:
            if draft_to is not None and image.format in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG
                # Before load(): the scale is chosen in the decoder. The request is square (see
                # draft_size), so it holds whichever way the EXIF orientation turns the picture.
                image.draft("RGB", draft_size(width, height, draft_to))
            image.load()
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation in _SWAPS_AXES:
                width, height = height, width
            if orientation != 1:
                image = ImageOps.exif_transpose(image) or image
            return to_rgb(image), (width, height)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(REASON_TOO_MANY_PIXELS, str(exc)) from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageLoadError(REASON_DECODE_FAILED, f"{image.format or 'image'}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent areas become white, as most viewers show them."""
    if image.mode == "RGB" and not _has_colour_key(image):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if (image.mode == "P" and "transparency" in image.info) or _has_colour_key(image):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _has_colour_key(image: Image.Image) -> bool:
    """An RGB or L picture with a PNG tRNS colour key: pixels of that one colour are transparent."""
    key = image.info.get("transparency")
    if image.mode == "RGB":
        return isinstance(key, tuple) and len(key) == 3
    # After the 16-bit scaling above, a 16-bit key no longer names an 8-bit grey: ignore it then.
    return image.mode == "L" and isinstance(key, int) and 0 <= key <= 255
