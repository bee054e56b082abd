"""file:// images: opt-in to a root, regular files only, symlinks kept inside the root, under a deadline.

A producer chooses the path, so a worker must never block on it (a FIFO, a pipe, a device), never read
outside the operator's root, and never say whether a file outside the root exists.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import moderation.fetch as fetch_module
from consumers.producer import image_event
from moderation.events import ImageEvent
from moderation.exceptions import ImageLoadError
from moderation.fetch import (
    REASON_FETCH_FAILED,
    REASON_NOT_ALLOWED,
    REASON_NOT_FOUND,
    REASON_TOO_LARGE,
    fetch_bytes,
)
from moderation.settings import ImageSettings

JOIN_TIMEOUT_S = 5.0  # a correct refusal takes milliseconds; a blocked open would take for ever


def png() -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def url_event(url: str) -> ImageEvent:
    return ImageEvent.model_validate(image_event(content_id="c", source="test", image_url=url))


def file_event(path: Path | str) -> ImageEvent:
    return url_event(Path(path).as_uri() if isinstance(path, Path) else f"file://{path}")


def outcome_within(call: Callable[[], bytes], timeout_s: float = JOIN_TIMEOUT_S) -> bytes | ImageLoadError:
    """Run `call` in a daemon thread so a read that blocks fails the test instead of hanging it."""
    result: list[bytes | ImageLoadError] = []

    def target() -> None:
        try:
            result.append(call())
        except ImageLoadError as exc:
            result.append(exc)

    thread = threading.Thread(target=target, name="file-read", daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the file read was still blocked after {timeout_s} s"
    return result[0]


def refused(event: ImageEvent, limits: ImageSettings) -> ImageLoadError:
    outcome = outcome_within(lambda: fetch_bytes(event, limits))
    assert isinstance(outcome, ImageLoadError), "the read should have been refused"
    return outcome


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "root"
    (directory / "sub").mkdir(parents=True)
    (directory / "sub" / "in.png").write_bytes(png())
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "out.png").write_bytes(png())
    return directory


# --- opt-in: no root, no file:// ------------------------------------------------------------------


def test_file_urls_are_refused_without_a_root(root: Path) -> None:
    assert ImageSettings().file_root is None
    error = refused(file_event(root / "sub" / "in.png"), ImageSettings())
    assert error.reason == REASON_NOT_ALLOWED
    assert "images.file_root" in error.detail


def test_without_a_root_existence_does_not_leak(root: Path) -> None:
    """Existing, missing, a directory, a device: one reason and one detail, whatever the path names."""
    limits = ImageSettings()
    paths = [root / "sub" / "in.png", root / "missing.png", root, Path("/dev/null"), Path("/etc/passwd")]
    errors = [refused(file_event(path), limits) for path in paths]
    assert {e.reason for e in errors} == {REASON_NOT_ALLOWED}
    assert len({e.detail.replace(str(p), "<path>") for e, p in zip(errors, paths, strict=True)}) == 1


def test_allow_file_false_refuses_even_with_a_root(root: Path) -> None:
    error = refused(file_event(root / "sub" / "in.png"), ImageSettings(file_root=root, allow_file=False))
    assert error.reason == REASON_NOT_ALLOWED
    assert "allow_file" in error.detail


def test_a_file_under_the_root_is_read(root: Path) -> None:
    assert fetch_bytes(file_event(root / "sub" / "in.png"), ImageSettings(file_root=root)) == png()


def test_a_relative_root_is_taken_from_the_working_directory(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root.parent)
    assert fetch_bytes(file_event(root / "sub" / "in.png"), ImageSettings(file_root=Path("root"))) == png()


def test_a_relative_file_path_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root)
    assert refused(url_event("file:sub/in.png"), ImageSettings(file_root=root)).reason == REASON_NOT_ALLOWED


def test_an_encoded_nul_is_refused(root: Path) -> None:
    error = refused(url_event(f"file://{root}/sub/in.png%00.jpg"), ImageSettings(file_root=root))
    assert error.reason == REASON_NOT_ALLOWED


# --- regular files only ---------------------------------------------------------------------------


def test_a_fifo_under_the_root_is_refused_at_once(root: Path) -> None:
    fifo = root / "sub" / "pipe.png"
    os.mkfifo(fifo)  # no writer: a plain open() for reading would block for ever
    started = time.monotonic()
    error = refused(file_event(fifo), ImageSettings(file_root=root))
    assert time.monotonic() - started < 1.0
    assert error.reason == REASON_FETCH_FAILED
    assert "not a regular file" in error.detail


def test_a_symlink_to_a_fifo_under_the_root_is_refused_at_once(root: Path) -> None:
    fifo = root / "sub" / "pipe"
    os.mkfifo(fifo)
    (root / "alias.png").symlink_to(fifo)
    assert refused(file_event(root / "alias.png"), ImageSettings(file_root=root)).reason == REASON_FETCH_FAILED


def test_proc_fd_of_a_pipe_is_refused_at_once() -> None:
    read_end, write_end = os.pipe()  # nothing is ever written: reading it would block for ever
    try:
        event = file_event(f"/proc/self/fd/{read_end}")
        assert refused(event, ImageSettings()).reason == REASON_NOT_ALLOWED  # the default: no file:// at all
        # Even under a root that covers /proc (or everything), a pipe is no file: its link ("pipe:[123]")
        # names no path that exists, and nothing is opened.
        for root in ("/proc", "/"):
            assert refused(event, ImageSettings(file_root=Path(root))).reason == REASON_NOT_FOUND
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_device_is_refused(tmp_path: Path) -> None:
    error = refused(file_event(Path("/dev/zero")), ImageSettings(file_root=Path("/dev")))
    assert error.reason == REASON_FETCH_FAILED
    assert "not a regular file" in error.detail


def test_a_directory_is_fetch_failed(root: Path) -> None:
    assert refused(file_event(root / "sub"), ImageSettings(file_root=root)).reason == REASON_FETCH_FAILED
    assert refused(file_event(root), ImageSettings(file_root=root)).reason == REASON_FETCH_FAILED


def test_a_file_over_max_bytes_is_refused_from_its_size(root: Path) -> None:
    big = root / "big.png"
    big.write_bytes(b"\0" * 5000)
    error = refused(file_event(big), ImageSettings(file_root=root, max_bytes=4096))
    assert error.reason == REASON_TOO_LARGE


# --- symlinks: followed only while they stay inside the root --------------------------------------


def test_a_symlink_inside_pointing_outside_is_refused(root: Path) -> None:
    link = root / "sub" / "escape.png"
    link.symlink_to(root.parent / "outside" / "out.png")
    assert link.read_bytes() == png()  # the link works; only the root rule stops it
    assert refused(file_event(link), ImageSettings(file_root=root)).reason == REASON_NOT_ALLOWED


def test_a_symlink_inside_pointing_to_a_missing_file_outside_is_not_allowed(root: Path) -> None:
    link = root / "probe.png"
    link.symlink_to(root.parent / "outside" / "missing.png")
    assert refused(file_event(link), ImageSettings(file_root=root)).reason == REASON_NOT_ALLOWED


def test_a_directory_symlink_pointing_outside_is_refused(root: Path) -> None:
    (root / "dirlink").symlink_to(root.parent / "outside", target_is_directory=True)
    error = refused(file_event(root / "dirlink" / "out.png"), ImageSettings(file_root=root))
    assert error.reason == REASON_NOT_ALLOWED


def test_a_symlink_inside_pointing_inside_is_followed(root: Path) -> None:
    (root / "alias.png").symlink_to(root / "sub" / "in.png")
    (root / "subalias").symlink_to(root / "sub", target_is_directory=True)
    limits = ImageSettings(file_root=root)
    assert fetch_bytes(file_event(root / "alias.png"), limits) == png()
    assert fetch_bytes(file_event(root / "subalias" / "in.png"), limits) == png()


def test_a_path_outside_that_links_into_the_root_is_refused(root: Path) -> None:
    """The URL itself must name a path under the root, not merely land there."""
    outside_link = root.parent / "outside" / "into.png"
    outside_link.symlink_to(root / "sub" / "in.png")
    assert refused(file_event(outside_link), ImageSettings(file_root=root)).reason == REASON_NOT_ALLOWED


def test_a_symlink_loop_is_refused(root: Path) -> None:
    (root / "a.png").symlink_to(root / "b.png")
    (root / "b.png").symlink_to(root / "a.png")
    assert refused(file_event(root / "a.png"), ImageSettings(file_root=root)).reason == REASON_NOT_ALLOWED


def test_a_symlink_swapped_in_after_the_check_is_not_followed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: the path is checked, then a component becomes a link outside. The walk opens each
    component with O_NOFOLLOW under its parent's descriptor, so the swap is refused, not followed."""
    sub = root / "sub"
    real_realpath = os.path.realpath

    def realpath_then_swap(path: str, *args: object, **kwargs: object) -> str:
        resolved = real_realpath(path, *args, **kwargs)  # type: ignore[arg-type]
        if resolved.endswith("in.png") and not sub.is_symlink():
            sub.rename(root / "moved")
            sub.symlink_to(root.parent / "outside", target_is_directory=True)
            (root.parent / "outside" / "in.png").write_bytes(b"outside bytes")
        return resolved

    monkeypatch.setattr(fetch_module.os.path, "realpath", realpath_then_swap)
    error = refused(file_event(sub / "in.png"), ImageSettings(file_root=root))
    assert error.reason == REASON_NOT_ALLOWED


# --- the deadline ---------------------------------------------------------------------------------


class SlowFile:
    """A regular file whose reads take a while each, as on a slow network filesystem."""

    def __init__(self, handle: Any, delay_s: float) -> None:
        self._handle = handle
        self._delay_s = delay_s

    def read(self, size: int = -1) -> bytes:
        time.sleep(self._delay_s)
        return self._handle.read(min(size, 64 * 1024))

    def close(self) -> None:
        self._handle.close()


def test_a_slow_file_read_stops_at_the_fetch_timeout(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = root / "big.png"
    big.write_bytes(os.urandom(4 * 1024 * 1024))
    real_reader = fetch_module._file_reader
    monkeypatch.setattr(fetch_module, "_file_reader", lambda fd: SlowFile(real_reader(fd), 0.05))
    started = time.monotonic()
    error = refused(file_event(big), ImageSettings(file_root=root, fetch_timeout_s=0.3))
    assert time.monotonic() - started < 2.0
    assert error.reason == REASON_FETCH_FAILED
    assert "fetch timeout" in error.detail
