"""Image loading: fetch an event's image bytes under limits and decode them to an RGB picture.

Every failure raises `ImageLoadError` with a short reason code; the pipeline turns it into an
``error`` verdict for that one event while the rest of the batch goes on. Uploads are hostile input, so
everything that can be judged from the header is judged before a pixel is decoded: the format
(`images.allowed_formats`), the pixel count (`images.max_pixels`, under Pillow's own decompression-bomb
limit, which is set once at import) and JPEG scan counts; the decode itself runs under a time budget (`load_bytes`).
Fetching the bytes (and the SSRF guard) lives in `moderation.fetch`.

Given the model's `PreprocessSpec`, loading also produces the model input (`LoadedImage.pixels`):
JPEGs are decoded at a reduced DCT scale and the picture is resized, cropped and normalised here, in
the loader threads, so that work overlaps the forward pass instead of running before it. This is the
CPU decoder; whether a JPEG is decoded here or left for a GPU decode is moderation/decoding.py's call.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError

# The fetching reasons are re-exported: every reason an image can fail with is importable from here.
from moderation.fetch import REASON_BLOCKED_ADDRESS as REASON_BLOCKED_ADDRESS
from moderation.fetch import REASON_FETCH_FAILED as REASON_FETCH_FAILED
from moderation.fetch import REASON_NOT_ALLOWED as REASON_NOT_ALLOWED
from moderation.fetch import REASON_NOT_AN_IMAGE, fetch_bytes
from moderation.fetch import REASON_NOT_FOUND as REASON_NOT_FOUND
from moderation.fetch import REASON_TOO_LARGE as REASON_TOO_LARGE
from moderation.perceptual import PdqHash, pdq_hash
from moderation.preprocess import PreprocessSpec, draft_size, to_pixels
from moderation.settings import ImageSettings

if TYPE_CHECKING:  # only for the pixels' type: loading images needs no torch
    import torch

REASON_TOO_MANY_PIXELS = "too_many_pixels"
REASON_DECODE_FAILED = "decode_failed"
REASON_FORMAT_NOT_ALLOWED = "format_not_allowed"
REASON_DECODE_TIMEOUT = "decode_timeout"

_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the picture by 90 degrees (with or without a flip)
# Each scan of a progressive JPEG revisits every block of the picture, and a scan can take a few bytes:
# thousands of them make a small file that decodes for minutes (libjpeg has no limit of its own).
# Encoders write about 10; an EXIF thumbnail adds its own.
MAX_JPEG_SCANS = 100
_DEFAULT_LIMITS = ImageSettings()
# Pillow's decompression-bomb limit is module state shared by every thread in the process, so it is set
# here, once, and never from a loader thread. Pillow warns above it (ignored while opening: the header
# check against `max_pixels` decides) and refuses above twice it; the setting's ceiling stays under
# that, so Pillow never refuses an image `max_pixels` allows. Only a Pillow whose default is lower than
# the ceiling needs raising; a limit someone disabled (None) stays disabled.
if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < ImageSettings.MAX_PIXELS_CEILING:
    Image.MAX_IMAGE_PIXELS = ImageSettings.MAX_PIXELS_CEILING // 2 + 1
# warnings.catch_warnings swaps the process-wide filter list; two loader threads doing it at once can
# restore each other's lists out of order. Opening (header parsing: microseconds) is serialised instead.
_OPEN_LOCK = threading.Lock()


class _OverBudget(Exception):  # noqa: N818 - internal signal, never escapes this module
    """Raised from inside Pillow's reads once the decode deadline has passed."""


