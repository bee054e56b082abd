"""The score stage, on the scorer thread: one forward pass per batch, then a decision per event.

The policies are checked first (consumers/pipeline/policies.py), so one batch is always decided under
one book. The images were loaded in the loader pool while the batch filled; here the stage waits for
the last of them, scores, logs what is worth a line, and hands delivery a `ScoredBatch`, with the uploads'
bytes of the items sent to review (for their reviewer copies) and no others.
"""

from __future__ import annotations

import time

import structlog

from consumers.batching import Batch
from consumers.delivery import ScoredBatch
from consumers.metrics import WorkerMetrics
from consumers.pipeline.items import Prepared, record_fields
from consumers.pipeline.policies import PolicyRuntime
from moderation.images import LoadedImage
from moderation.moderator import Moderator
from moderation.verdict import VerdictStatus

log = structlog.get_logger("moderation.worker")


class Score:
    def __init__(self, moderator: Moderator, policies: PolicyRuntime, metrics: WorkerMetrics) -> None:
        self.moderator = moderator
        self.policies = policies
        self.metrics = metrics

    def __call__(self, batch: Batch) -> ScoredBatch:
        self.policies.check()
        # Read once, on this thread, before scoring: the book the batch is decided under (only check() swaps it).
        book = self.moderator.policies
        prepared: list[Prepared] = [future.result() for future in batch.prepared]
        scored = [p for p in prepared if p.event is not None]
        self.metrics.loaded(ms for p in scored if (ms := getattr(p.loaded, "load_ms", None)) is not None)
        started = time.perf_counter()
        verdicts = self.moderator.score_loaded([p.event for p in scored], [p.loaded for p in scored])  # type: ignore[misc]
        self.metrics.scored(verdicts, time.perf_counter() - started)
        for p, verdict in zip(scored, verdicts, strict=True):
            if verdict.status is VerdictStatus.ERROR:
                log.warning(
                    "image not usable", reason=verdict.error_reason, detail=(verdict.error_detail or "")[:300],
                    event_id=verdict.event_id, content_id=verdict.content_id, **record_fields(p.record),
                )
            elif verdict.flagged:
                log.info(
                    "flagged", category=verdict.top_category, action=verdict.action, uncertain=verdict.uncertain,
                    event_id=verdict.event_id, content_id=verdict.content_id, **record_fields(p.record),
                )
        dead_letters = tuple(p.dead_letter for p in prepared if p.dead_letter is not None)
        # Only the uploads of items going to review travel on to delivery (for their reviewer copies):
        # the rest are dropped here, not held while the batch waits to be persisted.
        originals = tuple(
            _original(p.loaded) if v.needs_review and v.keep_media else None
            for p, v in zip(scored, verdicts, strict=True)
        )
        self.metrics.dead_lettered(dead_letters)
        return ScoredBatch(
            number=batch.number,
            size=len(batch),
            verdicts=tuple(verdicts),
            records=tuple(p.record for p in scored),
            dead_letters=dead_letters,
            offsets=batch.next_offsets(),
            originals=originals if any(o is not None for o in originals) else (),
            policies=tuple(book.every_policy()),
        )


def _original(loaded: object) -> bytes | None:
    return loaded.original if isinstance(loaded, LoadedImage) else None
