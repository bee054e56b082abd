"""Kafka fixtures: one embedded Tansu broker per test session, fresh topics and a fresh group per test.

Loaded by tests/conftest.py as a pytest plugin; the helpers (PipelineEnv, new_worker, run_worker_until,
drain, committed_total) are imported by name from here.

Measured quirks of the test broker (see ../shared/FACTS.md): a group join takes session_timeout_ms / 2,
so tests use 2000 ms; reusing a group id can stall after a mid-rebalance leave, so every test gets new
topic names and a new group id.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from consumers.broker import EmbeddedBroker
from consumers.clients import make_producer, read_topic
from consumers.pipeline import Worker
from consumers.producer import send_events
from consumers.settings import Settings
from moderation.moderator import Moderator
from moderation.policy import load_policy
from moderation.storage import VerdictStore, create_engine_for, upgrade
from tests.support.paths import POLICY

__all__ = [
    "PipelineEnv",
    "all_committed",
    "broker",
    "committed_total",
    "drain",
    "new_worker",
    "pipeline_env",
    "run_worker_until",
]

@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@dataclass
class PipelineEnv:
    """Settings pointing at the session broker with this test's own topics and group."""

    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    def produce(self, events: list[dict[str, Any] | bytes]) -> int:
        producer = make_producer(self.settings)
        try:
            return send_events(producer, self.settings.kafka.input_topic, events)
        finally:
            producer.close(timeout=10)

    def read(self, topic: str) -> list[Any]:
        return read_topic(self.settings, topic, idle_s=1.0)


@pytest.fixture
def pipeline_env(broker: EmbeddedBroker, tmp_path: Path, test_model_dir: Path) -> Callable[..., PipelineEnv]:
    def make(database_url: str, **batching: int) -> PipelineEnv:
        tag = secrets.token_hex(4)
        settings = Settings(
            data_dir=tmp_path,
            kafka={
                "bootstrap_servers": broker.bootstrap_servers,
                "input_topic": f"images-{tag}",
                "review_topic": f"review-{tag}",
                "dead_letter_topic": f"dlq-{tag}",
                "consumer_group": f"group-{tag}",
                "session_timeout_ms": 2000,
            },
            database={"url": database_url},
            model={"name_or_path": str(test_model_dir), "device": "cpu"},
            policy={"path": POLICY},
            batching={"max_size": batching.get("max_size", 8), "max_wait_ms": batching.get("max_wait_ms", 200)},
            images={"file_root": tmp_path},  # file:// is opt-in to a root; tests write their images under tmp_path
        )
        return PipelineEnv(settings)

    return make


def run_worker_until(worker: Worker, done: Callable[[], bool], timeout_s: float = 90.0) -> None:
    """Run `worker` in a thread until `done()` holds, then stop it cleanly after the batch in flight."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=30)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "the worker did not stop after the batch in flight"


def all_committed(settings: Settings, produced: int) -> Callable[[], bool]:
    """A `done` test for `run_worker_until`: the group has committed past every produced record."""
    return lambda: committed_total(settings) >= produced


def committed_total(settings: Settings) -> int:
    """The sum over partitions of the group's committed offsets on the input topic."""
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        group = settings.kafka.consumer_group
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == settings.kafka.input_topic)


def new_worker(env: PipelineEnv, moderator: Moderator, store: VerdictStore, **kwargs: Any) -> Worker:
    from consumers.clients import make_consumer

    return Worker(
        consumer=make_consumer(env.settings),
        producer=make_producer(env.settings),
        moderator=moderator,
        store=store,
        settings=env.settings,
        **kwargs,
    )


def drain(env: PipelineEnv, database_url: str, scorer: Any, produced: int) -> VerdictStore:
    """Migrate, then run one worker until the group has committed past every produced record."""
    upgrade(database_url)
    store = VerdictStore(create_engine_for(database_url))
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)
    worker = new_worker(env, moderator, store)
    try:
        run_worker_until(worker, all_committed(env.settings, produced))
    finally:
        worker.consumer.close(autocommit=False)
        worker.close()
        moderator.close()
    return store
