"""The worker: one consumer-group member running a pipeline that keeps the model busy.

    poll (this thread) -> prepare (loader pool: parse, fetch, decode, preprocess each record as it arrives)
      -> score (scorer thread: one forward pass per batch, decide) -> deliver (delivery thread: persist,
      publish, flush) -> commit offsets (this thread, batch by batch, in order)

While the model scores batch N, batch N+1 is being loaded and batch N-1 persisted. At most
`batching.max_batches_in_flight` batches are between poll and commit; beyond that the assigned partitions
are paused (the consumer keeps polling, so it stays in the group) instead of buffering without bound.
Offsets are committed only for batches whose verdicts are in the database and whose messages the broker
acknowledged. Database and broker errors while delivering are retried with backoff; anything else stops
the worker without committing the unfinished batches, which are then redelivered.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.batching import Batch, BatchAssembler
from consumers.delivery import (
    SEND_TIMEOUT_S,
    STEP_COMMITTED,
    BatchResult,
    Delivery,
    StepHook,
    dead_letter_for,
)
from consumers.messages import OutgoingMessage, header
from consumers.metrics import WorkerMetrics
from moderation.events import ImageEvent, parse_event
from moderation.exceptions import EventError, ModerationError, PolicyError
from moderation.moderator import Moderator
from moderation.settings import Settings
from moderation.storage import StorageError, VerdictStore
from moderation.threads import DaemonPool
from moderation.verdict import Verdict, VerdictStatus

log = structlog.get_logger("moderation.worker")

IDLE_POLL_S = 0.5  # nothing in flight: wake up this often to notice a stop request
LAG_LOOKUP_TIMEOUT_MS = 2000  # the lag gauge may wait this long for the group's committed offset
BUSY_POLL_S = 0.02  # work in flight: come back quickly to commit what finished
_STOP = object()  # queue sentinel


class WorkerCrashed(ModerationError):
    """A pipeline stage failed in a way retrying cannot fix; unfinished batches were not committed."""


@dataclass(frozen=True)
class Prepared:
    """One record after the loader pool: a parsed event with its loaded image, or a dead letter."""

    record: ConsumerRecord
    event: ImageEvent | None
    loaded: object | None  # what Moderator.load_one returned: an image or a load failure
    dead_letter: OutgoingMessage | None


class Worker:
    def __init__(
        self,
        *,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        moderator: Moderator,
        store: VerdictStore,
        settings: Settings,
        on_step: StepHook | None = None,
        metrics: WorkerMetrics | None = None,
        producer_factory: Callable[[], KafkaProducer] | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self._new_producer = producer_factory  # replaces the producer after a broker error (None: never)
        self.moderator = moderator
        self.settings = settings
        self.on_step: StepHook = on_step or (lambda step, result: None)
        self.delivery = Delivery(store=store, producer=producer, kafka=settings.kafka, on_step=self.on_step)
        batching = settings.batching
        self.assembler = BatchAssembler(batching.max_size, batching.max_wait_ms / 1000.0)
        self.max_in_flight = batching.max_batches_in_flight
        self.drain_timeout_s = batching.drain_timeout_s  # how long a stop or a rebalance waits for them
        threads = batching.loader_threads or 2 * (os.cpu_count() or 1)
        # Daemon threads: a loader stuck in a read must not keep the process alive past the drain deadline.
        self._loaders = DaemonPool(threads, "loader")
        self._to_score: queue.Queue[object] = queue.Queue()
        self._to_deliver: queue.Queue[object] = queue.Queue()
        self._delivered: queue.Queue[tuple[Batch, BatchResult]] = queue.Queue()
        # Batches dispatched and not yet committed. Changed by this thread, or by `revoke` on the network
        # thread while this one waits inside poll(): never by both at once.
        self._in_flight = 0
        self._paused = False
        self.pauses = 0  # how often back-pressure paused the partitions (for metrics and tests)
        self._abandon = threading.Event()  # set on a fatal error: stages stop retrying and drop work
        self._fatal: BaseException | None = None
        self.totals = BatchResult()
        self.metrics = metrics or WorkerMetrics()
        self.last_poll_at = time.monotonic()  # liveness: a wedged loop stops moving this
        self.assigned_partitions = 0
        self._committed_offsets: dict[TopicPartition, int] = {}
        self._lag_updated_at = 0.0
        self._lag_reported: set[TopicPartition] = set()  # partitions with a lag series from this member
        self.lag_every_s = 1.0  # how often the consumer-lag gauge is refreshed (a cheap, local computation)
        # Policy files whose latest edit was refused (path -> why): shown by /readyz and a gauge until a
        # later edit of the same file applies.
        self.refused_policies: dict[str, PolicyError] = {}
        files = moderator.policy_files  # None: policies given as objects, nothing to watch
        self.reload_every_s = files.interval_s if files is not None else 0.0  # the scorer checks them this often

    # -- the loop (consumer thread) -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; then finish and commit every batch in flight and return."""
        kafka = self.settings.kafka
        self.consumer.subscribe([kafka.input_topic], listener=_Rebalance(self))
        stages = [
            threading.Thread(
                target=self._stage,
                args=(self._to_score, self._score, self._reload_policies),
                name="scorer",
                daemon=True,
            ),
            threading.Thread(target=self._stage, args=(self._to_deliver, self._deliver), name="delivery", daemon=True),
        ]
        for stage in stages:
            stage.start()
        log.info("worker started", topic=kafka.input_topic, group=kafka.consumer_group)
        drained = False
        try:
            while not stop.is_set() and self._fatal is None:
                self._step()
            if self._fatal is None:
                self._dispatch(self.assembler.close())
                drained = self._drain(self.drain_timeout_s)
        finally:
            if not drained:  # crashed, timed out or interrupted: drop unfinished work, commit nothing more
                self._abandon.set()
            self._to_score.put(_STOP)
            for stage in stages:  # once given up on, a stage may sit in a database or broker call: leave it
                stage.join(timeout=self.drain_timeout_s if drained else 1.0)
            self._loaders.shutdown()
        if self._fatal is not None:
            raise WorkerCrashed(f"{type(self._fatal).__name__}: {self._fatal}") from self._fatal
        if not drained:
            raise WorkerCrashed(
                f"gave up after {self.drain_timeout_s:g} s on {self._in_flight} batches in flight: "
                "not committed, they will be redelivered"
            )
        log.info("worker stopping", **self.totals.counters())

    def _step(self) -> None:
        self._commit_delivered()
        self._apply_back_pressure()
        self._update_lag()
        if self._in_flight or self.assembler.open_batch:
            due_in = self.assembler.seconds_until_due()
            timeout_s = BUSY_POLL_S if due_in is None else min(BUSY_POLL_S, due_in)
        else:
            timeout_s = IDLE_POLL_S
        started = time.perf_counter()
        polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max(self.assembler.room(), 1))
        self.last_poll_at = time.monotonic()
        if polled:
            self.metrics.stage_seconds.labels("poll").observe(time.perf_counter() - started)
            self.metrics.events_consumed.inc(sum(len(records) for records in polled.values()))
        for records in polled.values():
            for record in records:
                self.assembler.add(record, self._loaders.submit(self._prepare, record))
                if self.assembler.due():
                    self._dispatch(self.assembler.close())
        if self.assembler.due():
            self._dispatch(self.assembler.close())

    def _dispatch(self, batch: Batch | None) -> None:
        if batch is None or not len(batch):
            return
        self._in_flight += 1
        self.metrics.batches_in_flight.set(self._in_flight)
        self._to_score.put(batch)

    def _apply_back_pressure(self) -> None:
        assigned = self.consumer.assignment()
        if self._in_flight >= self.max_in_flight:
            unpaused = set(assigned) - set(self.consumer.paused())
            if unpaused:  # also covers partitions assigned while paused
                self.consumer.pause(*unpaused)
                if not self._paused:
                    self.pauses += 1
                    self.metrics.back_pressure_pauses.inc()
                    log.debug("pipeline full, partitions paused", in_flight=self._in_flight)
                self._paused = True
        elif self._paused:
            self.consumer.resume(*self.consumer.paused())
            self._paused = False

    def _commit_delivered(self, block_s: float = 0.0) -> int:
        """Step 4 of the delivery guarantee: commit the offsets of delivered batches, in order."""
        committed = 0
        while (delivered := self._next_delivered(block_s)) is not None:
            block_s = 0.0
            batch, result = delivered
            started = time.perf_counter()
            try:
                offsets = self._offsets(batch, result)
                # Else the batch's Kafka transaction carried them, or it was fenced and is not ours to commit.
                if not (result.offsets_committed or result.fenced):
                    self.consumer.commit(offsets)
            except KafkaError as exc:
                self._commit_failed(exc)
            self._committed(batch, result, time.perf_counter() - started)
            committed += 1
        return committed

    def _next_delivered(self, block_s: float) -> tuple[Batch, BatchResult] | None:
        try:
            return self._delivered.get(timeout=block_s) if block_s else self._delivered.get_nowait()
        except queue.Empty:
            return None

    @staticmethod
    def _offsets(batch: Batch, result: BatchResult) -> dict[TopicPartition, OffsetAndMetadata]:
        result.offsets = batch.next_offsets()
        return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in result.offsets.items()}

    def _update_lag(self) -> None:
        """Per partition: the end offset the last fetch reported minus the group's committed offset."""
        if time.monotonic() - self._lag_updated_at < self.lag_every_s:
            return
        self._lag_updated_at = time.monotonic()
        assignment = self.consumer.assignment()
        # A rebalance can leave series behind (a refresh between the revoke and the new assignment still
        # sees the old one): a partition this member no longer owns is reported by its new owner.
        for tp in self._lag_reported - assignment:
            self.metrics.forget_partition(tp.topic, tp.partition)
        self._lag_reported &= assignment
        for tp in assignment:
            highwater = self.consumer.highwater(tp)
            if highwater is None:  # nothing fetched from it yet
                continue
            committed = self._committed_offsets.get(tp)
            if committed is None:
                committed = self._group_committed(tp)
                if committed is None:
                    continue
                self._committed_offsets[tp] = committed
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - committed))
            self._lag_reported.add(tp)

    def _group_committed(self, tp: TopicPartition) -> int | None:
        """Where the group stands on a partition this member has not committed on yet (after a restart or a
        rebalance): its committed offset, or the partition's start if the group never committed there."""
        try:
            committed = self.consumer.committed(tp, timeout_ms=LAG_LOOKUP_TIMEOUT_MS)
            if committed is None:
                committed = self.consumer.beginning_offsets([tp], timeout_ms=LAG_LOOKUP_TIMEOUT_MS).get(tp)
        except KafkaError as exc:  # the coordinator is busy or away: try again at the next refresh
            log.debug("committed offset unknown for now", partition=f"{tp.topic}/{tp.partition}", error=str(exc))
            return None
        return committed

    def _commit_failed(self, exc: KafkaError) -> None:
        self.metrics.errors.labels(type(exc).__name__).inc()
        if isinstance(exc, CommitFailedError):
            # The group rebalanced: these partitions now belong to another member, which starts from
            # the last commit. Rows are idempotent, so the redelivery only repeats review messages.
            log.warning("offset commit refused after a rebalance", error=str(exc))
        else:
            log.warning("offset commit failed; the next commit covers it", error=str(exc))

    def _committed(self, batch: Batch, result: BatchResult, commit_s: float) -> None:
        self._in_flight -= 1
        self.metrics.batches_in_flight.set(self._in_flight)
        if result.fenced:  # nothing of it was committed: the new owner redelivers, commits and counts it
            self.metrics.batches_fenced.inc()
            log.info("batch fenced, left to the partitions' new owner", batch=batch.number, records=result.records)
            return
        self._committed_offsets.update(result.offsets)
        self.metrics.batch_committed(result, commit_s)
        self.totals.add(result)
        self.on_step(STEP_COMMITTED, result)
        log.info("batch done", batch=batch.number, **result.counters())

    def _drain(self, timeout_s: float) -> bool:
        """Wait until every dispatched batch is delivered and committed; False on timeout or crash."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight and self._fatal is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("gave up waiting for batches in flight", in_flight=self._in_flight)
                return False
            self._commit_delivered(block_s=min(remaining, 0.1))
        return self._fatal is None

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Rebalance: finish and commit every batch in flight before the partitions change hands.

        kafka-python 3 runs rebalance listeners on its network thread (while this worker's thread waits
        inside poll), where a blocking commit would deadlock; so this waits and commits by awaiting.
        """
        if self._fatal is not None or self._abandon.is_set():
            return
        self._dispatch(self.assembler.close())
        deadline = time.monotonic() + self.drain_timeout_s
        while self._in_flight and self._fatal is None and time.monotonic() < deadline:
            delivered = self._next_delivered(0.0)
            if delivered is None:
                await _network_sleep(self.consumer, 0.02)
                continue
            batch, result = delivered
            started = time.perf_counter()
            try:
                offsets = self._offsets(batch, result)
                if not (result.offsets_committed or result.fenced):
                    await self.consumer.commit_async(offsets)
            except KafkaError as exc:
                self._commit_failed(exc)
            self._committed(batch, result, time.perf_counter() - started)
        self.assigned_partitions = 0
        self._committed_offsets = {}
        self._lag_updated_at = 0.0
        self.metrics.assigned_partitions.set(0)
        for tp in revoked:  # another member reports these now: a stale series would double-count the lag
            self.metrics.forget_partition(tp.topic, tp.partition)
        self._lag_reported -= set(revoked)
        log.info("partitions revoked", partitions=len(revoked), unfinished_batches=self._in_flight)

    # -- stages (their own threads) -----------------------------------------------------------------

    def _prepare(self, record: ConsumerRecord) -> Prepared:
        """Runs in the loader pool: parse the event and load its image, so the scorer only scores."""
        # Every log line written while handling this record carries where it came from (and, once parsed,
        # which event it is), whatever module writes it.
        with structlog.contextvars.bound_contextvars(**record_fields(record)):
            try:
                event = parse_event(record.value)
            except EventError as exc:
                return Prepared(record, None, None, dead_letter_for(record, exc, self.settings.kafka.dead_letter_topic))
            with structlog.contextvars.bound_contextvars(event_id=event.event_id, content_id=event.content_id):
                return Prepared(record, event, self.moderator.load_one(event), None)

    def _stage(self, inbox: queue.Queue[object], work: object, idle: Callable[[], None] | None = None) -> None:
        """One stage's thread: `work` on each item, and `idle` whenever no item came for a reload interval
        (so an idle worker still notices policy edits)."""
        idle_every_s = self.reload_every_s if idle is not None and self.reload_every_s > 0 else None
        while True:
            try:
                item = inbox.get(timeout=idle_every_s)
            except queue.Empty:
                if not self._abandon.is_set():
                    self._run_guarded(idle)
                continue
            if item is _STOP:
                if inbox is self._to_score:
                    self._to_deliver.put(_STOP)  # pass the stop on once everything before it is scored
                return
            if self._abandon.is_set():
                continue
            self._run_guarded(work, item)

    def _run_guarded(self, work: object, *args: object) -> None:
        try:
            work(*args)  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - any surprise here must stop the worker, not hang it
            log.error("pipeline stage failed", stage=threading.current_thread().name, error=repr(exc))
            self.metrics.errors.labels(type(exc).__name__).inc()
            self._fatal = exc
            self._abandon.set()

    def _reload_policies(self) -> None:
        """On the scorer thread, before each batch and while idle: apply edited policy files; a broken edit
        is refused and logged, the last good version stays in force."""
        report = self.moderator.refresh_policies()
        for policy in report.applied:
            self.refused_policies.pop(policy.path, None)
            self.metrics.policy_reloads.labels("applied").inc()
            log.info(
                "policy reloaded", policy=policy.path, policy_version=policy.version, policy_hash=policy.sha256[:12]
            )
        for error in report.refused:
            self.refused_policies[error.path] = error
            self.metrics.policy_reloads.labels("refused").inc()
            log.error(
                "policy edit refused, the last good version stays in force",
                policy=error.path, problems=[f"{field}: {problem}" for field, problem in error.problems],
            )
        for path in report.restored:
            if self.refused_policies.pop(path, None) is not None:
                log.info("policy file restored to the version in force", policy=path)
        if report.applied:
            self.metrics.policies_in_force(self.moderator.policies)
        if report:
            self.metrics.policy_files_refused.set(len(self.refused_policies))

    def _score(self, batch: Batch) -> None:
        self._reload_policies()
        prepared: list[Prepared] = [future.result() for future in batch.prepared]
        scored = [p for p in prepared if p.event is not None]
        for p in scored:
            load_ms = getattr(p.loaded, "load_ms", None)
            if load_ms is not None:
                self.metrics.stage_seconds.labels("load").observe(load_ms / 1000.0)
        started = time.perf_counter()
        verdicts = self.moderator.score_loaded([p.event for p in scored], [p.loaded for p in scored])  # type: ignore[misc]
        self.metrics.stage_seconds.labels("score").observe(time.perf_counter() - started)
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
            self._count_scored(verdict)
        self.metrics.images_scored.inc(
            sum(v.status is VerdictStatus.OK and not v.embedding_reused for v in verdicts)
        )
        dead_letters = [p.dead_letter for p in prepared if p.dead_letter is not None]
        for message in dead_letters:
            self.metrics.dead_letters.labels(header(message.headers, "dlq.reason") or "unknown").inc()
        records = {i: p.record for i, p in enumerate(scored)}
        self._to_deliver.put((batch, verdicts, dead_letters, records))

    def _count_scored(self, verdict: Verdict) -> None:
        if verdict.uncertain:
            self.metrics.uncertain.labels(verdict.top_category or "").inc()
        if verdict.embedding_reused:
            self.metrics.embeddings_reused.inc()
        for shadow in verdict.shadows:
            self.metrics.shadow_verdicts.labels(shadow.policy_version, str(shadow.flagged).lower()).inc()
            if shadow.flagged != verdict.flagged:
                self.metrics.shadow_disagreements.labels(shadow.policy_version).inc()

    def _deliver(self, item: tuple[Batch, list, list[OutgoingMessage], dict[int, ConsumerRecord]]) -> None:
        batch, verdicts, dead_letters, records = item
        result = BatchResult(records=len(batch))
        delay_s = 0.5
        while not self._abandon.is_set():
            try:
                group = self.consumer.group_metadata() if self.delivery.transactional else None  # lock-protected
                self.delivery.deliver(verdicts, dead_letters, result, records, batch.next_offsets(), group)
            except (StorageError, KafkaError) as exc:
                # The database or the broker is away: keep the batch, back off, try again. Nothing is
                # committed meanwhile, and the full pipeline pauses the partitions upstream.
                log.error("delivery failed, retrying", batch=batch.number, error=str(exc), retry_in_s=delay_s)
                self.metrics.errors.labels(type(exc).__name__).inc()
                if isinstance(exc, KafkaError):
                    self._renew_producer()
                self._abandon.wait(delay_s)
                delay_s = min(delay_s * 2, 30.0)
                continue
            self._delivered.put((batch, result))
            return

    def _renew_producer(self) -> None:
        """Publish the retry through a new producer: an idempotent producer whose producer id the broker no
        longer knows (a broker that lost its state) refuses every later send. The old one is closed without
        waiting; the retry sends the whole batch's messages again, under the same keys and event ids."""
        if self._new_producer is None:
            return
        try:
            producer = self._new_producer()
        except KafkaError as exc:  # the broker is still away: keep the old one until the next failure
            log.warning("no new producer yet", error=str(exc))
            return
        old, self.producer = self.producer, producer
        self.delivery.producer = producer
        threading.Thread(target=_close_replaced, args=(old,), name="producer-close", daemon=True).start()
        log.warning("producer replaced after a broker error")


def _close_replaced(producer: KafkaProducer, attempts: int = 5) -> None:
    """Close a replaced producer off the delivery thread. kafka-python's close() flushes first and gives up
    on a timeout; what it holds expires after its delivery timeout (2 min), so a later attempt gets through."""
    for _ in range(attempts):
        try:
            producer.close(timeout=SEND_TIMEOUT_S)
            return
        except KafkaError as exc:
            log.debug("replaced producer still holds messages", error=str(exc))


def record_fields(record: ConsumerRecord) -> dict[str, object]:
    """Where a record came from, for log lines about it."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class _Rebalance(AsyncConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker.assigned_partitions = len(assigned)
        self.worker.metrics.assigned_partitions.set(len(assigned))
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


def _network_sleep(consumer: KafkaConsumer, seconds: float) -> Awaitable[None]:
    """A sleep the consumer's network loop can await, so heartbeats go on while a listener waits.

    kafka-python 3 drives listeners with its own event loop (not asyncio) and exposes no public sleep.
    """
    return consumer._net.sleep(seconds)  # noqa: SLF001 - see the docstring