class _BudgetedBytes(BytesIO):
    """The encoded image as a file that refuses to be read after `deadline`.

    Pillow parses headers and feeds most decoders (PNG, JPEG, GIF, BMP, uncompressed TIFF) through
    `read`, at most 64 KB at a time, so a decode over budget stops at its next read.
    """

    def __init__(self, data: bytes, deadline: float) -> None:
        super().__init__(data)
        self.deadline = deadline

    def _check(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"stopped at byte {self.tell()} of {len(self.getbuffer())}")

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        return super().read(size)

    def read1(self, size: int | None = -1) -> bytes:
        self._check()
        return super().read1(size)

    def readline(self, size: int | None = -1) -> bytes:
        self._check()
        return super().readline(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check()
        return super().readinto(buffer)


@dataclass(frozen=True)
class LoadedImage:
    # RGB, EXIF orientation applied, when loaded without a spec. None with a spec (`pixels` are what
    # the model takes), or when decoding is left to the GPU (`encoded` and `orientation` are set then,
    # by moderation/decoding.py).
    image: Image.Image | None
    sha256: str  # of the encoded bytes: identifies the same upload seen twice
    nbytes: int
    load_ms: float
    pixels: np.ndarray | torch.Tensor | None = None  # the model input, float32 [3, H, W], given a spec
    encoded: bytes | None = None
    orientation: int = 1
    # The upload's bytes, kept until delivery only when a reviewer copy may be needed (moderation/media.py;
    # `Moderator.keep_bytes`). Apart from `encoded`, which means "left for the GPU decoder" and is cleared
    # once decoded.
    original: bytes | None = field(default=None, repr=False)
    # The picture's PDQ hash (moderation/perceptual.py), from the decoded picture; None when hashing is
    # off (`images.pdq`) or the picture was left to the GPU decoder.
    pdq: PdqHash | None = None


def load_image(event: ImageEvent, limits: ImageSettings, spec: PreprocessSpec | None = None) -> LoadedImage:
    """Fetch and decode the image of one event, or raise `ImageLoadError`.

    With `spec`, JPEGs decode at the smallest DCT scale that keeps the model's resolution and the
    result is the model input (`pixels`, no `image`): a worker's loader threads do all the preprocessing.
    """
    started = time.perf_counter()
    loaded = load_bytes(fetch_bytes(event, limits), limits, spec)
    return replace(loaded, load_ms=(time.perf_counter() - started) * 1000.0)


def load_bytes(data: bytes, limits: ImageSettings, spec: PreprocessSpec | None = None) -> LoadedImage:
    """`load_image` for bytes already fetched (`load_ms` counts the decoding only).

    The decode time budget (`limits.decode_timeout_s`) covers opening, decoding, orientation, colour
    conversion and preprocessing, and is kept as follows. Checks that need no decoding come first
    (format, pixel count, JPEG scan count). Header parsing and the PNG, JPEG, GIF, BMP and uncompressed
    TIFF decoders read the bytes through a file that refuses reads past the deadline, so they stop
    within one 64 KB step of it. Codecs that decode in one native call (WebP, compressed TIFF via
    libtiff) cannot be interrupted from Python: they run to the end, bounded by `max_pixels`. Whatever
    ran over, the image is then refused with ``decode_timeout``, whichever codec it used.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + limits.decode_timeout_s
    sha256 = hashlib.sha256(data).hexdigest()
    image, source_size = _decode(data, limits, spec, deadline)
    pdq = _pdq(image) if limits.pdq else None
    if spec is None:
        _check_budget(started, limits)
        return LoadedImage(image, sha256, len(data), (time.perf_counter() - started) * 1000.0, pdq=pdq)
    try:
        pixels = to_pixels(image, spec, source_size)
    except (OSError, ValueError, MemoryError) as exc:
        raise ImageLoadError(REASON_DECODE_FAILED, f"preprocessing failed: {exc}") from exc
    _check_budget(started, limits)
    # The picture is dropped once the model input exists: a worker holds several batches in flight,
    # and 600 KB per image (224 px) beats the decoded upload (36 MB for a 12 Mpx PNG).
    return LoadedImage(None, sha256, len(data), (time.perf_counter() - started) * 1000.0, pixels=pixels, pdq=pdq)


def _pdq(image: Image.Image) -> PdqHash | None:
    """The picture's PDQ hash; None if hashing fails: the model can still score a picture the hash
    cannot describe (and a bank could not have matched it)."""
    try:
        return pdq_hash(image)
    except Exception:  # noqa: BLE001 - a compiled hasher's failure on one picture must not fail the image
        return None


def _check_budget(started: float, limits: ImageSettings) -> None:
    elapsed = time.perf_counter() - started
    if elapsed > limits.decode_timeout_s:
        budget = limits.decode_timeout_s
        raise ImageLoadError(REASON_DECODE_TIMEOUT, f"took {elapsed:.2f} s, over images.decode_timeout_s={budget}")


def decode_image(data: bytes, max_pixels: int, draft_to: PreprocessSpec | None = None) -> Image.Image:
    """Decode to RGB with the format and pixel count checked from the header, before any pixel is decoded.

    With `draft_to`, a JPEG is decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that still leaves its
    shortest edge at least the spec's resize target: most of the decoding work is skipped, and
    `to_pixels` gives nearly the same model input (pass it the full size, see `load_image`). The other
    limits (formats, decode budget) are the defaults of `ImageSettings`.
    """
    limits = _DEFAULT_LIMITS.model_copy(update={"max_pixels": max_pixels})
    return _decode(data, limits, draft_to, time.monotonic() + limits.decode_timeout_s)[0]


def _decode(
    data: bytes, limits: ImageSettings, draft_to: PreprocessSpec | None, deadline: float
) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB picture and the (width, height) it has at full resolution, EXIF orientation applied."""
    source = _BudgetedBytes(data, deadline)
    try:
        image = _open_checked(source, data, limits)
        width, height = image.size
        try:
            if draft_to is not None and image.format in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG
                # Before load(): the scale is chosen in the decoder. The request is square (see
                # draft_size), so it holds whichever way the EXIF orientation turns the picture.
                image.draft("RGB", draft_size(width, height, draft_to))
            image.load()  # for an animated GIF, WebP or PNG and a multi-page TIFF: the first frame only
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
    except _OverBudget as exc:
        raise ImageLoadError(
            REASON_DECODE_TIMEOUT, f"over images.decode_timeout_s={limits.decode_timeout_s} while decoding, {exc}"
        ) from exc


def _open_checked(source: _BudgetedBytes, data: bytes, limits: ImageSettings) -> Image.Image:
    """Open (parse the header of) an image in an allowed format, within the pixel and scan limits."""
    with _OPEN_LOCK, warnings.catch_warnings():
        # Pillow's warning (over its own limit, which may be under `max_pixels`) is silenced: the check
        # against `max_pixels` right after opening refuses a decompression bomb before any pixel is decoded.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            # Only the allowed formats' plugins parse the bytes; the others are asked only to name a
            # refused format.
            image = Image.open(source, formats=list(limits.allowed_formats))
        except UnidentifiedImageError as exc:
            claimed = _claimed_format(data, limits.allowed_formats)
            if claimed is not None:  # its signature says it is one, its header does not parse: damaged
                raise ImageLoadError(REASON_DECODE_FAILED, f"unreadable header for a {claimed} signature") from exc
            name = _identify(source)
            if name is not None:
                raise ImageLoadError(
                    REASON_FORMAT_NOT_ALLOWED, f"{name} is not one of images.allowed_formats"
                ) from exc
            raise ImageLoadError(REASON_NOT_AN_IMAGE, "not a recognised image format") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(REASON_TOO_MANY_PIXELS, str(exc)) from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageLoadError(REASON_DECODE_FAILED, f"unreadable header: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        limit = limits.max_pixels
        raise ImageLoadError(REASON_TOO_MANY_PIXELS, f"{width}x{height} is over the limit of {limit} pixels")
    scans = jpeg_scans(image, data)
    if scans > MAX_JPEG_SCANS:
        raise ImageLoadError(
            REASON_DECODE_TIMEOUT, f"progressive JPEG with {scans} scans (at most {MAX_JPEG_SCANS}): refused undecoded"
        )
    return image


def read_header(data: bytes, formats: Sequence[str]) -> Image.Image:
    """Open `data` as one of `formats`, parsing its header and decoding nothing, as every open here is:
    serialised, with Pillow's own bomb warning silenced (the caller checks the pixel count)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(BytesIO(data), formats=list(formats))


def _claimed_format(data: bytes, formats: tuple[str, ...]) -> str | None:
    """The allowed format whose signature `data` starts with (Pillow's own check), if any."""
    Image.init()
    for name in formats:
        _, accept = Image.OPEN[name]
        if accept is not None and accept(data[:16]) is True:
            return name
    return None


def _identify(source: _BudgetedBytes) -> str | None:
    """The format Pillow would read `source` as, from its header alone; None if none would."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            source.seek(0)
            return Image.open(source).format
        except _OverBudget:
            raise
        except Exception:  # noqa: BLE001 - unreadable as anything: not an image
            return None


def jpeg_scans(image: Image.Image, data: bytes) -> int:
    """Start-of-scan markers in a progressive JPEG (0 for anything else). 0xFF is byte-stuffed inside
    entropy-coded data, so every FF DA is a marker; those of an embedded thumbnail count too."""
    if image.format not in ("JPEG", "MPO") or not image.info.get("progressive"):
        return 0
    return data.count(b"\xff\xda")


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
