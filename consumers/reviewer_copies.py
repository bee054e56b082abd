"""Delivery's first half of step 1: the reviewer copy of every item sent to review, stored before its verdict.

The verdict (and its review_items row) commits only after its copy is in the media store, so no item
ever points at missing media. What becomes of each copy is the item's `ReviewMedia`: withheld when a
policy category forbids keeping the image, off when the worker keeps no media, failed when there are no
bytes or they cannot be decoded (the item still goes to review, without a picture), else stored. Copies
are content-addressed, so a redelivered batch finds them there and re-encodes nothing. A store that
cannot be written (`MediaError`: disk full, read-only volume) fails the whole attempt, which is retried
like a database outage. Copies of one batch are made on a small thread pool: Pillow releases the GIL.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from io import BytesIO

import structlog
from PIL import Image

from moderation.media import CopyError, MediaStore, media_key, reviewer_copy
from moderation.settings import MediaSettings
from moderation.verdict import MediaStatus, ReviewMedia, Verdict

log = structlog.get_logger("moderation.media")

DEFAULT_THREADS = 2


class ReviewerCopies:
    """Makes and stores the copies for a batch's verdicts; `store` None means media is off."""

    def __init__(self, store: MediaStore | None, settings: MediaSettings, threads: int = DEFAULT_THREADS) -> None:
        self.store = store if settings.enabled else None
        self.max_side = settings.max_side
        self.quality = settings.quality
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def attach(
        self, verdicts: Sequence[Verdict], originals: Sequence[bytes | None]
    ) -> tuple[tuple[Verdict, ...], Counter[str]]:
        """`verdicts` with `media` set on those that need review (copies stored first), and the count of
        copies by `MediaStatus`. `originals` are the uploads' bytes, position for position (may be empty).
        Raises `MediaError` if the store cannot be written: nothing of the batch may commit then."""
        wanted = [i for i, v in enumerate(verdicts) if v.needs_review]
        if not wanted:
            return tuple(verdicts), Counter()
        data = [originals[i] if i < len(originals) else None for i in wanted]
        jobs = [(verdicts[i], d) for i, d in zip(wanted, data, strict=True)]
        if len(jobs) > 1 and self.store is not None:
            media = list(self._executor().map(lambda job: self._one(*job), jobs))
        else:
            media = [self._one(v, d) for v, d in jobs]
        out = list(verdicts)
        for i, item in zip(wanted, media, strict=True):
            out[i] = replace(out[i], media=item)
        return tuple(out), Counter(item.status.value for item in media)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="reviewer-copy")
            return self._pool

    def _one(self, verdict: Verdict, data: bytes | None) -> ReviewMedia:
        if not verdict.keep_media:
            return ReviewMedia(MediaStatus.WITHHELD, detail="a category of the policy forbids keeping this image")
        if self.store is None:
            return ReviewMedia(MediaStatus.OFF)
        if data is None or verdict.image_sha256 is None:
            return ReviewMedia(MediaStatus.FAILED, detail="the upload's bytes were not kept")
        key = media_key(verdict.image_sha256)
        existing = self._existing(key)  # a redelivery, or the same upload seen before: encoded once
        if existing is not None:
            return ReviewMedia(MediaStatus.STORED, key, *existing)
        try:
            copy, width, height = reviewer_copy(data, self.max_side, self.quality)
        except CopyError as exc:
            log.warning("no reviewer copy", event_id=verdict.event_id, error=str(exc))
            return ReviewMedia(MediaStatus.FAILED, detail=str(exc)[:300])
        except Exception as exc:  # noqa: BLE001 - a codec bug on one crafted file must not hold the batch
            log.warning("no reviewer copy", event_id=verdict.event_id, error=f"{type(exc).__name__}: {exc}")
            return ReviewMedia(MediaStatus.FAILED, detail=f"{type(exc).__name__}: {str(exc)[:200]}")
        self.store.put(key, copy)  # MediaError propagates: the attempt fails, the batch is retried
        return ReviewMedia(MediaStatus.STORED, key, width, height)

    def _existing(self, key: str) -> tuple[int, int] | None:
        """The size of the copy already stored under `key` (its age renewed, so retention keeps it), or None
        if there is none or it is unreadable (then it is written again)."""
        assert self.store is not None
        # Renewed first: retention's sweep deletes only copies older than its cutoff, checked just before.
        if not self.store.touch(key):
            return None
        stored = self.store.get(key)
        if stored is None:
            return None
        try:
            with Image.open(BytesIO(stored), formats=["JPEG"]) as image:
                return image.size
        except Exception:  # noqa: BLE001 - whatever is there is not a copy we wrote: replace it
            return None
