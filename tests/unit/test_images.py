"""moderation/images.py: fetching under limits and decoding any Pillow format to RGB.

Every image is generated here with Pillow; the only network target is a local `http.server` bound to
127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageFile

from consumers.producer import image_event
from moderation.decoding import load_data, load_event
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError, ModerationError
from moderation.images import (
    REASON_DECODE_FAILED,
    REASON_FETCH_FAILED,
    REASON_NOT_ALLOWED,
    REASON_NOT_AN_IMAGE,
    REASON_NOT_FOUND,
    REASON_TOO_LARGE,
    REASON_TOO_MANY_PIXELS,
    LoadedImage,
    decode_image,
    fetch_bytes,
    load_image,
    to_rgb,
)
from moderation.preprocess import PreprocessSpec
from moderation.settings import ImageSettings
from tests.support.fakes import FakeDecoder

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

DEFAULT_LIMITS = ImageSettings()
# The loopback test server is a private address: only reachable when private networks are allowed.
LOCAL = ImageSettings(allow_private_networks=True)


# --- helpers ----------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def two_colour(
    size: tuple[int, int] = (32, 24), left: tuple[int, ...] = RED, right: tuple[int, ...] = BLUE, mode: str = "RGB"
) -> Image.Image:
    """Left half one colour, right half another."""
    width, height = size
    image = Image.new(mode, size, right)
    image.paste(left, (0, 0, width // 2, height))
    return image


def noise_jpeg(size: tuple[int, int] = (128, 128)) -> bytes:
    """A JPEG with a lot of entropy-coded data, so a cut lands in the middle of the scan."""
    data = bytes((i * 7919 + (i >> 3) * 104729) % 251 for i in range(size[0] * size[1] * 3))
    return encode(Image.frombytes("RGB", size, data), "JPEG", quality=95)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def inline(data: bytes) -> ImageEvent:
    return ImageEvent.model_validate(image_event(content_id="c", source="test", image_bytes=data))


def url_event(url: str) -> ImageEvent:
    return ImageEvent.model_validate(image_event(content_id="c", source="test", image_url=url))


def file_event(path: Path) -> ImageEvent:
    return url_event(path.as_uri())


def refused(event: ImageEvent, limits: ImageSettings = DEFAULT_LIMITS) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(event, limits)
    assert isinstance(info.value, ModerationError)
    assert str(info.value) == f"{info.value.reason}: {info.value.detail}"
    return info.value


def decode_refused(data: bytes, max_pixels: int = DEFAULT_LIMITS.max_pixels) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        decode_image(data, max_pixels)
    return info.value


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def black_greyscale_png(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG written row by row: memory stays small whatever the dimensions."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + black pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def padded(data: bytes, size: int) -> bytes:
    """PNG decoders ignore anything after IEND: pad a PNG to an exact size."""
    assert len(data) <= size
    return data + b"\x00" * (size - len(data))


@pytest.fixture
def red_blue_png() -> bytes:
    return encode(two_colour(), "PNG")


# --- decoding formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "tolerance"),
    [("JPEG", 40), ("PNG", 0), ("WEBP", 40), ("GIF", 0), ("BMP", 0), ("TIFF", 0)],
)
def test_formats_decode_to_rgb(fmt: str, tolerance: int) -> None:
    data = encode(two_colour(), fmt)
    assert Image.open(BytesIO(data)).format == fmt
    loaded = load_image(inline(data), DEFAULT_LIMITS)
    assert isinstance(loaded, LoadedImage)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (32, 24)
    assert close_to(loaded.image.getpixel((4, 12)), RED, tolerance)
    assert close_to(loaded.image.getpixel((28, 12)), BLUE, tolerance)


def test_loaded_image_carries_hash_size_and_timing(red_blue_png: bytes) -> None:
    event = inline(red_blue_png)
    loaded = load_image(event, DEFAULT_LIMITS)
    assert loaded.sha256 == hashlib.sha256(red_blue_png).hexdigest()
    assert event.image_ref == f"inline:sha256:{loaded.sha256}"  # the same upload, the same identity
    assert loaded.nbytes == len(red_blue_png)
    assert loaded.load_ms >= 0.0


def test_exif_orientation_6_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(two_colour((40, 20)), "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(BytesIO(data)).size == (40, 20)  # stored landscape
    image = decode_image(data, DEFAULT_LIMITS.max_pixels)
    assert image.mode == "RGB"
    assert image.size == (20, 40)  # displayed portrait
    # Turning clockwise brings the left (red) edge to the top.
    assert close_to(image.getpixel((10, 5)), RED, 40)
    assert close_to(image.getpixel((10, 35)), BLUE, 40)


def test_exif_orientation_3_is_a_half_turn() -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    image = decode_image(encode(two_colour((40, 20)), "JPEG", exif=exif.tobytes(), quality=95), 10**6)
    assert image.size == (40, 20)
    assert close_to(image.getpixel((5, 10)), BLUE, 40)
    assert close_to(image.getpixel((35, 10)), RED, 40)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    image = Image.new("P", (20, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.paste(0, (0, 0, 10, 10))  # left half: index 0, transparent black
    data = encode(image, fmt, transparency=0)
    decoded = decode_image(data, 10**6)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((2, 5)) == WHITE  # not the black the palette holds
    assert decoded.getpixel((17, 5)) == RED


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (30, 10), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 10, 10))  # transparent black
    image.paste((255, 0, 0, 128), (10, 0, 20, 10))  # half-transparent red
    decoded = decode_image(encode(image, "PNG"), 10**6)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == WHITE
    assert close_to(decoded.getpixel((15, 5)), (255, 127, 127), 2)
    assert decoded.getpixel((25, 5)) == BLUE


def test_la_is_composited_on_white() -> None:
    image = Image.new("LA", (30, 10), (100, 255))
    image.paste((0, 0), (0, 0, 10, 10))  # transparent black
    image.paste((0, 255), (10, 0, 20, 10))  # opaque black
    decoded = decode_image(encode(image, "PNG"), 10**6)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == WHITE
    assert decoded.getpixel((15, 5)) == BLACK
    assert decoded.getpixel((25, 5)) == (100, 100, 100)


def test_cmyk_jpeg_converts_to_rgb() -> None:
    image = Image.new("CMYK", (30, 10), (0, 0, 0, 0))  # white
    image.paste((0, 255, 255, 0), (0, 0, 10, 10))  # red
    image.paste((0, 0, 0, 255), (10, 0, 20, 10))  # black
    data = encode(image, "JPEG", quality=95)
    assert Image.open(BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data, 10**6)
    assert decoded.mode == "RGB"
    assert close_to(decoded.getpixel((5, 5)), RED, 30)
    assert close_to(decoded.getpixel((15, 5)), BLACK, 30)
    assert close_to(decoded.getpixel((25, 5)), WHITE, 30)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    row = [65535] * 10 + [256 * 64] * 10 + [0] * 10  # white, a quarter grey, black
    image = Image.frombytes("I;16", (30, 10), struct.pack("<300H", *(row * 10)))
    assert [image.getpixel((x, 5)) for x in (5, 15, 25)] == [65535, 16384, 0]
    data = encode(image, "PNG")
    assert Image.open(BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data, 10**6)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == WHITE
    assert decoded.getpixel((15, 5)) == (64, 64, 64)  # clipping would give white
    assert decoded.getpixel((25, 5)) == BLACK


def test_32_bit_integer_image_is_scaled() -> None:
    assert to_rgb(Image.new("I", (4, 4), 40000)).getpixel((0, 0)) == (156, 156, 156)


def test_greyscale_becomes_grey_rgb() -> None:
    image = Image.new("L", (20, 10), 200)
    image.paste(30, (0, 0, 10, 10))
    decoded = decode_image(encode(image, "PNG"), 10**6)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == (30, 30, 30)
    assert decoded.getpixel((15, 5)) == (200, 200, 200)


def test_bilevel_becomes_black_and_white() -> None:
    image = Image.new("1", (20, 10), 1)
    image.paste(0, (0, 0, 10, 10))
    decoded = decode_image(encode(image, "PNG"), 10**6)
    assert decoded.getpixel((5, 5)) == BLACK
    assert decoded.getpixel((15, 5)) == WHITE


def test_rgb_passes_through_unchanged() -> None:
    image = two_colour()
    assert to_rgb(image) is image


# --- undecodable bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.5, 0.8])
def test_truncated_jpeg_is_decode_failed(fraction: float) -> None:
    data = noise_jpeg()
    cut = data[: int(len(data) * fraction)]
    error = decode_refused(cut)
    assert error.reason == REASON_DECODE_FAILED
    assert "JPEG" in error.detail


def test_truncated_png_is_decode_failed() -> None:
    data = encode(Image.frombytes("L", (64, 64), bytes(i % 251 for i in range(64 * 64))), "PNG", compress_level=0)
    error = decode_refused(data[: len(data) // 2])
    assert error.reason == REASON_DECODE_FAILED


def test_zero_bytes_inline_is_not_an_image() -> None:
    event = ImageEvent.model_validate({**image_event(content_id="c", source="s", image_bytes=b"x"), "image_base64": ""})
    error = refused(event)
    assert error.reason == REASON_NOT_AN_IMAGE
    assert error.detail == "zero bytes"


def test_zero_bytes_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert refused(file_event(path), ImageSettings(file_root=tmp_path)).reason == REASON_NOT_AN_IMAGE


def test_zero_bytes_decode_is_not_an_image() -> None:
    assert decode_refused(b"").reason == REASON_NOT_AN_IMAGE


@pytest.mark.parametrize(
    "data",
    [b"hello, I am definitely a PNG file, trust me\n" * 10, b"<html><body>403 Forbidden</body></html>"],
    ids=["text", "html"],
)
def test_text_posing_as_an_image_is_not_an_image(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    error = refused(file_event(path), ImageSettings(file_root=tmp_path))
    assert error.reason == REASON_NOT_AN_IMAGE
    assert refused(inline(data)).reason == REASON_NOT_AN_IMAGE


def test_image_signature_with_a_broken_header_is_decode_failed() -> None:
    # It claims to be a PNG, so it is a damaged image rather than something else entirely.
    error = decode_refused(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    assert error.reason == REASON_DECODE_FAILED
    assert error.detail.startswith("unreadable header")


# --- pixel limits, checked from the header ----------------------------------------------------------


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """10000 x 10000 black greyscale: 100 megapixels in about 100 KB."""
    return black_greyscale_png(10_000, 10_000)


@pytest.fixture
def load_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record every pixel decode (ImageFile.load) the code under test starts."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_huge_png_is_small_on_the_wire(huge_png: bytes) -> None:
    assert len(huge_png) < 200_000
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow itself only warns at this size
        assert Image.open(BytesIO(huge_png)).size == (10_000, 10_000)  # header only: nothing decoded


def test_huge_dimensions_are_refused_from_the_header(huge_png: bytes, load_spy: list[tuple[int, int]]) -> None:
    error = refused(inline(huge_png), ImageSettings(max_pixels=1_000_000))
    assert error.reason == REASON_TOO_MANY_PIXELS
    assert load_spy == []  # refused before a single pixel was decoded


def test_own_pixel_limit_below_pillows_is_checked_from_the_header(load_spy: list[tuple[int, int]]) -> None:
    data = black_greyscale_png(5_000, 5_000)  # 25 MP: under Pillow's own bomb limit, over ours
    error = decode_refused(data, max_pixels=1_000_000)
    assert error.reason == REASON_TOO_MANY_PIXELS
    assert error.detail == "5000x5000 is over the limit of 1000000 pixels"
    assert load_spy == []


def test_pixel_limit_is_inclusive(load_spy: list[tuple[int, int]]) -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    assert load_spy and set(load_spy) == {(100, 100)}  # the spy does see real decodes
    assert decode_refused(data, max_pixels=9_999).reason == REASON_TOO_MANY_PIXELS


# --- byte limits ------------------------------------------------------------------------------------


def test_max_bytes_inline(red_blue_png: bytes) -> None:
    limits = ImageSettings(max_bytes=2048)
    assert load_image(inline(padded(red_blue_png, 2048)), limits).nbytes == 2048
    error = refused(inline(padded(red_blue_png, 2049)), limits)
    assert error.reason == REASON_TOO_LARGE
    assert error.detail == "2049 bytes is over the limit of 2048"


def test_max_bytes_file(tmp_path: Path, red_blue_png: bytes) -> None:
    limits = ImageSettings(max_bytes=2048, file_root=tmp_path)
    exact = tmp_path / "exact.png"
    exact.write_bytes(padded(red_blue_png, 2048))
    assert load_image(file_event(exact), limits).nbytes == 2048
    over = tmp_path / "over.png"
    over.write_bytes(padded(red_blue_png, 2049))
    error = refused(file_event(over), limits)
    assert error.reason == REASON_TOO_LARGE
    assert "2048" in error.detail


def test_max_bytes_file_reads_only_up_to_the_limit(tmp_path: Path, red_blue_png: bytes) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(padded(red_blue_png, 5 * 1024 * 1024))
    error = refused(file_event(big), ImageSettings(max_bytes=4096, file_root=tmp_path))
    assert error.reason == REASON_TOO_LARGE
    assert error.detail == f"{5 * 1024 * 1024} bytes is over the limit of 4096"  # from its size: nothing read


# --- file:// ----------------------------------------------------------------------------------------


def test_file_url_loads(tmp_path: Path, red_blue_png: bytes) -> None:
    path = tmp_path / "a picture.png"  # a space: percent-encoded in the URL
    path.write_bytes(red_blue_png)
    event = file_event(path)
    assert "%20" in event.image_url
    loaded = load_image(event, ImageSettings(file_root=tmp_path))
    assert loaded.image.size == (32, 24)
    assert loaded.sha256 == hashlib.sha256(red_blue_png).hexdigest()


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    error = refused(file_event(tmp_path / "nope.png"), ImageSettings(file_root=tmp_path))
    assert error.reason == REASON_NOT_FOUND
    assert "nope.png" in error.detail


def test_directory_is_fetch_failed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert refused(file_event(tmp_path / "sub"), ImageSettings(file_root=tmp_path)).reason == REASON_FETCH_FAILED


def test_allow_file_false_is_not_allowed(tmp_path: Path, red_blue_png: bytes) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(red_blue_png)
    error = refused(file_event(path), ImageSettings(allow_file=False, file_root=tmp_path))
    assert error.reason == REASON_NOT_ALLOWED
    assert "allow_file" in error.detail


@pytest.fixture
def rooted(tmp_path: Path, red_blue_png: bytes) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    inside = root / "sub" / "in.png"
    inside.write_bytes(red_blue_png)
    outside = outside_dir / "out.png"
    outside.write_bytes(red_blue_png)
    return {"root": root, "inside": inside, "outside": outside, "outside_dir": outside_dir}


def test_file_root_allows_files_under_it(rooted: dict[str, Path]) -> None:
    limits = ImageSettings(file_root=rooted["root"])
    assert load_image(file_event(rooted["inside"]), limits).image.size == (32, 24)


def test_file_root_refuses_a_path_outside(rooted: dict[str, Path]) -> None:
    error = refused(file_event(rooted["outside"]), ImageSettings(file_root=rooted["root"]))
    assert error.reason == REASON_NOT_ALLOWED
    assert "outside images.file_root" in error.detail


def test_file_root_refuses_dot_dot_escape(rooted: dict[str, Path]) -> None:
    url = f"file://{rooted['root']}/sub/../../outside/out.png"
    error = refused(url_event(url), ImageSettings(file_root=rooted["root"]))
    assert error.reason == REASON_NOT_ALLOWED


def test_file_root_refuses_a_symlink_escaping_it(rooted: dict[str, Path]) -> None:
    link = rooted["root"] / "sub" / "link.png"
    link.symlink_to(rooted["outside"])
    assert link.read_bytes()  # the link works; only the root rule stops it
    error = refused(file_event(link), ImageSettings(file_root=rooted["root"]))
    assert error.reason == REASON_NOT_ALLOWED


def test_file_root_refuses_a_directory_symlink_escaping_it(rooted: dict[str, Path]) -> None:
    (rooted["root"] / "dirlink").symlink_to(rooted["outside_dir"], target_is_directory=True)
    error = refused(file_event(rooted["root"] / "dirlink" / "out.png"), ImageSettings(file_root=rooted["root"]))
    assert error.reason == REASON_NOT_ALLOWED


def test_file_root_allows_a_symlink_staying_inside(rooted: dict[str, Path]) -> None:
    link = rooted["root"] / "alias.png"
    link.symlink_to(rooted["inside"])
    assert load_image(file_event(link), ImageSettings(file_root=rooted["root"])).image.size == (32, 24)


def test_file_root_refuses_a_sibling_with_a_common_prefix(tmp_path: Path, red_blue_png: bytes) -> None:
    (tmp_path / "root").mkdir()
    sibling = tmp_path / "root-evil" / "a.png"
    sibling.parent.mkdir()
    sibling.write_bytes(red_blue_png)
    assert refused(file_event(sibling), ImageSettings(file_root=tmp_path / "root")).reason == REASON_NOT_ALLOWED


def test_file_root_refuses_before_revealing_existence(rooted: dict[str, Path]) -> None:
    error = refused(file_event(rooted["outside_dir"] / "missing.png"), ImageSettings(file_root=rooted["root"]))
    assert error.reason == REASON_NOT_ALLOWED  # not not_found: no probing outside the root


def test_missing_file_under_root_is_not_found(rooted: dict[str, Path]) -> None:
    error = refused(file_event(rooted["root"] / "missing.png"), ImageSettings(file_root=rooted["root"]))
    assert error.reason == REASON_NOT_FOUND


# --- http(s):// on a loopback server ----------------------------------------------------------------

STREAM_TOTAL = 512 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "image/png") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.paths.append(self.path)
        if self.path == "/image.png":
            self._send(200, self.server.image)
        elif self.path == "/missing.png":
            self._send(404, b"not here", "text/plain")
        elif self.path == "/gone.png":
            self._send(410, b"gone", "text/plain")
        elif self.path == "/error.png":
            self._send(500, b"boom", "text/plain")
        elif self.path == "/html.png":
            self._send(200, b"<html><body>login required</body></html>", "text/html")
        elif self.path == "/slow.png":
            self.server.release.wait(10)  # longer than any fetch timeout in these tests
            try:
                self._send(200, self.server.image)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up long ago, as it should
        elif self.path == "/trickle.png":
            # A valid length, then one byte every 0.1 s: each read is quick, the whole body never is.
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.server.image)))
            self.end_headers()
            try:
                for byte in self.server.image:
                    if self.server.release.wait(0.1):
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up at its deadline, as it should
        elif self.path == "/declared-huge.png":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif self.path == "/stream.png":
            # No Content-Length: HTTP/1.0, the body ends when the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(STREAM_TOTAL // 8192):
                    self.wfile.write(b"\x00" * 8192)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its limit, as it should
        else:
            self._send(404, b"", "text/plain")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    image: bytes
    release: threading.Event
    paths: list[str]


@pytest.fixture(scope="module")
def http_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.image = encode(two_colour(), "PNG")
    server.release = threading.Event()
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests must go straight to the loopback server, never through a proxy from the environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def local_url(server: _Server, path: str) -> str:
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}{path}"
    assert urlsplit(url).hostname == "127.0.0.1"  # the only network target these tests may use
    return url


def test_http_image_loads(http_server: _Server) -> None:
    loaded = load_image(url_event(local_url(http_server, "/image.png")), LOCAL)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (32, 24)
    assert loaded.sha256 == hashlib.sha256(http_server.image).hexdigest()
    assert "/image.png" in http_server.paths


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/missing.png", REASON_NOT_FOUND), ("/gone.png", REASON_NOT_FOUND), ("/error.png", REASON_FETCH_FAILED)],
)
def test_http_status_codes(http_server: _Server, path: str, reason: str) -> None:
    error = refused(url_event(local_url(http_server, path)), LOCAL)
    assert error.reason == reason
    assert path in error.detail


def test_http_404_detail_names_the_status(http_server: _Server) -> None:
    assert "HTTP 404" in refused(url_event(local_url(http_server, "/missing.png")), LOCAL).detail
    assert "HTTP 500" in refused(url_event(local_url(http_server, "/error.png")), LOCAL).detail


def test_http_html_page_is_not_an_image(http_server: _Server) -> None:
    assert refused(url_event(local_url(http_server, "/html.png")), LOCAL).reason == REASON_NOT_AN_IMAGE


def test_http_slow_endpoint_times_out(http_server: _Server) -> None:
    limits = ImageSettings(fetch_timeout_s=0.5, allow_private_networks=True)
    started = time.monotonic()
    error = refused(url_event(local_url(http_server, "/slow.png")), limits)
    elapsed = time.monotonic() - started
    assert error.reason == REASON_FETCH_FAILED
    assert 0.4 <= elapsed < 2.5


def test_http_trickling_body_is_cut_off_at_the_fetch_timeout(http_server: _Server) -> None:
    limits = ImageSettings(fetch_timeout_s=0.5, allow_private_networks=True)
    started = time.monotonic()
    error = refused(url_event(local_url(http_server, "/trickle.png")), limits)
    elapsed = time.monotonic() - started
    assert error.reason == REASON_FETCH_FAILED
    assert "within the fetch timeout" in error.detail
    assert elapsed < 1.5  # the socket timeout alone would let it run for len(image) * 0.1 s


def test_max_pixels_above_pillows_own_limit_is_honoured() -> None:
    # Pillow refuses ~89.5 Mpx by default; a higher configured limit must win. 9,500 x 9,500 = 90.25 Mpx.
    data = black_greyscale_png(9_500, 9_500)
    image = decode_image(data, max_pixels=100_000_000)
    assert image.size == (9_500, 9_500)
    assert image.mode == "RGB"


def test_http_declared_length_over_the_limit_is_too_large(http_server: _Server) -> None:
    limits = ImageSettings(max_bytes=10_000, allow_private_networks=True)
    error = refused(url_event(local_url(http_server, "/declared-huge.png")), limits)
    assert error.reason == REASON_TOO_LARGE
    assert error.detail == f"Content-Length {10**9} is over 10000"


def test_http_stream_without_length_is_capped(http_server: _Server) -> None:
    limits = ImageSettings(max_bytes=10_000, allow_private_networks=True)
    event = url_event(local_url(http_server, "/stream.png"))
    with pytest.raises(ImageLoadError) as info:
        fetch_bytes(event, limits)
    assert info.value.reason == REASON_TOO_LARGE
    assert info.value.detail == "more than 10000 bytes"


def test_http_connection_refused_is_fetch_failed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    limits = ImageSettings(fetch_timeout_s=2, allow_private_networks=True)
    error = refused(url_event(f"http://127.0.0.1:{port}/a.png"), limits)
    assert error.reason == REASON_FETCH_FAILED


def test_allow_http_false_is_not_allowed(http_server: _Server) -> None:
    before = len(http_server.paths)
    error = refused(url_event(local_url(http_server, "/image.png")), ImageSettings(allow_http=False))
    assert error.reason == REASON_NOT_ALLOWED
    assert "allow_http" in error.detail
    assert len(http_server.paths) == before  # no request was made


def test_allow_http_false_also_covers_https() -> None:
    # Refused before any connection: the port is irrelevant and nothing is contacted.
    error = refused(url_event("https://127.0.0.1:9/a.png"), ImageSettings(allow_http=False))
    assert error.reason == REASON_NOT_ALLOWED


# --- preprocessing in the loader: drafts, model inputs, deferred JPEGs ------------------------------

SPEC_64 = PreprocessSpec(crop_size=(64, 64), shortest_edge=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_load_image_with_a_spec_makes_the_model_input() -> None:
    data = encode(two_colour((1000, 600)), "JPEG", quality=95)
    loaded = load_image(inline(data), DEFAULT_LIMITS, SPEC_64)
    assert loaded.pixels is not None and loaded.pixels.shape == (3, 64, 64) and loaded.pixels.dtype == np.float32
    assert loaded.image is None  # not kept: the model input is all the scorer needs
    assert loaded.sha256 == hashlib.sha256(data).hexdigest() and loaded.nbytes == len(data)
    # Red left, blue right, normalised to [-1, 1].
    assert close_to(tuple(round(v, 1) for v in loaded.pixels[:, 32, 2]), (1.0, -1.0, -1.0), 0.1)
    assert close_to(tuple(round(v, 1) for v in loaded.pixels[:, 32, 61]), (-1.0, -1.0, 1.0), 0.1)


def test_load_image_without_a_spec_is_unchanged(red_blue_png: bytes) -> None:
    loaded = load_image(inline(red_blue_png), DEFAULT_LIMITS)
    assert loaded.pixels is None and loaded.encoded is None and loaded.image is not None


def test_draft_happens_after_the_pixel_check(load_spy: list[tuple[int, int]]) -> None:
    data = encode(Image.new("RGB", (2000, 1000), RED), "JPEG")
    assert decode_refused(data, max_pixels=1_999_999).reason == REASON_TOO_MANY_PIXELS
    assert load_spy == []
    assert decode_image(data, 2_000_000, draft_to=SPEC_64).size == (250, 125)
    assert load_spy == [(250, 125)]  # only the reduced picture was decoded


def test_exif_rotated_jpeg_with_a_draft_is_upright_and_large_enough() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(two_colour((1200, 400)), "JPEG", exif=exif.tobytes(), quality=95)
    image = decode_image(data, DEFAULT_LIMITS.max_pixels, draft_to=SPEC_64)
    assert image.size == (100, 300)  # 1/4 scale (400 // 8 < 64), then turned upright
    assert close_to(image.getpixel((50, 20)), RED, 40)  # the left (red) edge is now at the top
    assert close_to(image.getpixel((50, 280)), BLUE, 40)
    pixels = load_image(inline(data), DEFAULT_LIMITS, SPEC_64).pixels
    assert pixels is not None and pixels[0, 2, 32] > 0.8 and pixels[2, 61, 32] > 0.8  # red on top, blue below


def test_png_colour_key_transparency_becomes_white() -> None:
    image = Image.new("RGB", (20, 10), RED)
    image.paste(BLUE, (0, 0, 10, 10))
    decoded = decode_image(encode(image, "PNG", transparency=BLUE), 10**6)
    assert decoded.mode == "RGB" and "transparency" not in decoded.info
    assert decoded.getpixel((5, 5)) == WHITE and decoded.getpixel((15, 5)) == RED
    grey = Image.new("L", (20, 10), 40)
    grey.paste(90, (0, 0, 10, 10))
    decoded = decode_image(encode(grey, "PNG", transparency=90), 10**6)
    assert decoded.getpixel((5, 5)) == WHITE and decoded.getpixel((15, 5)) == (40, 40, 40)


def test_defer_jpeg_keeps_the_bytes_and_the_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(two_colour((40, 20)), "JPEG", exif=exif.tobytes())
    loaded = load_event(inline(data), DEFAULT_LIMITS, SPEC_64, FakeDecoder(SPEC_64))
    assert (loaded.image, loaded.pixels, loaded.encoded, loaded.orientation) == (None, None, data, 8)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest() and loaded.nbytes == len(data)


@pytest.mark.parametrize(
    "data",
    [
        encode(two_colour(), "PNG"),
        encode(Image.new("CMYK", (30, 10), (0, 255, 255, 0)), "JPEG"),
    ],
    ids=["png", "cmyk-jpeg"],
)
def test_defer_jpeg_decodes_what_the_gpu_cannot(data: bytes) -> None:
    loaded = load_data(data, DEFAULT_LIMITS, SPEC_64, FakeDecoder(SPEC_64))
    assert loaded.encoded is None and loaded.pixels is not None


def test_defer_jpeg_still_refuses_oversized_and_broken_jpegs() -> None:
    data = encode(Image.new("RGB", (200, 100), RED), "JPEG")
    with pytest.raises(ImageLoadError) as info:
        load_data(data, ImageSettings(max_pixels=19_999), SPEC_64, FakeDecoder(SPEC_64))
    assert info.value.reason == REASON_TOO_MANY_PIXELS
    with pytest.raises(ImageLoadError) as info:
        load_data(b"\xff\xd8\xff\xe0garbage" * 4, DEFAULT_LIMITS, SPEC_64, FakeDecoder(SPEC_64))
    assert info.value.reason in (REASON_DECODE_FAILED, REASON_NOT_AN_IMAGE)


# --- the hostile-input settings, as an operator sets them ---------------------------------------------


def test_hostile_input_settings_defaults() -> None:
    assert DEFAULT_LIMITS.allowed_formats == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    assert DEFAULT_LIMITS.decode_timeout_s == 5.0
    assert (DEFAULT_LIMITS.allowed_url_hosts, DEFAULT_LIMITS.allow_private_networks) == ((), False)
    assert DEFAULT_LIMITS.max_redirects == 5


def test_hostile_input_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumers.settings import Settings

    monkeypatch.setenv("MODERATION_IMAGES__ALLOWED_FORMATS", '["jpeg", "png"]')
    monkeypatch.setenv("MODERATION_IMAGES__ALLOWED_URL_HOSTS", '["*.CDN.example.com", "images.example.com"]')
    monkeypatch.setenv("MODERATION_IMAGES__DECODE_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MODERATION_IMAGES__ALLOW_PRIVATE_NETWORKS", "true")
    monkeypatch.setenv("MODERATION_IMAGES__MAX_REDIRECTS", "0")
    images = Settings(_env_file=None).images
    assert images.allowed_formats == ("JPEG", "PNG")
    assert images.allowed_url_hosts == ("*.cdn.example.com", "images.example.com")
    assert (images.decode_timeout_s, images.allow_private_networks, images.max_redirects) == (2.5, True, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("decode_timeout_s", 0), ("max_redirects", -1), ("max_redirects", 21), ("allowed_formats", ["XYZ"])],
)
def test_hostile_input_settings_refuse_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        ImageSettings(**{field: value})
