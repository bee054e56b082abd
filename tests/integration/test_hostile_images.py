"""Hostile and odd uploads through the real `Moderator` and the offline test CLIP.

Every file is generated here (no binary fixtures). The broken and hostile ones must each become an
``error`` verdict with its own reason, quickly, while the good images of the same batch are still scored
right; the odd-but-valid ones (thousands of GIF frames, CMYK, 16-bit, EXIF-rotated, palette with
transparency, grey with alpha) must be converted correctly, which the colour model can tell: a
transparent area read as its palette colour would turn a white picture red.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import types
import warnings
import zlib
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile

import moderation.images as images_module
from consumers.messages import header
from consumers.producer import image_event
from moderation.clip_scorer import ClipScorer
from moderation.decoding import load_data
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.images import (
    MAX_JPEG_SCANS,
    REASON_DECODE_FAILED,
    REASON_DECODE_TIMEOUT,
    REASON_FORMAT_NOT_ALLOWED,
    REASON_NOT_AN_IMAGE,
    REASON_TOO_MANY_PIXELS,
    LoadedImage,
    load_bytes,
)
from moderation.moderator import Moderator
from moderation.policy import LoadedPolicy
from moderation.settings import ImageSettings
from moderation.testmodel import make_colour_image
from moderation.verdict import LoadFailure, Verdict, VerdictStatus
from tests.support.fakes import FakeDecoder
from tests.support.kafka import PipelineEnv, committed_total, drain

LIMITS = ImageSettings()
RGB = {"red": (210, 35, 35), "green": (40, 165, 50), "blue": (40, 70, 205), "yellow": (232, 212, 40)}


# --- building the corpus ----------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(colour: str, size: tuple[int, int] = (160, 120), seed: int = 0) -> Image.Image:
    return make_colour_image(colour, size, seed=seed)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: Iterator[bytes]) -> bytes:
    """A PNG written by hand, row by row (filter 0): memory stays small whatever the dimensions."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\0" + row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def huge_png() -> bytes:
    """10,000 x 10,000 pixels (100 megapixels, 400 MB as RGBA) in about 12 KB: 1-bit black rows."""
    return raw_png(10_000, 10_000, 1, 0, (bytes(1250) for _ in range(10_000)))


def png_16_bit(colour: str, size: tuple[int, int] = (64, 48)) -> bytes:
    """16 bits per channel RGB: each 8-bit value v becomes v * 257 (what a camera raw export gives)."""
    pixel = struct.pack(">3H", *(v * 257 for v in RGB[colour]))
    return raw_png(size[0], size[1], 16, 2, (pixel * size[0] for _ in range(size[1])))


def png_grey_16_bit(value: int) -> bytes:
    image = Image.new("I;16", (64, 48), value)
    return encode(image, "PNG")


def gif_blocks(data: bytes) -> bytes:
    """The image blocks of a single-frame GIF: everything after the global colour table, less the trailer."""
    table = 3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0
    return data[13 + table : -1]


def animated_gif(frames: int) -> bytes:
    """A yellow first frame, then `frames` blue ones: anything but frame 1 would be scored blue (safe)."""
    palette = [*RGB["yellow"], *RGB["blue"]] + [0] * (254 * 3)

    def single(index: int) -> bytes:
        image = Image.new("P", (64, 64), index)
        image.putpalette(palette)
        return encode(image, "GIF", optimize=False)

    first = single(0)
    table_end = 13 + 3 * 2 ** ((first[10] & 7) + 1)
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    delay = b"\x21\xf9\x04\x04\x02\x00\x00\x00"  # graphic control: 20 ms, keep the frame
    later = delay + gif_blocks(single(1))
    return b"GIF89a" + first[6:table_end] + loop + delay + gif_blocks(first) + later * frames + b"\x3b"


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment; a scan's end includes its entropy-coded data."""
    position = 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            return
        end = position + 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not FF00 or a restart
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        yield marker, position, end
        position = end


