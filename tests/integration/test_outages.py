"""Outages on real components: the worker's database, then its broker, go away mid-stream and come back.

Neither the shared PostgreSQL server nor the session broker is stopped (other tests use them): a loopback
TCP proxy (tests/support/tcp_proxy.py) stands between this test's worker and the server, and is cut. Cutting
refuses connects at once and drops open connections, as when a server process is down.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from consumers.broker import EmbeddedBroker, free_port
from consumers.clients import make_consumer, make_producer
from consumers.delivery import STEP_PERSISTED, BatchResult
from consumers.messages import header
from consumers.pipeline import Worker
from consumers.service import build_moderator, serve_running_worker
from consumers.settings import OpsSettings
from moderation.storage import VerdictStore, create_engine_for, upgrade
from tests.support.events import colour_events
from tests.support.http import get
from tests.support.kafka import PipelineEnv, committed_total, new_worker
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# CI keeps the outage short (the retry backoff has reached 8 s by then); for the full minute:
# MODERATION_TEST_DB_OUTAGE_S=60 .venv/bin/python -m pytest tests/integration/test_outages.py -k database
DATABASE_OUTAGE_S = float(os.environ.get("MODERATION_TEST_DB_OUTAGE_S", "12"))
RETRY_CAP_S = 30.0  # the deliver stage's longest backoff: the worst wait between the restore and the next try


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(every_s)


@contextmanager
def running(worker: Worker) -> Iterator[list[BaseException]]:
    """Run the worker in a thread; on exit stop it after the batches in flight and close its clients."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=target, name="outage-worker", daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(timeout=90)
        worker.consumer.close(autocommit=False)
        worker.close()
        worker.moderator.close()
    assert not thread.is_alive(), "the worker did not stop"


def count_revocations(worker: Worker) -> list[float]:
    """Wrap the worker's rebalance hook: when partitions were revoked from it (not the empty first call)."""
    revoked: list[float] = []
    original = worker.rebalancing.revoke

    async def counting(partitions: Any) -> None:
        if partitions:
            revoked.append(time.monotonic())
        await original(partitions)

    worker.rebalancing.revoke = counting  # type: ignore[method-assign]
    return revoked


