"""Prometheus metrics for one worker process: what it consumed, decided, published and how long each step took.

Names follow Prometheus conventions: ``moderation_..._total`` counters, the unit at the end of the name
in base units or as the thing counted (``_seconds``, ``_images``, ``_records``), ``_info`` for series that
carry labels with value 1. Each `WorkerMetrics` has its own registry, so several workers (tests,
benchmarks) can live in one process; each registry also gets the standard ``process_*`` and ``python_*``
collectors (CPU, memory, open files, GC), which describe the whole process.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from consumers.delivery import BatchResult
from consumers.messages import OutgoingMessage, header
from moderation.policy_book import PolicyBook, ReloadReport
from moderation.verdict import Verdict, VerdictStatus

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("poll", "load", "score", "media", "persist", "publish", "commit")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if GC_COLLECTOR is not None:  # None on interpreters without gc.get_stats
            GCCollector(registry=r)
        self.events_consumed = Counter("moderation_events_consumed", "Records polled from the input topic.", registry=r)
        self.verdicts = Counter(
            "moderation_verdicts", "Verdicts written.", ["status", "top_category", "action"], registry=r
        )
        self.flagged = Counter("moderation_flagged", "Flagged verdicts, by top category.", ["category"], registry=r)
        self.dead_letters = Counter(
            "moderation_dead_letters", "Events dead-lettered, by reason.", ["reason"], registry=r
        )
        self.images_scored = Counter("moderation_images_scored", "Images through the model.", registry=r)
        self.errors = Counter("moderation_errors", "Errors by type (retried or fatal).", ["type"], registry=r)
        self.back_pressure_pauses = Counter(
            "moderation_back_pressure_pauses", "Times the full pipeline paused the partitions.", registry=r
        )
        self.batch_size = Histogram(
            "moderation_batch_size_images", "Images (events, one image each) per batch.", buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "moderation_stage_seconds", "Time per batch in each step.", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.end_to_end_seconds = Histogram(
            "moderation_end_to_end_seconds",
            "From the event's uploaded_at to its verdict being committed.",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.batches_in_flight = Gauge(
            "moderation_batches_in_flight", "Batches between poll and offset commit.", registry=r
        )
        self.batches_fenced = Counter(
            "moderation_batches_fenced",
            "Transactional batches aborted by a rebalance: not committed here, redelivered to the new owner.",
            registry=r,
        )
        self.assigned_partitions = Gauge("moderation_assigned_partitions", "Partitions this member owns.", registry=r)
        self.consumer_lag = Gauge(
            "moderation_consumer_lag_records",
            "Records behind the partition's end: its end offset minus the group's committed offset.",
            ["topic", "partition"],
            registry=r,
        )
        self.model = Info("moderation_model", "The model in use.", registry=r)
        self.policy = Info("moderation_policy", "The default policy in force.", registry=r)
        self.policies = Gauge(
            "moderation_policies_info",
            "Every policy in force or in shadow (value 1): role default | source | shadow, and for a source its name.",
            ["role", "source", "version", "sha256"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "moderation_policy_reloads",
            "Edited policy files: applied, or refused because they did not validate (the last good one stays).",
            ["result"],
            registry=r,
        )
        self.policy_files_refused = Gauge(
            "moderation_policy_files_refused",
            "Policy files whose latest edit was refused (alert on > 0): the previous version of each is in force.",
            registry=r,
        )
        self.uncertain = Counter(
            "moderation_uncertain", "Items sent to review as uncertain, by category.", ["category"], registry=r
        )
        self.embeddings_reused = Counter(
            "moderation_embeddings_reused", "Images whose stored embedding was reused (no forward pass).", registry=r
        )
        self.shadow_verdicts = Counter(
            "moderation_shadow_verdicts", "Shadow policy verdicts, by policy version and flagged.",
            ["policy_version", "flagged"], registry=r,
        )
        self.reviewer_copies = Counter(
            "moderation_reviewer_copies",
            "Items sent to review, by what became of their reviewer copy: stored | withheld | off | failed.",
            ["result"], registry=r,
        )
        self.shadow_disagreements = Counter(
            "moderation_shadow_disagreements",
            "Shadow verdicts whose flagged differs from the verdict acted on, by shadow policy version.",
            ["policy_version"], registry=r,
        )

    # -- what the pipeline's stages count, each in one place -------------------------------------------

    def polled(self, records: int, seconds: float) -> None:
        self.stage_seconds.labels("poll").observe(seconds)
        self.events_consumed.inc(records)

    def in_flight(self, batches: int) -> None:
        self.batches_in_flight.set(batches)

    def paused(self) -> None:
        self.back_pressure_pauses.inc()

    def error(self, exc: BaseException) -> None:
        self.errors.labels(type(exc).__name__).inc()

    def loaded(self, load_ms: Iterable[float]) -> None:
        for ms in load_ms:
            self.stage_seconds.labels("load").observe(ms / 1000.0)

    def scored(self, verdicts: Sequence[Verdict], seconds: float) -> None:
        """One forward pass's verdicts: the time it took, the uncertain, the reused, the shadows."""
        self.stage_seconds.labels("score").observe(seconds)
        for verdict in verdicts:
            if verdict.uncertain:
                self.uncertain.labels(verdict.top_category or "").inc()
            if verdict.embedding_reused:
                self.embeddings_reused.inc()
            for shadow in verdict.shadows:
                self.shadow_verdicts.labels(shadow.policy_version, str(shadow.flagged).lower()).inc()
                if shadow.flagged != verdict.flagged:
                    self.shadow_disagreements.labels(shadow.policy_version).inc()
        self.images_scored.inc(sum(v.status is VerdictStatus.OK and not v.embedding_reused for v in verdicts))

    def dead_lettered(self, messages: Iterable[OutgoingMessage]) -> None:
        """Events dead-lettered as they were read (conflicts and unstorable ones count at their commit)."""
        for message in messages:
            self.dead_letters.labels(header(message.headers, "dlq.reason") or "unknown").inc()

    def batch_fenced(self) -> None:
        self.batches_fenced.inc()

    def partitions_assigned(self, count: int) -> None:
        self.assigned_partitions.set(count)

    def lag(self, topic: str, partition: int, records: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(records)

    def policies_checked(self, report: ReloadReport, book: PolicyBook, refused_files: int) -> None:
        """A policy check's outcome: edits applied and refused, the book now in force, files now refused."""
        if report.applied:
            self.policy_reloads.labels("applied").inc(len(report.applied))
        if report.refused:
            self.policy_reloads.labels("refused").inc(len(report.refused))
        if report.applied:
            self.policies_in_force(book)
        if report:
            self.policy_files_refused.set(refused_files)

    def batch_committed(self, result: BatchResult, commit_s: float) -> None:
        now = datetime.now(timezone.utc)
        self.batch_size.observe(result.records)
        if result.media:  # only batches with items sent to review make copies
            self.stage_seconds.labels("media").observe(result.media_s)
        for status, count in result.media.items():
            self.reviewer_copies.labels(status).inc(count)
        self.stage_seconds.labels("persist").observe(result.persist_s)
        self.stage_seconds.labels("publish").observe(result.publish_s)
        self.stage_seconds.labels("commit").observe(commit_s)
        if result.conflicts:
            self.dead_letters.labels("event_id_conflict").inc(result.conflicts)
        if result.unstorable:
            self.dead_letters.labels("unstorable").inc(result.unstorable)
        for verdict in result.stored:
            self.verdicts.labels(verdict.status.value, verdict.top_category or "", verdict.action or "").inc()
            if verdict.flagged:
                self.flagged.labels(verdict.top_category or "").inc()
            self.end_to_end_seconds.observe(max(0.0, (now - verdict.uploaded_at).total_seconds()))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's series: the member that owns it now reports it."""
        try:
            self.consumer_lag.remove(topic, str(partition))
        except KeyError:
            pass

    def policies_in_force(self, book: PolicyBook) -> None:
        """Export the book: the default policy's info, and one `moderation_policies_info` series per policy."""
        self.policy.info({"version": book.default.version, "sha256": book.default.sha256})
        self.policies.clear()
        entries = [("default", "", book.default)]
        entries += [("source", source, policy) for source, policy in sorted(book.by_source.items())]
        entries += [("shadow", "", policy) for policy in book.shadows]
        for role, source, policy in entries:
            self.policies.labels(role, source, policy.version, policy.sha256).set(1)
