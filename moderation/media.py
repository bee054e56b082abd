"""Reviewer copies of images: a small, metadata-free JPEG per item sent to review, and where they are kept.

A reviewer must see what was flagged, but the upload itself is hostile input and may carry GPS tags and
other metadata nobody needs: `reviewer_copy` re-encodes it (EXIF orientation applied, alpha flattened,
at most `max_side` pixels on its long side, no metadata at all). Copies are content-addressed by the
upload's sha256, so identical uploads share one file and a redelivered batch writes nothing new.
`MediaStore` is the interface (an object store can implement it later); `DirectoryMediaStore` keeps
them under a directory, each write atomic, so a key either names a whole file or nothing.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageOps

from moderation.exceptions import ModerationError
from moderation.images import read_header, to_rgb

DEFAULT_MAX_SIDE = 512
DEFAULT_QUALITY = 80
# ab/cd/<sha256>.jpg: the first two directory levels are the hash's first four hex digits, so no
# directory grows past 65,536 entries per level; nothing else is a key, so none can leave the root.
_KEY = re.compile(r"\A([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.jpg\Z")
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
_TEMP_PREFIX = ".tmp-"
# What a reviewer copy is decoded from: the worker already refused every other format before scoring.
_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO


class MediaError(ModerationError):
    """The media store could not be written or read (disk full, read-only volume): retry the batch."""


class CopyError(ModerationError):
    """The upload cannot be turned into a reviewer copy (undecodable bytes): the item gets no copy."""


class MediaStore(Protocol):
    """Where reviewer copies live, by key (`media_key`). Writes are atomic; errors raise `MediaError`."""

    def put(self, key: str, data: bytes) -> None: ...  # the whole of `data` under `key`, or nothing

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...  # no error for a missing key

    def exists(self, key: str) -> bool: ...

    def touch(self, key: str) -> bool: ...  # mark the copy as in use now (retention counts from here); False if absent

    def modified_at(self, key: str) -> datetime | None: ...

    def keys_older_than(self, cutoff: datetime) -> Iterator[str]: ...  # for retention's orphan sweep


def media_key(image_sha256: str) -> str:
    """The key of the reviewer copy of the upload whose bytes hash to `image_sha256`."""
    if not _SHA256.match(image_sha256):
        raise ValueError(f"not a sha256 hex digest: {image_sha256[:80]!r}")
    return f"{image_sha256[:2]}/{image_sha256[2:4]}/{image_sha256}.jpg"


def check_key(key: str) -> str:
    """`key` if it is one `media_key` makes (its directories matching its hash); ValueError otherwise."""
    found = _KEY.match(key) if isinstance(key, str) else None
    if found is None or not found.group(3).startswith(found.group(1) + found.group(2)):
        raise ValueError(f"not a media key: {str(key)[:80]!r}")
    return key


def reviewer_copy(
    encoded: bytes, max_side: int = DEFAULT_MAX_SIDE, quality: int = DEFAULT_QUALITY
) -> tuple[bytes, int, int]:
    """A JPEG of `encoded` for reviewers, with its (width, height); raises `CopyError` if it cannot be decoded.

    EXIF orientation applied, transparency flattened onto white, RGB, the long side at most `max_side`
    (never enlarged), and nothing but pixels in the file: no EXIF (GPS), ICC profile or comment.
    """
    try:
        image = read_header(encoded, _FORMATS)
        long_side = max(image.size)
        if image.format in ("JPEG", "MPO") and long_side > max_side:
            # Decode at the smallest DCT scale (1/2, 1/4, 1/8) that still leaves the copy's size on both
            # axes: most of the decoding work is skipped. The copy's size is the same whichever way the
            # EXIF orientation turns the picture (the long side stays the long side).
            width, height = image.size
            image.draft("RGB", (-(-width * max_side // long_side), -(-height * max_side // long_side)))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        image = to_rgb(image)
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # keeps the aspect, never enlarges
        out = BytesIO()
        # A fresh image: nothing of the upload's info (exif, icc_profile, comment, dpi) is carried over.
        clean = Image.new("RGB", image.size)
        clean.paste(image)
        clean.save(out, "JPEG", quality=quality, optimize=True)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise CopyError(f"cannot make a reviewer copy: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return out.getvalue(), clean.width, clean.height


class DirectoryMediaStore:
    """Reviewer copies as files under `root` (a volume shared by the workers and the console)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        """Write to a temporary file beside the target, fsync, rename: readers see all of it or nothing."""
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            _fsync_directory(target.parent)  # the rename itself survives a power cut
        except OSError as exc:
            raise MediaError(f"could not write media {key} under {self.root}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # as Path.exists sees it: not there
            return None
        except OSError as exc:
            raise MediaError(f"could not read media {key}: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise MediaError(f"could not delete media {key}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def touch(self, key: str) -> bool:
        try:
            os.utime(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise MediaError(f"could not touch media {key}: {exc.strerror or exc}") from exc
        return True

    def modified_at(self, key: str) -> datetime | None:
        try:
            return datetime.fromtimestamp(self.path(key).stat().st_mtime, timezone.utc)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def keys_older_than(self, cutoff: datetime) -> Iterator[str]:
        """Keys of copies last written or touched before `cutoff`. Temporary files a crash left behind
        that are older than `cutoff` are removed on the way: no key names them."""
        limit = cutoff.timestamp()
        if not self.root.is_dir():
            return
        for path in self.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
            try:
                old = path.stat().st_mtime < limit
            except FileNotFoundError:
                continue
            if not old:
                continue
            if path.name.startswith(_TEMP_PREFIX):
                path.unlink(missing_ok=True)
                continue
            key = path.relative_to(self.root).as_posix()
            if _KEY.match(key):
                yield key


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms and file systems cannot open a directory: the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def age_cutoff(days: float, now: datetime | None = None) -> datetime:
    """The instant `days` ago (retention's cutoff)."""
    return datetime.fromtimestamp((now.timestamp() if now else time.time()) - days * 86400.0, timezone.utc)