def progressive_scan_bomb(extra_scans: int) -> bytes:
    """A progressive JPEG with one of its scans repeated: libjpeg decodes every repeat (only warning
    about the odd progression), and each costs a pass over the whole picture."""
    data = encode(photo("red", (64, 64)), "JPEG", progressive=True, quality=90)
    scans = [(start, end) for marker, start, end in jpeg_segments(data) if marker == 0xDA]
    start, end = scans[-1]
    return data[:end] + data[start:end] * extra_scans + data[end:]


def png_chunk_flood(chunks: int) -> bytes:
    """A valid PNG with `chunks` empty ancillary chunks before its pixels: parsing them takes seconds."""
    small = encode(Image.new("RGB", (16, 16), RGB["green"]), "PNG")
    header_end = 8 + 25  # signature + IHDR
    return small[:header_end] + png_chunk(b"zzZz", b"") * chunks + small[header_end:]


def exif_rotated(image: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=92)


def noisy_png() -> bytes:
    data = bytes((i * 7919 + (i >> 3) * 104729) % 251 for i in range(128 * 128 * 3))
    return encode(Image.frombytes("RGB", (128, 128), data), "PNG", compress_level=0)


def palette_transparent(transparent_colour: str = "red") -> bytes:
    """Transparent everywhere (palette index 0 holds red) but a small green square in the middle."""
    image = Image.new("P", (100, 100), 0)
    image.putpalette([*RGB[transparent_colour], *RGB["green"]] + [0] * (254 * 3))
    image.paste(1, (40, 40, 60, 60))
    return encode(image, "PNG", transparency=0)


