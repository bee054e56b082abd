"""Reviewer copies: small, upright, RGB, nothing but pixels; and a media store whose keys stay under its root."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from moderation.media import CopyError, DirectoryMediaStore, check_key, media_key, reviewer_copy
from tests.support.images import photo

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("size", "expected"), [((1600, 1200), (512, 384)), ((300, 900), (171, 512))])
def test_the_long_side_is_at_most_512_and_the_aspect_is_kept(size: tuple[int, int], expected: tuple[int, int]) -> None:
    copy, width, height = reviewer_copy(encode(photo(size, seed=1)))
    image = opened(copy)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert (width, height) == image.size
    assert max(image.size) == 512
    assert abs(image.width - expected[0]) <= 1 and abs(image.height - expected[1]) <= 1


def test_a_small_image_is_not_enlarged() -> None:
    copy, width, height = reviewer_copy(encode(photo((120, 80), seed=2), "PNG"))
    assert (width, height) == (120, 80) == opened(copy).size


def test_exif_with_gps_icc_and_comments_are_not_copied() -> None:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif.get_ifd(GPS_IFD)[2] = (51.0, 30.0, 0.0)  # GPSLatitude
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    upload = encode(photo((800, 600), seed=3), exif=exif.tobytes(), icc_profile=icc, comment=b"secret note")
    assert b"CameraMaker" in upload and opened(upload).info.get("icc_profile")
    copy, _, _ = reviewer_copy(upload)
    image = opened(copy)
    assert len(image.getexif()) == 0
    assert "icc_profile" not in image.info and "exif" not in image.info and "comment" not in image.info
    assert b"CameraMaker" not in copy and b"secret note" not in copy and b"Exif" not in copy


def test_the_exif_orientation_is_applied() -> None:
    picture = Image.new("RGB", (400, 200), (255, 0, 0))
    picture.paste((0, 0, 255), (0, 0, 200, 200))  # left half blue: after a 90-degree turn it is on top or bottom
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    copy, width, height = reviewer_copy(encode(picture, exif=exif.tobytes(), quality=95))
    assert (width, height) == (200, 400)
    pixels = np.asarray(opened(copy))
    top, bottom = pixels[20, 100], pixels[380, 100]
    assert top[2] > 200 and top[0] < 60  # blue on top: turned clockwise
    assert bottom[0] > 200 and bottom[2] < 60


def test_png_with_alpha_becomes_an_rgb_jpeg_on_white() -> None:
    rgba = Image.new("RGBA", (100, 100), (255, 0, 0, 0))  # fully transparent red
    copy, _, _ = reviewer_copy(encode(rgba, "PNG"))
    image = opened(copy)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert min(image.getpixel((50, 50))) > 240  # flattened onto white


def test_a_cmyk_jpeg_becomes_an_rgb_jpeg() -> None:
    cmyk = photo((640, 480), seed=4).convert("CMYK")
    copy, width, height = reviewer_copy(encode(cmyk))
    image = opened(copy)
    assert image.mode == "RGB" and (width, height) == (512, 384)


@pytest.mark.parametrize("data", [b"", b"not an image at all", encode(photo((64, 64), seed=5))[:200]])
def test_undecodable_bytes_raise_a_clear_error(data: bytes) -> None:
    with pytest.raises(CopyError, match="cannot make a reviewer copy"):
        reviewer_copy(data)


def test_keys_are_content_addressed() -> None:
    sha = hashlib.sha256(b"upload").hexdigest()
    assert media_key(sha) == f"{sha[:2]}/{sha[2:4]}/{sha}.jpg"
    assert check_key(media_key(sha)) == media_key(sha)


SHA = "ab" * 32


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd", f"ab/ab/../../{SHA}.jpg", f"/ab/ab/{SHA}.jpg", f"ab/ab/{SHA}.jpg/..",
        f"cd/ef/{SHA}.jpg",  # directories that do not match the hash
        f"ab/ab/{SHA.upper()}.jpg", f"ab/ab/{SHA}.png", f"ab\\ab\\{SHA}.jpg", f"ab/ab/{SHA}.jpg\n",
        f"ab/ab/{SHA[:-1]}%.jpg", "", "ab/ab/x.jpg",
    ],
)
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    store = DirectoryMediaStore(tmp_path / "media")
    with pytest.raises(ValueError, match="not a media key"):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    assert not any((tmp_path).rglob("passwd"))


@pytest.mark.parametrize("digest", ["../" + "a" * 61, "A" * 64, "a" * 63])
def test_a_key_is_made_only_from_a_sha256(digest: str) -> None:
    with pytest.raises(ValueError):
        media_key(digest)


def test_put_get_exists_delete(tmp_path: Path) -> None:
    store = DirectoryMediaStore(tmp_path)
    key = media_key(SHA)
    assert store.get(key) is None and not store.exists(key) and not store.touch(key)
    store.put(key, b"jpeg bytes")
    assert store.get(key) == b"jpeg bytes" and store.exists(key) and store.touch(key)
    assert (tmp_path / "ab" / "ab" / f"{SHA}.jpg").is_file()
    store.delete(key)
    store.delete(key)  # a missing key is no error
    assert store.get(key) is None


def test_put_is_atomic_no_partial_file_is_ever_visible(tmp_path: Path) -> None:
    store = DirectoryMediaStore(tmp_path)
    key = media_key(SHA)
    first, second = b"a" * 4_000_000, b"b" * 4_000_000
    store.put(key, first)
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = store.get(key)
            assert data in (first, second)  # the old whole file or the new whole file, never a mix or a prefix
            seen.add(len(data or b""))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(10):
            store.put(key, second)
            store.put(key, first)
    finally:
        done.set()
        reader.join()
    assert seen == {4_000_000}
    assert [p.name for p in (tmp_path / "ab" / "ab").iterdir()] == [f"{SHA}.jpg"]  # no temporary file left


def test_a_failed_write_leaves_nothing_under_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moderation.media import MediaError

    store = DirectoryMediaStore(tmp_path)
    key = media_key(SHA)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(MediaError, match="No space left"):
        store.put(key, b"data")
    monkeypatch.undo()
    assert not store.exists(key)
    assert list((tmp_path / "ab" / "ab").iterdir()) == []