def metric_total(worker: Worker, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in worker.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(port, "/readyz")
    return status, json.loads(body)


@pytest.mark.postgres
def test_database_outage_holds_offsets_keeps_the_member_and_recovers_by_itself(
    pipeline_env: Any, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    with TcpProxy(target_port=5432) as proxy:
        # connect_timeout: a black-holed host would otherwise hold each retry for the default 10 s.
        url = postgres_url.replace("127.0.0.1:5432", proxy.address) + "?connect_timeout=3"
        env: PipelineEnv = pipeline_env(url, max_size=4, max_wait_ms=50)
        env.settings = env.settings.model_copy(update={"ops": OpsSettings(host="127.0.0.1", port=0)})
        store = VerdictStore(create_engine_for(url))
        first = env.produce(colour_events(tmp_path / "before", 16))
        worker = new_worker(env, build_moderator(env.settings), store)
        revocations = count_revocations(worker)
        ops = serve_running_worker(env.settings, worker, store)
        try:
            with running(worker) as errors:
                wait_for(lambda: committed_total(env.settings) >= first, 90, "the first events to be committed")
                wait_for(lambda: readiness(ops.port)[0] == 200, 15, "readiness before the outage")
                partitions = worker.consumer.assignment()
                assert len(partitions) == 4

                proxy.cut()
                cut_at = time.monotonic()
                second = env.produce(colour_events(tmp_path / "during", 24))  # the stream goes on
                wait_for(lambda: metric_total(worker, "moderation_errors_total", type="StorageError") > 0, 15,
                         "the first failed delivery")
                time.sleep(0.5)  # a batch persisted just before the cut may still have its commit on the way
                held = committed_total(env.settings)
                assert held < first + second
                samples = []
                while time.monotonic() - cut_at < DATABASE_OUTAGE_S:
                    status, body = readiness(ops.port)
                    samples.append({
                        "committed": committed_total(env.settings),
                        "poll_age_s": time.monotonic() - worker.last_poll_at,
                        "assignment": worker.consumer.assignment(),
                        "paused": set(worker.consumer.paused()),
                        "ready": status,
                        "database_ok": body["checks"]["database"]["ok"],
                        "live": get(ops.port, "/healthz")[0],
                    })
                    time.sleep(0.3)
                failures_during_outage = metric_total(worker, "moderation_errors_total", type="StorageError")
                rows_during_outage = VerdictStore(create_engine_for(postgres_url)).count()
                proxy.restore()
                restored_at = time.monotonic()
                wait_for(lambda: committed_total(env.settings) >= first + second, 90, "recovery after the outage")
                recovered_s = time.monotonic() - restored_at
                wait_for(lambda: readiness(ops.port)[0] == 200, 15, "readiness after the outage", every_s=0.5)
            assert not errors, errors
        finally:
            ops.stop()

    print(
        f"database outage {DATABASE_OUTAGE_S:g} s: {failures_during_outage:g} failed deliveries, offsets held at "
        f"{held}/{first + second}, rows {rows_during_outage}, max poll gap "
        f"{max(s['poll_age_s'] for s in samples):.2f} s, ready={sorted({s['ready'] for s in samples})}; "
        f"everything committed {recovered_s:.1f} s after the restore"
    )
    # While the database was away: offsets did not move, the member kept polling and kept its partitions
    # (no rebalance), the full pipeline paused them, and readiness said not ready because of the database.
    assert {s["committed"] for s in samples} == {held}
    assert max(s["poll_age_s"] for s in samples) < 2.0
    assert all(s["assignment"] == partitions for s in samples)
    assert not [t for t in revocations if cut_at <= t <= restored_at + recovered_s]
    assert any(s["paused"] == partitions for s in samples)
    assert worker.pauses > 0
    assert any(s["ready"] == 503 and not s["database_ok"] for s in samples)
    assert all(s["live"] == 200 for s in samples)
    assert failures_during_outage >= 3  # it retried (with backoff: 0.5, 1, 2, 4, 8 s)
    assert rows_during_outage < first + second
    assert recovered_s < RETRY_CAP_S + 10  # the next retry after the restore succeeded
    # Afterwards: nothing lost, nothing twice.
    direct = VerdictStore(create_engine_for(postgres_url))
    assert direct.count() == first + second
    flagged = {v.event_id for v in direct.flagged(limit=1000)}
    assert len(flagged) == (first + second) // 2  # red and yellow
    review = Counter(header(r.headers, "event_id") for r in env.read(env.settings.kafka.review_topic))
    assert set(review) == flagged
    assert set(review.values()) == {1}  # nothing is published before its verdict is stored


# Several session timeouts (2 s); past a minute (MODERATION_TEST_BROKER_OUTAGE_S=75) the producer's flush
# times out too, and the retries go through new producers.
BROKER_OUTAGE_S = float(os.environ.get("MODERATION_TEST_BROKER_OUTAGE_S", "10"))


def test_broker_outage_mid_batch_keeps_the_worker_alive_and_loses_nothing(
    pipeline_env: Any, sqlite_url: str, tmp_path: Path
) -> None:
    # A broker of its own behind the proxy: it advertises the proxy's address, so every connection a client
    # opens after the metadata lookup goes through the proxy too.
    proxy = TcpProxy().start()
    try:
        with EmbeddedBroker(advertised_port=proxy.port) as broker:
            proxy.target = ("127.0.0.1", broker.port)
            env: PipelineEnv = pipeline_env(sqlite_url, max_size=4, max_wait_ms=50)
            env.settings = env.settings.model_copy(
                update={"kafka": env.settings.kafka.model_copy(update={"bootstrap_servers": proxy.address})}
            )
            upgrade(sqlite_url)
            store = VerdictStore(create_engine_for(sqlite_url))
            first = env.produce(colour_events(tmp_path / "before", 16))
            cut = threading.Event()

            def cut_after_persisting(step: str, result: BatchResult) -> None:
                # The broker goes away between step 1 (verdicts stored) and step 2 (publish) of a batch.
                if step == STEP_PERSISTED and armed.is_set() and not cut.is_set():
                    proxy.cut()
                    cut.set()

            armed = threading.Event()
            worker = new_worker(
                env, build_moderator(env.settings), store, on_step=cut_after_persisting,
                producer_factory=lambda: make_producer(env.settings),  # as run_worker wires it
            )
            with running(worker) as errors:
                wait_for(lambda: committed_total(env.settings) >= first, 90, "the first events to be committed")
                armed.set()
                second = env.produce(colour_events(tmp_path / "during", 24))
                wait_for(cut.is_set, 30, "the cut")
                cut_at = time.monotonic()
                rows_at_cut = store.count()
                while time.monotonic() - cut_at < BROKER_OUTAGE_S:
                    assert worker.failure is None, worker.failure  # retrying, not crashed
                    time.sleep(0.2)
                delivery_failures = metric_total(worker, "moderation_errors_total")
                rows_during_outage = store.count()
                proxy.restore()
                restored_at = time.monotonic()
                wait_for(
                    lambda: store.count() >= first + second and committed_total(env.settings) >= first + second,
                    120, "recovery after the broker outage", every_s=0.5,
                )
                recovered_s = time.monotonic() - restored_at
                review = Counter(header(r.headers, "event_id") for r in env.read(env.settings.kafka.review_topic))
            assert not errors, errors
    finally:
        proxy.close()
    print(
        f"broker outage {BROKER_OUTAGE_S:g} s: {delivery_failures:g} errors counted, rows {rows_at_cut} at the cut and "
        f"{rows_during_outage} at its end, all committed {recovered_s:.1f} s after the restore; review messages "
        f"{sum(review.values())} for {len(review)} flagged events"
    )
    assert worker.failure is None
    assert rows_at_cut > first  # the batch being delivered was stored before the broker went
    assert store.count() == first + second  # every event once
    flagged = {v.event_id for v in store.flagged(limit=1000)}
    assert len(flagged) == (first + second) // 2
    assert set(review) == flagged  # every flagged event reached the review topic (repeats are counted above)


def test_broker_restart_mid_batch_the_worker_survives_and_delivers_what_it_holds(
    pipeline_env: Any, sqlite_url: str, tmp_path: Path
) -> None:
    # The embedded broker keeps everything in memory: a restart loses topics, offsets and groups, and the
    # idempotent producer's id. What must hold: the worker survives, delivers the batch it held, and goes on.
    with EmbeddedBroker(port=free_port()) as broker:  # a fixed port, so it can start again on it
        env: PipelineEnv = pipeline_env(sqlite_url, max_size=4, max_wait_ms=50)
        env.settings = env.settings.model_copy(
            update={"kafka": env.settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})}
        )
        upgrade(sqlite_url)
        store = VerdictStore(create_engine_for(sqlite_url))
        first = env.produce(colour_events(tmp_path / "before", 8))
        down = threading.Event()
        held: list[str] = []

        def stop_broker_after_persisting(step: str, result: BatchResult) -> None:
            if step == STEP_PERSISTED and armed.is_set() and not down.is_set():
                held.extend(v.event_id for v in result.stored if v.flagged)
                broker.stop()
                down.set()

        armed = threading.Event()
        # Records a producer cannot deliver expire after 5 s instead of 2 min, so the held batch's flush fails
        # soon (a stale producer does not always get a definite error from the new broker) and CI stays short.
        short = {"request_timeout_ms": 3000, "delivery_timeout_ms": 5000}
        worker = Worker(
            consumer=make_consumer(env.settings), producer=make_producer(env.settings, **short),
            moderator=build_moderator(env.settings), store=store, settings=env.settings,
            on_step=stop_broker_after_persisting, producer_factory=lambda: make_producer(env.settings, **short),
        )
        first_producer = worker.delivery.producer
        with running(worker) as errors:
            wait_for(lambda: committed_total(env.settings) >= first, 90, "the first events to be committed")
            armed.set()
            env.produce(colour_events(tmp_path / "lost", 16))
            wait_for(down.is_set, 30, "the broker to stop")
            time.sleep(3)
            assert worker.failure is None, worker.failure
            broker.start()  # same port, empty
            restarted_at = time.monotonic()
            after = colour_events(tmp_path / "after", 8)
            env.produce(after)
            wait_for(lambda: all(store.get(e["event_id"]) for e in after), 120,
                     "verdicts for the events produced after the restart", every_s=0.5)
            recovered_s = time.monotonic() - restarted_at
            review = Counter(header(r.headers, "event_id") for r in env.read(env.settings.kafka.review_topic))
        assert not errors, errors
    print(f"broker restart: the held batch's {len(held)} flagged items and the new events' verdicts delivered "
          f"{recovered_s:.1f} s after the restart; review topic on the new broker: {sum(review.values())} messages")
    assert worker.failure is None
    assert worker.delivery.producer is not first_producer  # the broken idempotent producer was replaced
    assert held and set(held) <= set(review)  # the held batch's review messages reached the new broker
    flagged_after = {v.event_id for e in after if (v := store.get(e["event_id"])) is not None and v.flagged}
    assert len(flagged_after) == 4 and flagged_after <= set(review)
