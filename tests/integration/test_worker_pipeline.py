"""The pipelined worker on the real broker and SQLite: back-pressure, delivery retries, rebalances."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from consumers.delivery import STEP_PERSISTED, BatchResult
from consumers.messages import header
from moderation.moderator import Moderator
from moderation.policy import load_policy
from moderation.storage import StorageError, VerdictStore, create_engine_for, upgrade
from moderation.verdict import Verdict
from tests.support.events import colour_events
from tests.support.kafka import PipelineEnv, all_committed, committed_total, new_worker, run_worker_until
from tests.support.paths import POLICY

pytestmark = pytest.mark.kafka


def migrated_store(url: str) -> VerdictStore:
    upgrade(url)
    return VerdictStore(create_engine_for(url))


def close(*workers: Any) -> None:
    for worker in workers:
        worker.consumer.close(autocommit=False)
        worker.close()


def test_a_full_pipeline_pauses_partitions_and_loses_nothing(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=2, max_wait_ms=20)
    env.settings = env.settings.model_copy(
        update={"batching": env.settings.batching.model_copy(update={"max_batches_in_flight": 1})}
    )
    produced = env.produce(colour_events(tmp_path / "images", 24))
    store = migrated_store(sqlite_url)
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)
    in_flight_seen: list[int] = []
    lag_seen: list[float] = []

    def slow_delivery(step: str, result: BatchResult) -> None:
        if step == STEP_PERSISTED:
            in_flight_seen.append(worker.in_flight)  # read-only peek from the delivery thread
            lag_seen.append(total_lag(worker))
            time.sleep(0.1)  # a slow database: the pipeline must fill up and push back

    worker = new_worker(env, moderator, store, on_step=slow_delivery)
    worker.lag.every_s = 0.05  # refresh the gauge often: on a fast run a 1 s refresh may never see the backlog
    try:
        run_worker_until(worker, all_committed(env.settings, produced))
    finally:
        close(worker)
        moderator.close()
    assert store.count() == produced
    assert worker.pauses > 0  # back-pressure engaged instead of buffering without bound
    assert max(in_flight_seen) <= 2  # the limit, plus at most the batch being assembled when it was reached
    assert max(lag_seen) > 0  # while the pipeline pushed back, the exported lag showed the backlog


def total_lag(worker: Any) -> float:
    """The sum of the worker's exported consumer-lag gauge over its partitions."""
    families = worker.metrics.registry.collect()
    return sum(s.value for f in families if f.name == "moderation_consumer_lag_records" for s in f.samples)


class FlakyStore(VerdictStore):
    """A real store whose first saves fail as if the database were briefly unreachable."""

    def __init__(self, inner: VerdictStore, failures: int) -> None:
        super().__init__(inner.engine)
        self.failures = failures
        self.attempts = 0

    def save_batch(self, verdicts: Sequence[Verdict], policies: Sequence[Any] = ()) -> list[Verdict]:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise StorageError("database unreachable (injected)")
        return super().save_batch(verdicts, policies)


def test_delivery_retries_a_batch_the_database_refused(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=4, max_wait_ms=50)
    produced = env.produce(colour_events(tmp_path / "images", 8))
    store = FlakyStore(migrated_store(sqlite_url), failures=3)
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)
    committed_while_failing: list[int] = []
    worker = new_worker(env, moderator, store)
    try:
        stop_watch = threading.Event()

        def watch() -> None:  # offsets must not move while the database refuses the batch
            while not stop_watch.is_set() and store.failures:
                committed_while_failing.append(committed_total(env.settings))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        run_worker_until(worker, all_committed(env.settings, produced))
        stop_watch.set()
        watcher.join(5)
    finally:
        close(worker)
        moderator.close()
    assert store.attempts >= 3 + 2  # three refusals, then every batch saved
    assert set(committed_while_failing) <= {0}
    assert store.count() == produced
    assert len(env.read(env.settings.kafka.review_topic)) == produced // 2  # red and yellow, once each


def test_a_member_joining_mid_stream_takes_over_without_duplicates(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=2, max_wait_ms=20)
    produced = env.produce(colour_events(tmp_path / "images", 96))
    store = migrated_store(sqlite_url)
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)

    def slow(step: str, result: BatchResult) -> None:
        if step == STEP_PERSISTED:
            # ~5 s of work for one member: the second one (its join takes ~1 s) arrives mid-stream,
            # with batches in flight when the rebalance starts.
            time.sleep(0.1)

    first = new_worker(env, moderator, store, on_step=slow)
    second = new_worker(env, moderator, store, on_step=slow)
    stop_first = threading.Event()
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            first.run(stop_first)
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run_first, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while store.count() < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.count() < produced, "the first member finished before the second could join"
        run_worker_until(second, all_committed(env.settings, produced), timeout_s=120)
        shared = (first.consumer.assignment(), second.consumer.assignment())
    finally:
        stop_first.set()
        runner.join(60)
        close(first, second)
        moderator.close()
    assert not errors
    assert store.count() == produced
    assert all(shared), shared  # the partitions were split between the two members
    assert first.totals.verdicts > 0 and second.totals.verdicts > 0  # both members did work
    review = Counter(header(r.headers, "event_id") for r in env.read(env.settings.kafka.review_topic))
    assert len(review) == produced // 2
    # Revocation waits for the batches in flight and commits them, so nothing is delivered twice.
    assert set(review.values()) == {1}
