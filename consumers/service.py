"""Wiring for one worker process: settings -> policy files, scorer, store, Kafka clients -> `Worker.run`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import structlog
from kafka import KafkaConsumer

from consumers.clients import ensure_topics, make_consumer, make_worker_producer
from consumers.delivery import BatchResult
from consumers.metrics import WorkerMetrics
from consumers.ops import CachedCheck, Check, OpsServer
from consumers.pipeline import Worker
from consumers.settings import Settings
from consumers.signals import install_stop_signals  # noqa: F401 - re-exported for callers
from moderation.clip_scorer import ClipScorer
from moderation.exceptions import ConfigurationError
from moderation.media import DirectoryMediaStore
from moderation.moderator import Moderator
from moderation.policy_book import PolicyFiles
from moderation.reuse import EmbeddingCache, GuardedLookup
from moderation.storage import EmbeddingStore, VerdictStore, open_engine

log = structlog.get_logger("moderation.service")


def build_moderator(
    settings: Settings, model: str | None = None, store: VerdictStore | None = None, files: PolicyFiles | None = None
) -> Moderator:
    """Load the policies first (cheap, and the likelier mistake), then the model, then warm the text side.

    With a `store`, images already embedded by this model are looked up in its embeddings table. The
    moderator gets the book of `files` (loaded from the settings if not given); a worker watches the files.
    """
    files = files or PolicyFiles(settings.policy)
    scorer = ClipScorer.from_settings(settings.model, model)
    book = files.book
    for policy in book.every_policy():
        scorer.policy_text(policy)
    files.vet_with(scorer.policy_text)  # an edit this model cannot score (another model's head) is refused
    log.info(
        "model and policies loaded", model=scorer.model_name, model_id=scorer.model_id,
        device=str(scorer.device), precision=scorer.precision,
        policy=book.default.path, policy_version=book.default.version, policy_hash=book.default.sha256[:12],
        by_source={source: p.version for source, p in book.by_source.items()},
        shadows=[p.version for p in book.shadows],
    )
    threads = settings.batching.loader_threads or 2 * (os.cpu_count() or 1)
    embeddings = settings.embeddings
    cache = None
    if embeddings.reuse:
        lookup = None
        if store is not None and embeddings.store:
            # Bounded: the lookup runs before each forward pass, and an outage must not stall every batch.
            lookup = GuardedLookup(EmbeddingStore(store.engine).get_many)
        cache = EmbeddingCache(scorer.model_id, embeddings.cache_size, lookup)
    return Moderator(
        scorer, book, settings.images, loader_threads=threads, cache=cache, keep_embeddings=embeddings.store,
        keep_bytes=settings.media.enabled,
    )


class WorkerHealth:
    """What /healthz and /readyz report over a worker's life: starting, then running.

    The ops server starts before anything slow (so a taken port fails at once, and a probe gets an answer
    while the model loads): until `running` is called, liveness says which start-up step is under way and
    readiness fails with it.
    """

    def __init__(self) -> None:
        self._step = "starting"
        self._liveness: dict[str, Check] = {"startup": lambda: (True, self._step)}
        self._readiness: dict[str, Check] = {"startup": lambda: (False, self._step)}

    def starting(self, step: str) -> None:
        self._step = step
        log.info("starting", step=step)

    def liveness(self) -> dict[str, Check]:
        return self._liveness

    def readiness(self) -> dict[str, Check]:
        return self._readiness

    def running(self, settings: Settings, worker: Worker, store: VerdictStore) -> None:
        """/healthz: the loop polls. /readyz: model and policy loaded, database reachable, the loop polls."""
        ops = settings.ops

        def polling() -> tuple[bool, str]:
            age = time.monotonic() - worker.last_poll_at
            return age < ops.liveness_timeout_s, f"last poll {age:.1f} s ago (limit {ops.liveness_timeout_s:g} s)"

        def database() -> tuple[bool, str]:
            store.ping()
            return True, "reachable"

        def partitions() -> tuple[bool, str]:
            # Informational: a member with no partitions (more replicas than partitions) is a healthy
            # standby that takes over on the next rebalance. Requiring partitions would keep it unready
            # for ever, so a rollout would never complete and the disruption budget would block drains.
            count = worker.assigned_partitions
            return True, f"{count} partitions assigned" if count else "standby: no partitions assigned"

        scorer = worker.moderator.scorer
        model = f"{scorer.model_name} ({scorer.model_id})"

        def policy() -> tuple[bool, str]:
            default = worker.moderator.policy  # read each time: reloads swap it
            detail = f"{default.path} version {default.version}"
            refused = worker.policy_runtime.refused  # a copy: the scorer thread updates it
            if refused:
                edits = "; ".join(
                    f"{path}: " + ", ".join(f"{field}: {problem}" for field, problem in error.problems)
                    for path, error in sorted(refused.items())
                )
                detail += f"; edit refused, last good version in force: {edits}"[:1000]
            return True, detail  # still ready: the last good policy decides

        self._liveness = {"loop": polling}
        self._readiness = {
            "model": lambda: (True, f"{model} loaded"),
            "policy": policy,
            "database": CachedCheck(database),
            "partitions": partitions,
            "loop": polling,
        }


def run_worker(settings: Settings, stop: threading.Event, moderator: Moderator | None = None) -> BatchResult:
    """Run one group member until `stop` is set, then leave the group cleanly."""
    metrics = WorkerMetrics()
    health = WorkerHealth()
    # Unwound in reverse order: the worker's producer (the one in use, which a broker error may have
    # replaced), then the consumer leaves the group committing nothing unfinished (offsets were committed
    # batch by batch), then the model, the database, and the ops server last.
    with ExitStack() as resources:
        if settings.ops.enabled:
            resources.callback(start_ops_server(settings, metrics, health).stop)
        if moderator is not None:
            resources.callback(moderator.close)
        health.starting("opening the database")
        # The worker never creates tables: the schema must be one this release can run on.
        store = VerdictStore(resources.enter_context(open_engine(settings.database_url, require_schema=True)))
        store.ping()
        media_store = open_media_store(settings) if settings.media.enabled else None
        files = PolicyFiles(settings.policy)
        if moderator is None:
            health.starting("loading the model and policies")
            moderator = build_moderator(settings, store=store, files=files)
            resources.callback(moderator.close)
        # else: built by the caller from these settings: its book's files, watched from here on
        kafka = settings.kafka
        health.starting("connecting to Kafka")
        ensure_topics(settings, [kafka.review_topic, kafka.dead_letter_topic])
        worker = Worker(
            consumer=resources.enter_context(_leaving(make_consumer(settings))),
            producer=make_worker_producer(settings), moderator=moderator, store=store,
            settings=settings, metrics=metrics, producer_factory=lambda: make_worker_producer(settings),
            policies=files, media_store=media_store,
        )
        resources.callback(worker.close)
        describe(metrics, moderator)
        health.running(settings, worker, store)
        worker.run(stop)
    return worker.totals


def open_media_store(settings: Settings) -> DirectoryMediaStore:
    """The reviewer copies' directory, created if need be: one that cannot be is a configuration error
    now, not a worker that retries its first flagged batch for ever."""
    directory = settings.media_directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"the media directory {directory} cannot be created ({exc.strerror or exc}): set "
            "MODERATION_MEDIA__DIRECTORY to a writable volume, or MODERATION_MEDIA__ENABLED=false"
        ) from exc
    return DirectoryMediaStore(directory)


@contextmanager
def _leaving(consumer: KafkaConsumer) -> Iterator[KafkaConsumer]:
    try:
        yield consumer
    finally:
        consumer.close(autocommit=False)


def describe(metrics: WorkerMetrics, moderator: Moderator) -> None:
    scorer = moderator.scorer
    metrics.model.info({
        "model": scorer.model_id,
        "name": scorer.model_name,  # what it was loaded by: a path or hub id
        "device": str(scorer.device),
        "precision": scorer.precision,
    })
    metrics.policies_in_force(moderator.policies)


def serve_running_worker(settings: Settings, worker: Worker, store: VerdictStore) -> OpsServer:
    """The ops server of a worker built by the caller (tests, embedders), already past its start-up."""
    health = WorkerHealth()
    health.running(settings, worker, store)
    return start_ops_server(settings, worker.metrics, health)


def start_ops_server(settings: Settings, metrics: WorkerMetrics, health: WorkerHealth) -> OpsServer:
    """Bind and serve /metrics, /healthz and /readyz; a port that cannot be bound is a configuration error."""
    ops = settings.ops
    try:
        server = OpsServer(ops.host, ops.port, metrics.registry, health.liveness, health.readiness).start()
    except OSError as exc:
        raise ConfigurationError(
            f"the ops server cannot listen on {ops.host}:{ops.port} ({exc.strerror or exc}): "
            "set MODERATION_OPS__PORT to a free port, or MODERATION_OPS__ENABLED=false"
        ) from exc
    log.info("ops server listening", host=ops.host, port=server.port, paths="/metrics /healthz /readyz")
    return server
