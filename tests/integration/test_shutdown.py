"""Shutdown of a real `moderation run` process caught in the middle of a batch.

To stop a worker at a known point of a batch, the test holds a PostgreSQL lock on the verdicts table
(EXCLUSIVE: reads go on, writes wait): the worker's step 1 (the verdicts INSERT) waits on it, which the
test sees in pg_stat_activity. Then it signals the worker, and releases the lock when it wants the batch
to go on. Offsets are checked per partition against where each event sits in the input topic.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaAdminClient

from consumers.messages import header
from consumers.producer import file_event
from consumers.settings import Settings
from moderation.events import parse_event
from moderation.storage import VerdictStore, create_engine_for, upgrade
from tests.support.cli import drain_and_terminate, start_worker, worker_variables
from tests.support.images import colour_files
from tests.support.kafka import PipelineEnv, committed_total

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def verdicts_locked(url: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold an EXCLUSIVE lock on the verdicts table until the block ends (then roll back)."""
    with psycopg.connect(conninfo(url)) as connection:
        connection.execute("LOCK TABLE verdicts IN EXCLUSIVE MODE")
        try:
            yield connection
        finally:
            connection.rollback()


def lock_waiters(url: str) -> int:
    """Backends of this database waiting for a lock: a worker stuck in step 1 of a batch."""
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def committed_offsets(settings: Settings) -> dict[int, int]:
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        group = settings.kafka.consumer_group
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == settings.kafka.input_topic}


def positions(env: PipelineEnv) -> dict[str, tuple[int, int]]:
    """event_id -> (partition, offset) in the input topic."""
    return {parse_event(r.value).event_id: (r.partition, r.offset) for r in env.read(env.settings.kafka.input_topic)}


def wait_for(condition: Any, timeout_s: float, what: str, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the worker exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


@contextmanager
def stuck_mid_batch(
    env: PipelineEnv, url: str, model_dir: Path, tmp_path: Path, extra: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], Path, int, psycopg.Connection[Any]]]:
    """A worker that committed a first wave, then blocked in step 1 of a batch of the second wave."""
    upgrade(url)
    variables = {**worker_variables(env, url, model_dir), **(extra or {})}
    log = tmp_path / "worker.log"
    paths = colour_files(tmp_path, ["red", "blue", "yellow", "green"] * 6)
    first = env.produce([file_event(p, source="shutdown-test") for p in paths[:8]])
    process = start_worker(variables, log)
    try:
        wait_for(lambda: committed_total(env.settings) >= first, 90, "the first wave", process, log)
        with verdicts_locked(url) as lock:
            second = env.produce([file_event(p, source="shutdown-test") for p in paths[8:]])
            wait_for(lambda: lock_waiters(url) > 0, 60, "the worker to wait on the lock", process, log)
            yield process, log, first + second, lock
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def rows_and_commits_agree(env: PipelineEnv, store: VerdictStore) -> tuple[int, int]:
    """(rows, committed records); asserts every row's event is committed and every committed event has a row."""
    where = positions(env)
    committed = committed_offsets(env.settings)
    stored = {v.event_id for v in store.recent(limit=1000)}
    committed_ids = {event_id for event_id, (p, o) in where.items() if o < committed.get(p, 0)}
    assert stored == committed_ids, (sorted(stored - committed_ids), sorted(committed_ids - stored))
    return len(stored), len(committed_ids)


def test_sigterm_during_a_batch_finishes_it_commits_and_exits_0(
    pipeline_env: Any, postgres_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(postgres_url, max_size=4)
    store = VerdictStore(create_engine_for(postgres_url))
    with stuck_mid_batch(env, postgres_url, test_model_dir, tmp_path) as (process, log, produced, lock):
        held = committed_total(env.settings)
        process.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert process.poll() is None  # it waits for the batch in flight instead of dropping it
        assert committed_total(env.settings) == held
        lock.rollback()  # the database answers again: the batch goes on
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert "worker stopping" in log.read_text()
    rows, committed = rows_and_commits_agree(env, store)
    assert held < rows <= produced  # the batch that was waiting was written and committed
    assert store.count() == rows  # one row per event


def test_a_second_sigterm_exits_at_once_and_commits_nothing_unfinished(
    pipeline_env: Any, postgres_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(postgres_url, max_size=4)
    variables = worker_variables(env, postgres_url, test_model_dir)
    store = VerdictStore(create_engine_for(postgres_url))
    with stuck_mid_batch(env, postgres_url, test_model_dir, tmp_path) as (process, log, produced, _lock):
        held = committed_offsets(env.settings)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(timeout=10) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert time.monotonic() - started < 5  # at once, although the batch is still waiting on the lock
        assert committed_offsets(env.settings) == held  # nothing committed past the unfinished batch
    rows_and_commits_agree(env, store)  # the stuck batch's transaction died with the process: no row
    assert store.count() < produced
    # A successor picks up the unfinished batches: every event once, every flagged one reviewed.
    successor = start_worker(variables, log)
    drain_and_terminate(successor, env, produced, log)
    assert successor.returncode == 0, log.read_text()[-3000:]
    assert store.count() == produced
    flagged = {v.event_id for v in store.flagged(limit=1000)}
    assert len(flagged) == produced // 2
    review = Counter(header(r.headers, "event_id") for r in env.read(env.settings.kafka.review_topic))
    assert set(review) == flagged


def test_the_drain_deadline_gives_up_on_the_stuck_batch_and_commits_nothing_of_it(
    pipeline_env: Any, postgres_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(postgres_url, max_size=4)
    store = VerdictStore(create_engine_for(postgres_url))
    deadline = {"MODERATION_BATCHING__DRAIN_TIMEOUT_S": "3"}
    with stuck_mid_batch(env, postgres_url, test_model_dir, tmp_path, deadline) as (process, log, produced, _lock):
        held = committed_offsets(env.settings)
        process.send_signal(signal.SIGTERM)  # once: it waits for the batch, but only for 3 s
        started = time.monotonic()
        assert process.wait(timeout=60) == 1, log.read_text()[-3000:]  # gave up: not a clean exit
        waited = time.monotonic() - started
        assert committed_offsets(env.settings) == held
    assert 3 <= waited < 20
    assert "gave up after 3 s" in log.read_text()
    rows_and_commits_agree(env, store)
    assert store.count() < produced