def hostile_corpus(directory: Path) -> dict[str, tuple[ImageEvent, str]]:
    """Name -> (its event, the error reason it must get). Files in `directory` travel as file:// URLs."""
    jpeg = encode(photo("red", (256, 256)), "JPEG", quality=95)
    empty = directory / "empty.jpg"
    empty.write_bytes(b"")
    html = directory / "photo.jpg"
    html.write_bytes(b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n")
    cases: dict[str, tuple[bytes | Path, str]] = {
        "truncated-jpeg": (jpeg[: len(jpeg) * 6 // 10], REASON_DECODE_FAILED),
        "truncated-png": ((png := noisy_png())[: len(png) // 2], REASON_DECODE_FAILED),
        "zero-bytes": (empty, REASON_NOT_AN_IMAGE),
        "html-as-jpg": (html, REASON_NOT_AN_IMAGE),
        "huge-png": (huge_png(), REASON_TOO_MANY_PIXELS),
        "corrupt-png-header": (  # a PNG signature, then absurd sizes with a wrong checksum
            b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", b"\xff" * 13)[:-4] + b"\0\0\0\0",
            REASON_DECODE_FAILED,
        ),
        "ppm": (encode(photo("yellow"), "PPM"), REASON_FORMAT_NOT_ALLOWED),
        "tga": (encode(photo("yellow"), "TGA"), REASON_FORMAT_NOT_ALLOWED),
        "ico": (encode(photo("yellow", (64, 64)), "ICO"), REASON_FORMAT_NOT_ALLOWED),
        "pcx": (encode(photo("yellow"), "PCX"), REASON_FORMAT_NOT_ALLOWED),
        "jpeg-scan-bomb": (progressive_scan_bomb(MAX_JPEG_SCANS * 3), REASON_DECODE_TIMEOUT),
    }
    return {name: (event_for(name, source), reason) for name, (source, reason) in cases.items()}


def event_for(name: str, source: bytes | Path) -> ImageEvent:
    if isinstance(source, Path):
        raw = image_event(content_id=name, source="hostile", image_url=source.as_uri(), event_id=name)
    else:
        raw = image_event(content_id=name, source="hostile", image_bytes=source, event_id=name)
    return ImageEvent.model_validate(raw)


# Name -> (its bytes, top category, action, best prompt when it tells a right conversion from a wrong one).
ODD_BUT_VALID: dict[str, tuple[Callable[[], bytes], str, str, str | None]] = {
    "gif-5000-frames": (lambda: animated_gif(5000), "yellow", "block", None),
    "cmyk-jpeg": (lambda: encode(photo("yellow", seed=3).convert("CMYK"), "JPEG", quality=90), "yellow", "block", None),
    "png-16-bit-rgb": (lambda: png_16_bit("red"), "red", "review", None),
    "png-16-bit-grey-dark": (lambda: png_grey_16_bit(0x1600), "safe", "allow", "a black picture"),  # clipping: white
    "exif-rotated-jpeg": (lambda: exif_rotated(photo("yellow", (300, 200), seed=4)), "yellow", "block", None),
    "palette-transparent": (palette_transparent, "safe", "allow", "a white picture"),  # ignored alpha: red
    "grey-alpha-transparent": (
        lambda: encode(Image.new("LA", (64, 48), (20, 0)), "PNG"),
        "safe",
        "allow",
        "a white picture",
    ),
    "greyscale-black": (lambda: encode(Image.new("L", (64, 48), 22), "PNG"), "safe", "allow", "a black picture"),
    "webp": (lambda: encode(photo("red", seed=5), "WEBP", quality=90), "red", "review", None),
    "bmp": (lambda: encode(photo("green", seed=6), "BMP"), "safe", "allow", None),
    "tiff-deflate": (
        lambda: encode(photo("yellow", seed=7), "TIFF", compression="tiff_adobe_deflate"),
        "yellow",
        "block",
        None,
    ),
}

GOOD = {"good-red": ("red", "review"), "good-yellow": ("yellow", "block"), "good-blue": ("blue", "allow")}


# --- one mixed batch through the real model --------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the corpus' files lie: the `images.file_root` of every moderator that reads them."""
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def hostile(hostile_dir: Path) -> dict[str, tuple[ImageEvent, str]]:
    return hostile_corpus(hostile_dir)


@pytest.fixture(scope="module")
def batch(
    scorer: ClipScorer, test_policy: LoadedPolicy, hostile: dict[str, tuple[ImageEvent, str]], hostile_dir: Path
) -> tuple[list[ImageEvent], list[Verdict], float]:
    """Good, hostile and odd images interleaved in one batch, moderated once."""
    odd = [event_for(name, make()) for name, (make, *_) in ODD_BUT_VALID.items()]
    good = [
        event_for(name, encode(photo(colour, (200, 150), seed=i), "JPEG", quality=90))
        for i, (name, (colour, _)) in enumerate(GOOD.items())
    ]
    bad = [event for event, _ in hostile.values()]
    events = [e for group in zip(bad, odd + good, strict=False) for e in group]
    events += bad[len(odd + good) :] + (odd + good)[len(bad) :]
    assert len(events) == len(bad) + len(odd) + len(good)
    moderator = Moderator(scorer, test_policy, LIMITS.model_copy(update={"file_root": hostile_dir}), loader_threads=2)
    try:
        started = time.perf_counter()
        verdicts = moderator.moderate(events)
        elapsed = time.perf_counter() - started
    finally:
        moderator.close()
    return events, verdicts, elapsed


def by_id(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {v.event_id: v for v in verdicts}


def test_one_verdict_per_event_in_order(batch: tuple[list[ImageEvent], list[Verdict], float]) -> None:
    events, verdicts, elapsed = batch
    assert [v.event_id for v in verdicts] == [e.event_id for e in events]
    assert elapsed < 10.0  # 25 images, hostile ones included, on a CPU shared with other tests


@pytest.mark.parametrize(
    "name",
    [
        "truncated-jpeg",
        "truncated-png",
        "zero-bytes",
        "html-as-jpg",
        "huge-png",
        "corrupt-png-header",
        "ppm",
        "tga",
        "ico",
        "pcx",
        "jpeg-scan-bomb",
    ],
)
def test_each_hostile_upload_is_an_error_verdict_with_its_reason(
    batch: tuple[list[ImageEvent], list[Verdict], float], hostile: dict[str, tuple[ImageEvent, str]], name: str
) -> None:
    verdict = by_id(batch[1])[name]
    assert verdict.status is VerdictStatus.ERROR
    assert verdict.error_reason == hostile[name][1], verdict.error_detail
    assert not verdict.flagged and verdict.action is None and verdict.scores == {}
    assert verdict.error_detail


@pytest.mark.parametrize("name", list(ODD_BUT_VALID))
def test_odd_but_valid_uploads_are_scored_correctly(
    batch: tuple[list[ImageEvent], list[Verdict], float], name: str
) -> None:
    _, category, action, prompt = ODD_BUT_VALID[name]
    verdict = by_id(batch[1])[name]
    assert verdict.status is VerdictStatus.OK, verdict.error_detail
    assert (verdict.top_category, verdict.action) == (category, action), verdict.scores
    if prompt is not None:
        assert verdict.best_prompt == prompt


@pytest.mark.parametrize("name", list(GOOD))
def test_good_images_in_the_hostile_batch_are_scored_correctly(
    batch: tuple[list[ImageEvent], list[Verdict], float], name: str
) -> None:
    verdict = by_id(batch[1])[name]
    assert verdict.status is VerdictStatus.OK
    assert verdict.action == GOOD[name][1], verdict.scores


def test_off_list_formats_are_named(batch: tuple[list[ImageEvent], list[Verdict], float]) -> None:
    verdicts = by_id(batch[1])
    assert {name: verdicts[name].error_detail for name in ("ppm", "tga", "ico", "pcx")} == {
        "ppm": "PPM is not one of images.allowed_formats",
        "tga": "TGA is not one of images.allowed_formats",
        "ico": "ICO is not one of images.allowed_formats",
        "pcx": "PCX is not one of images.allowed_formats",
    }


# --- each limit, timed ------------------------------------------------------------------------------


@pytest.fixture
def decode_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record every pixel decode (ImageFile.load) the code under test starts."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def refused(
    data: bytes, limits: ImageSettings = LIMITS, load: Callable[..., LoadedImage] = load_bytes, **kwargs: Any
) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load(data, limits, **kwargs)
    return info.value


def test_the_huge_png_is_a_few_kilobytes_and_refused_from_its_header(decode_spy: list[tuple[int, int]]) -> None:
    data = huge_png()
    assert len(data) < 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert Image.open(BytesIO(data)).size == (10_000, 10_000)
    started = time.perf_counter()
    error = refused(data)
    assert time.perf_counter() - started < 0.5
    assert error.reason == REASON_TOO_MANY_PIXELS
    assert decode_spy == []  # not one pixel decoded


def test_pillows_bomb_warning_never_escapes_as_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert refused(huge_png()).reason == REASON_TOO_MANY_PIXELS
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


class _WatchedModule(types.ModuleType):
    """PIL.Image with its attribute writes recorded: Pillow's pixel limit is process-wide state."""

    writes: list[tuple[str, object]] = []

    def __setattr__(self, name: str, value: object) -> None:
        _WatchedModule.writes.append((name, value))
        super().__setattr__(name, value)


@pytest.fixture
def pillow_writes() -> Iterator[list[tuple[str, object]]]:
    _WatchedModule.writes = []
    original = Image.__class__
    Image.__class__ = _WatchedModule
    try:
        yield _WatchedModule.writes
    finally:
        Image.__class__ = original


def test_decoding_never_writes_pillows_pixel_limit(pillow_writes: list[tuple[str, object]]) -> None:
    """Pillow's limit is module state shared by every thread: loads read it, never set it."""
    before = Image.MAX_IMAGE_PIXELS
    good = encode(photo("red", (64, 48)), "PNG")
    assert isinstance(load_bytes(good, LIMITS), LoadedImage)
    assert isinstance(load_bytes(good, ImageSettings(max_pixels=150_000_000)), LoadedImage)  # over Pillow's own
    assert refused(huge_png()).reason == REASON_TOO_MANY_PIXELS
    assert refused(huge_png(), ImageSettings(max_pixels=99_999_999)).reason == REASON_TOO_MANY_PIXELS
    assert [name for name, _ in pillow_writes if name == "MAX_IMAGE_PIXELS"] == []
    assert Image.MAX_IMAGE_PIXELS == before


def test_pillows_limit_never_refuses_what_the_setting_allows() -> None:
    """Pillow errors above twice its limit; the setting's ceiling stays under that, so the setting decides."""
    assert Image.MAX_IMAGE_PIXELS is not None
    assert ImageSettings.MAX_PIXELS_CEILING <= 2 * Image.MAX_IMAGE_PIXELS
    assert ImageSettings(max_pixels=ImageSettings.MAX_PIXELS_CEILING).max_pixels == ImageSettings.MAX_PIXELS_CEILING
    with pytest.raises(ValueError, match="max_pixels"):
        ImageSettings(max_pixels=ImageSettings.MAX_PIXELS_CEILING + 1)


def test_a_large_limit_lets_a_large_header_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """100 Mpx is over Pillow's own warning limit: with max_pixels above it, decoding starts (stopped
    here before any pixel), with Pillow's warning neither raised nor shown."""

    class Started(Exception):
        pass

    def stop_at_decode(self: ImageFile.ImageFile) -> None:
        raise Started

    monkeypatch.setattr(ImageFile.ImageFile, "load", stop_at_decode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Started):
            load_bytes(huge_png(), ImageSettings(max_pixels=150_000_000))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_the_pixel_limit_still_refuses_a_bomb_at_every_setting() -> None:
    over_pillows_error = raw_png(20_000, 10_000, 1, 0, iter([bytes(2500)]))  # 200 Mpx header, one row of data
    for max_pixels in (1_000_000, LIMITS.max_pixels, ImageSettings.MAX_PIXELS_CEILING):
        assert refused(over_pillows_error, ImageSettings(max_pixels=max_pixels)).reason == REASON_TOO_MANY_PIXELS
        assert refused(huge_png(), ImageSettings(max_pixels=min(max_pixels, 99_999_999))).reason == (
            REASON_TOO_MANY_PIXELS
        )


def test_thousands_of_gif_frames_cost_one_frame(scorer: ClipScorer) -> None:
    data = animated_gif(5000)
    image = Image.open(BytesIO(data))
    assert image.n_frames == 5001  # really animated
    image.seek(4000)
    assert image.convert("RGB").getpixel((5, 5)) == RGB["blue"]  # and the later frames differ
    started = time.perf_counter()
    loaded = load_bytes(data, LIMITS, scorer.preprocess_spec)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert loaded.pixels is not None
    print(f"\n5001-frame GIF ({len(data)} bytes) loaded in {elapsed * 1000:.1f} ms")


def test_a_jpeg_scan_bomb_is_refused_undecoded(decode_spy: list[tuple[int, int]]) -> None:
    data = progressive_scan_bomb(MAX_JPEG_SCANS * 3)
    started = time.perf_counter()
    error = refused(data)
    assert time.perf_counter() - started < 0.5
    assert error.reason == REASON_DECODE_TIMEOUT
    assert f"at most {MAX_JPEG_SCANS}" in error.detail
    assert decode_spy == []
    decoded = Image.open(BytesIO(data))
    decoded.load()  # libjpeg itself decodes it (small here): a valid file, refused by the rule alone
    assert decoded.size == (64, 64)


def test_an_ordinary_progressive_jpeg_is_not_a_scan_bomb() -> None:
    data = encode(photo("red", (640, 480)), "JPEG", progressive=True, quality=90)
    assert isinstance(load_bytes(data, LIMITS), LoadedImage)


def test_a_png_chunk_flood_stops_at_the_decode_budget() -> None:
    data = png_chunk_flood(1_000_000)  # 12 MB: Pillow needs seconds to walk the chunks
    limits = ImageSettings(decode_timeout_s=0.25)
    started = time.perf_counter()
    error = refused(data, limits)
    elapsed = time.perf_counter() - started
    assert error.reason == REASON_DECODE_TIMEOUT
    assert elapsed < 1.5, elapsed  # the budget plus one read, not the whole walk
    stopped_at, total = (int(n) for n in error.detail.split("stopped at byte ")[1].split(" of "))
    assert stopped_at < total == len(data)
    print(f"\nPNG chunk flood ({len(data)} bytes): refused after {elapsed:.2f} s (budget 0.25 s)")


def test_a_decode_that_ran_over_in_native_code_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """WebP and libtiff decode in one uninterruptible call: the budget is checked when it returns."""
    real = images_module.to_rgb

    def slow_to_rgb(image: Image.Image) -> Image.Image:
        time.sleep(0.3)  # stands in for a long native decode
        return real(image)

    monkeypatch.setattr(images_module, "to_rgb", slow_to_rgb)
    data = encode(photo("red", seed=5), "WEBP")
    error = refused(data, ImageSettings(decode_timeout_s=0.1))
    assert error.reason == REASON_DECODE_TIMEOUT
    assert "over images.decode_timeout_s=0.1" in error.detail
    assert isinstance(load_bytes(data, ImageSettings(decode_timeout_s=5.0)), LoadedImage)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_allowed_format_keeps_the_budget(fmt: str) -> None:
    data = encode(photo("blue", (64, 64)).convert("P") if fmt == "GIF" else photo("blue", (64, 64)), fmt)
    assert isinstance(load_bytes(data, LIMITS), LoadedImage)
    assert refused(data, ImageSettings(decode_timeout_s=1e-9)).reason == REASON_DECODE_TIMEOUT


def test_a_narrower_allow_list_refuses_from_the_header(scorer: ClipScorer, decode_spy: list[tuple[int, int]]) -> None:
    png_only = ImageSettings(allowed_formats=["png"])
    assert png_only.allowed_formats == ("PNG",)
    jpeg = encode(photo("red"), "JPEG")
    error = refused(jpeg, png_only)
    assert (error.reason, error.detail) == (REASON_FORMAT_NOT_ALLOWED, "JPEG is not one of images.allowed_formats")
    # The GPU path (JPEGs left undecoded for nvjpeg) obeys the list too.
    deferring = {"spec": scorer.preprocess_spec, "decoder": FakeDecoder(scorer.preprocess_spec), "load": load_data}
    assert refused(jpeg, png_only, **deferring).reason == REASON_FORMAT_NOT_ALLOWED
    assert decode_spy == []
    assert isinstance(load_bytes(encode(photo("red"), "PNG"), png_only), LoadedImage)


def test_unknown_formats_in_the_setting_fail_at_start_up() -> None:
    with pytest.raises(ValueError, match="NOT-A-FORMAT"):
        ImageSettings(allowed_formats=["JPEG", "not-a-format"])
    with pytest.raises(ValueError):
        ImageSettings(allowed_formats=[])


def test_exif_rotation_reaches_the_model_input(scorer: ClipScorer) -> None:
    """Stored left yellow / right blue, orientation 6 (turn clockwise): upright, yellow is on top."""
    stored = Image.new("RGB", (300, 300), RGB["blue"])
    stored.paste(RGB["yellow"], (0, 0, 150, 300))
    pixels = load_bytes(exif_rotated(stored), LIMITS, scorer.preprocess_spec).pixels
    assert pixels is not None
    spec = scorer.preprocess_spec
    mean, std = spec.mean[2], spec.std[2]
    top_blue, bottom_blue = (float(pixels[2, y, pixels.shape[2] // 2]) * std + mean for y in (10, -10))
    assert top_blue < 0.4 < 0.6 < bottom_blue  # blue channel: low over yellow (top), high over blue


def test_loader_threads_leave_the_warning_filters_as_they_were() -> None:
    """Opening serialises its catch_warnings: concurrent loads cannot scramble the process's filters."""
    before = list(warnings.filters)
    bomb, good = huge_png(), encode(photo("red", (64, 64)), "JPEG")
    errors: list[BaseException] = []

    def work(data: bytes) -> None:
        for _ in range(20):
            try:
                load_bytes(data, LIMITS)
            except ImageLoadError as exc:
                if exc.reason != REASON_TOO_MANY_PIXELS:
                    errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in (bomb, good) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert warnings.filters == before


def test_a_hostile_item_never_fails_its_neighbours(scorer: ClipScorer, test_policy: LoadedPolicy) -> None:
    """load_one on the worst cases: a failure comes back as a value, in well under a second each."""
    moderator = Moderator(scorer, test_policy, ImageSettings(decode_timeout_s=0.25), loader_threads=1)
    try:
        for name, data in {
            "flood": png_chunk_flood(300_000),
            "bomb": huge_png(),
            "scans": progressive_scan_bomb(400),
        }.items():
            started = time.perf_counter()
            item = moderator.load_one(event_for(name, data))
            assert isinstance(item, LoadFailure), name
            assert time.perf_counter() - started < 1.0, name
    finally:
        moderator.close()


# --- through the real worker and broker -------------------------------------------------------------


@pytest.mark.kafka
def test_the_worker_keeps_going_through_a_hostile_stream(
    pipeline_env: Callable[..., PipelineEnv],
    sqlite_url: str,
    scorer: ClipScorer,
    hostile: dict[str, tuple[ImageEvent, str]],
    hostile_dir: Path,
) -> None:
    """Hostile images and hostile events mixed with good ones: every record committed, nothing stuck."""
    env = pipeline_env(sqlite_url, max_size=8)
    images_settings = env.settings.images.model_copy(update={"file_root": hostile_dir})
    env.settings = env.settings.model_copy(update={"images": images_settings})
    images = [event for event, _ in hostile.values()]
    images += [event_for(name, make()) for name, (make, *_) in ODD_BUT_VALID.items()]
    images += [event_for(name, encode(photo(colour), "PNG")) for name, (colour, _) in GOOD.items()]
    poison = [b"[" * 100_000, b'{"schema_version": ' + b"9" * 5_000 + b"}", b"\xff\xfe\x00garbage"]
    records: list[dict[str, Any] | bytes] = [json.loads(e.model_dump_json(exclude_none=True)) for e in images]
    records[5:5] = poison  # in the middle of the stream, not at its end
    produced = env.produce(records)
    assert produced == len(images) + len(poison)

    store = drain(env, sqlite_url, scorer, produced)  # one worker, policies/test-model.yaml, until all committed

    assert committed_total(env.settings) == produced  # every record, the poison ones included
    verdicts = {v.event_id: v for v in store.recent(limit=1000)}
    assert store.count() == len(verdicts) == len(images)
    for name, (_, reason) in hostile.items():
        assert (verdicts[name].status, verdicts[name].error_reason) == (VerdictStatus.ERROR, reason)
    for name, (_, _, action, _) in ODD_BUT_VALID.items():
        assert (verdicts[name].status, verdicts[name].action) == (VerdictStatus.OK, action)
    for name, (_, action) in GOOD.items():
        assert (verdicts[name].status, verdicts[name].action) == (VerdictStatus.OK, action)
    dead = env.read(env.settings.kafka.dead_letter_topic)
    assert sorted(record.value for record in dead) == sorted(poison)
    assert {header(record.headers, "dlq.reason") for record in dead} == {"invalid_json"}
