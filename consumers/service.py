"""Wiring for one worker process: settings -> scorer, policy, store, Kafka clients -> `Worker.run`."""

from __future__ import annotations

import os
import threading
import time

import structlog

from consumers.clients import make_consumer, make_worker_producer
from consumers.metrics import WorkerMetrics
from consumers.ops import CachedCheck, OpsServer
from consumers.signals import install_stop_signals  # noqa: F401 - re-exported for callers
from consumers.worker import BatchResult, Worker
from moderation.moderator import Moderator
from moderation.policy_book import PolicyFiles
from moderation.reuse import EmbeddingCache
from moderation.scorer import ClipScorer
from moderation.settings import Settings
from moderation.storage import EmbeddingStore, VerdictStore, create_engine_for
from moderation.storage.migrate import require_head

log = structlog.get_logger("moderation.service")


def build_moderator(settings: Settings, model: str | None = None, store: VerdictStore | None = None) -> Moderator:
    """Load the policies first (cheap, and the likelier mistake), then the model, then warm the text side.

    With a `store`, images already embedded by this model are looked up in its embeddings table.
    """
    files = PolicyFiles(settings.policy)
    scorer = ClipScorer.from_settings(settings.model, model)
    book = files.book
    for policy in book.every_policy():
        scorer.policy_text(policy)
    log.info(
        "model and policies loaded", model=scorer.model_id, device=str(scorer.device), precision=scorer.precision,
        policy=book.default.path, policy_version=book.default.version, policy_hash=book.default.sha256[:12],
        by_source={source: p.version for source, p in book.by_source.items()},
        shadows=[p.version for p in book.shadows],
    )
    threads = settings.batching.loader_threads or 2 * (os.cpu_count() or 1)
    embeddings = settings.embeddings
    cache = None
    if embeddings.reuse:
        lookup = EmbeddingStore(store.engine).get_many if store is not None and embeddings.store else None
        cache = EmbeddingCache(scorer.model_id, embeddings.cache_size, lookup)
    return Moderator(
        scorer, files, settings.images, loader_threads=threads, cache=cache, keep_embeddings=embeddings.store
    )


def open_store(settings: Settings) -> VerdictStore:
    """Connect and check the schema is migrated: the worker never creates tables on its own."""
    require_head(settings.database_url)
    store = VerdictStore(create_engine_for(settings.database_url))
    store.ping()
    return store


def run_worker(settings: Settings, stop: threading.Event, moderator: Moderator | None = None) -> BatchResult:
    """Run one group member until `stop` is set, then leave the group cleanly."""
    store = open_store(settings)
    moderator = moderator or build_moderator(settings, store=store)
    consumer = make_consumer(settings)
    producer = make_worker_producer(settings)
    worker = Worker(
        consumer=consumer, producer=producer, moderator=moderator, store=store, settings=settings,
        producer_factory=lambda: make_worker_producer(settings),
    )
    describe(worker.metrics, moderator)
    ops = start_ops_server(settings, worker, store) if settings.ops.enabled else None
    try:
        worker.run(stop)
    finally:
        # Offsets were committed batch by batch; nothing unfinished may be committed on the way out.
        consumer.close(autocommit=False)
        worker.producer.close(timeout=10)  # the one in use: a broker error may have replaced it
        moderator.close()
        store.engine.dispose()
        if ops is not None:
            ops.stop()
    return worker.totals


def describe(metrics: WorkerMetrics, moderator: Moderator) -> None:
    scorer = moderator.scorer
    metrics.model.info({
        "model": scorer.model_id,
        "device": str(getattr(scorer, "device", "")),
        "precision": str(getattr(scorer, "precision", "")),
    })
    metrics.policies_in_force(moderator.policies)


def start_ops_server(settings: Settings, worker: Worker, store: VerdictStore) -> OpsServer:
    """/healthz: the loop polls. /readyz: model and policy loaded, database reachable, partitions assigned."""
    ops = settings.ops

    def polling() -> tuple[bool, str]:
        age = time.monotonic() - worker.last_poll_at
        return age < ops.liveness_timeout_s, f"last poll {age:.1f} s ago (limit {ops.liveness_timeout_s:g} s)"

    def database() -> tuple[bool, str]:
        store.ping()
        return True, "reachable"

    def partitions() -> tuple[bool, str]:
        count = worker.assigned_partitions
        return count > 0, f"{count} partitions assigned"

    model = worker.moderator.scorer.model_id

    def policy() -> tuple[bool, str]:
        default = worker.moderator.policy  # read each time: reloads swap it
        return True, f"{default.path} version {default.version}"

    readiness = {
        "model": lambda: (True, f"{model} loaded"),
        "policy": policy,
        "database": CachedCheck(database),
        "partitions": partitions,
        "loop": polling,
    }
    server = OpsServer(ops.host, ops.port, worker.metrics.registry, {"loop": polling}, readiness).start()
    log.info("ops server listening", host=ops.host, port=server.port, paths="/metrics /healthz /readyz")
    return server
