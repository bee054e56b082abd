"""Retention of reviewer copies: what `moderation media prune` does, in an order that never loses a copy in use.

1. The items past the cutoff (decided ones; pending ones too if asked) are marked `pruned` in the
   database first: a crash after this leaves files no item names, which the next run removes.
2. Then the store is swept: every file older than the cutoff (by its last write or reuse) that no
   `stored` item names is deleted. That covers the pruned items' copies (a copy shared by a newer item
   of the same upload stays), and orphans: copies a crashed batch wrote and that were never redelivered.

A copy reused by a worker has its age renewed when it is reused, and the sweep checks the age again just
before deleting, so a batch about to commit an item for an old copy keeps it; only a reuse landing between
that check and the delete (microseconds) could still lose it, leaving that one item `stored` without a file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

from moderation.media import MediaStore
from moderation.storage.review_media import ReviewMediaStore

_SWEEP_CHUNK = 1000


@dataclass(frozen=True)
class PruneReport:
    items: int  # items whose copy was marked pruned
    deleted: int  # files deleted: the pruned items' copies no other item holds
    orphans: int  # files deleted that no item named at all
    kept_shared: int  # the pruned items' files kept because another item still holds them


def prune_media(
    items: ReviewMediaStore,
    media: MediaStore,
    cutoff: datetime,
    *,
    include_pending: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PruneReport:
    """Prune the copies of items created before `cutoff`, then sweep the store (see the module's docstring)."""
    marked = items.prune_before(cutoff, include_pending)
    pruned_keys = set(marked)
    deleted = orphans = 0
    swept = 0
    for keys in _batched(media.keys_older_than(cutoff), _SWEEP_CHUNK):
        held = items.in_use(keys)
        for key in keys:
            if key in held:
                continue
            modified = media.modified_at(key)
            if modified is None or modified >= cutoff:  # reused by a worker since it was listed: in use again
                continue
            media.delete(key)
            if key in pruned_keys:
                deleted += 1
            else:
                orphans += 1
        swept += len(keys)
        if progress is not None:
            progress(swept)
    kept_shared = len(items.in_use(list(pruned_keys))) if pruned_keys else 0
    return PruneReport(len(marked), deleted, orphans, kept_shared)


def _batched(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(islice(keys, size)):
        yield chunk
