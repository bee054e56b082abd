"""The whole pipeline under measurement: embedded broker -> `run_worker` -> SQLite verdicts -> review topic.

(d) throughput and (f) latency both watch the verdicts table from outside the worker: a `RowWatcher`
thread reads new rows every 25 ms and stamps when each one became visible. SQLite's `created_at` is
`CURRENT_TIMESTAMP`, which has one-second resolution, so it cannot time a batch; the watcher's stamp
can (to within one poll interval plus a query).

How (d) is timed. The group join on this broker takes session_timeout_ms / 2 (3 s at 6000 ms) and
is not the pipeline's throughput, and a pipelined worker overlaps batches (while batch 1 is persisted,
batch 2 is scored and batch 3 loaded), so "from the first verdict to the last commit" would credit the
window with work done before it opened (and the last batch's drain has no such head start). So each rep
produces W + 2 x batch events and times the steady state between two batch completions, with the
pipeline equally full at both ends:

    img/s = (rows visible at the first sighting with >= W rows  -  rows at the first sighting)
            / (time of that sighting - time of the first sighting)

The 2 x batch tail events keep the pipeline busy past the window's end; they are then drained, and the
rep only counts if every event got a verdict row and the group's committed offsets (read with
`KafkaAdminClient.list_group_offsets` every 50 ms) cover all of them. `drain_s` (window end to last
commit seen) and `wall_incl_join_s` (worker start to last commit) are recorded as well.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import bench_settings, cpu_seconds, percentile, say

WATCH_INTERVAL_S = 0.025
COMMIT_POLL_S = 0.05


class RowWatcher(threading.Thread):
    """Polls the verdicts table and records, per event id, when its row was first seen (epoch seconds)."""

    def __init__(self, database: Path, broker_pid: int | None = None) -> None:
        super().__init__(name="row-watcher", daemon=True)
        self.database = database
        self.broker_pid = broker_pid
        self.seen: dict[str, float] = {}
        self.created_at: dict[str, str] = {}
        self.sightings: list[tuple[float, int, float]] = []  # (time, rows visible, CPU s) on each change
        self.flagged = 0
        self.errors = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        connection: sqlite3.Connection | None = None
        last_id = 0
        while not self._stop_event.is_set():
            try:
                if connection is None:
                    connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=1.0)
                rows = connection.execute(
                    "SELECT id, event_id, flagged, status, created_at FROM verdicts WHERE id > ? ORDER BY id",
                    (last_id,),
                ).fetchall()
            except sqlite3.Error:
                rows = []  # the table may not be visible yet, or a write holds it for a moment
            now = time.time()
            for row_id, event_id, flagged, status, created_at in rows:
                last_id = max(last_id, row_id)
                self.seen.setdefault(event_id, now)
                self.created_at.setdefault(event_id, created_at)
                self.flagged += int(bool(flagged))
                self.errors += int(status != "ok")
            if rows:
                self.sightings.append((now, len(self.seen), cpu_seconds([self.broker_pid])))
            self._stop_event.wait(WATCH_INTERVAL_S)
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


@dataclass
class WorkerThread:
    """`run_worker(settings, stop, moderator)` in a thread, with its exception kept for the caller."""

    settings: Any
    moderator: Any
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> WorkerThread:
        from consumers.service import run_worker

        def target() -> None:
            try:
                run_worker(self.settings, self.stop, self.moderator)
            except BaseException as exc:  # surfaced by finish()
                self.errors.append(exc)

        self.thread = threading.Thread(target=target, name="bench-worker", daemon=True)
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def finish(self, timeout_s: float = 60.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=timeout_s)
        if self.errors:
            raise RuntimeError(f"the worker failed: {self.errors[0]!r}") from self.errors[0]
        if self.alive():
            raise RuntimeError("the worker did not stop within 60 s of the stop request")


class CommitWatcher:
    """The group's committed offsets on the input topic, summed over partitions, through one admin client."""

    def __init__(self, settings: Any) -> None:
        from kafka import KafkaAdminClient

        self.settings = settings
        self.admin = KafkaAdminClient(**settings.kafka.client_options())

    def total(self) -> int:
        group = self.settings.kafka.consumer_group
        offsets = self.admin.list_group_offsets(group).get(group, {})
        topic = self.settings.kafka.input_topic
        return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == topic)

    def close(self) -> None:
        self.admin.close()


def _prepare(bootstrap: str, workdir: Path, model: str, batch: int, **extra: Any) -> tuple[Any, Path]:
    from moderation.storage import upgrade

    settings = bench_settings(bootstrap=bootstrap, data_dir=workdir, model=model, batch=batch, **extra)
    upgrade(settings.database_url)
    return settings, Path(settings.database_url.removeprefix("sqlite:///"))


def _events(paths: Sequence[Path], count: int, run: str) -> list[dict[str, Any]]:
    from consumers.producer import file_event

    return [
        file_event(paths[i % len(paths)], source="bench", content_id=f"{run}-{i:06d}") for i in range(count)
    ]


def _wait(condition: Any, timeout_s: float, worker: WorkerThread, what: str, interval_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if not worker.alive():
            worker.finish()
            raise RuntimeError(f"the worker exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
    return time.time()


def throughput_rep(
    *, bootstrap: str, moderator: Any, model: str, paths: Sequence[Path], batch: int, workdir: Path, window: int,
    broker_pid: int | None = None, **settings_extra: Any,
) -> dict[str, Any]:
    """(d) one rep: fresh topics, group and DB; produce `window` + 2 x `batch` events (cycling over
    `paths`), run the worker until every one has a verdict row and its offset is committed.
    `settings_extra` goes to `bench_settings` (bench/media.py passes `policy` and `media`)."""
    from consumers.clients import make_producer, read_topic
    from consumers.producer import send_events

    settings, database = _prepare(bootstrap, workdir, model, batch, **settings_extra)
    count = window + 2 * batch
    producer = make_producer(settings, linger_ms=5)
    try:
        send_events(producer, settings.kafka.input_topic, _events(paths, count, f"d-{uuid.uuid4().hex[:6]}"))
    finally:
        producer.close(timeout=10)

    watcher = RowWatcher(database, broker_pid)
    watcher.start()
    commits = CommitWatcher(settings)
    worker = WorkerThread(settings, moderator)
    started = time.time()
    worker.start()
    try:
        timeout_s = 120 + count * 2.0
        _wait(lambda: len(watcher.seen) >= count, timeout_s, worker, f"{count} verdict rows", 0.05)
        committed_at = _wait(lambda: commits.total() >= count, 60, worker, "the offset commits", COMMIT_POLL_S)
    finally:
        worker.finish()
        commits.close()
        watcher.stop()
    first_at, first_rows, first_cpu = watcher.sightings[0]
    end_at, end_rows, end_cpu = next(s for s in watcher.sightings if s[1] >= window)
    review = read_topic(settings, settings.kafka.review_topic, idle_s=1.0, timeout_s=15 if watcher.flagged else 3)
    span = end_at - first_at
    rate = (end_rows - first_rows) / span if span > 0 and end_rows > first_rows else float("nan")
    return {
        "img_per_s": rate,
        "events": count,
        "window_rows": end_rows - first_rows,
        "first_batch_rows": first_rows,
        "join_and_first_batch_s": round(first_at - started, 3),
        "window_s": round(span, 3),
        # this process (worker, watcher) + the broker; with the watcher's own polling included
        "cores_busy": round((end_cpu - first_cpu) / span, 2) if span > 0 else None,
        "core_ms_per_img": round((end_cpu - first_cpu) * 1000 / (end_rows - first_rows), 1)
        if end_rows > first_rows else None,
        "drain_s": round(committed_at - end_at, 3),
        "wall_incl_join_s": round(committed_at - started, 3),
        "flagged_rows": watcher.flagged,
        "error_rows": watcher.errors,
        "review_messages": len(review),
    }


def latency_run(
    *, bootstrap: str, moderator: Any, model: str, paths: Sequence[Path], batch: int, workdir: Path,
    rate: float, seconds: float,
) -> dict[str, Any]:
    """(f) events at a fixed rate for `seconds`; per event, verdict row visible minus send time.

    The worker joins first (a probe event goes through), so the join is not in any latency. The send
    time is also the event's `uploaded_at`, so `created_at - uploaded_at` is recorded as well (it has
    SQLite's one-second resolution: a cross-check, not the figure).
    """
    from consumers.clients import make_producer
    from consumers.producer import image_event

    settings, database = _prepare(bootstrap, workdir, model, batch)
    watcher = RowWatcher(database)
    watcher.start()
    worker = WorkerThread(settings, moderator).start()
    producer = make_producer(settings, linger_ms=0)
    topic = settings.kafka.input_topic
    sent: dict[str, float] = {}
    try:
        probe = image_event(content_id="probe", source="bench", image_url=paths[0].resolve().as_uri())
        producer.send(topic, key=b"probe", value=json.dumps(probe).encode())
        producer.flush()
        _wait(lambda: probe["event_id"] in watcher.seen, 120, worker, "the probe event's verdict", 0.05)
        count = max(1, int(rate * seconds))
        say(f"(f) latency: {count} events at {rate:.2f}/s for {seconds:.0f} s")
        began = time.monotonic()
        for i in range(count):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = datetime.now(timezone.utc)
            event = image_event(
                content_id=f"f-{i:06d}", source="bench", image_url=paths[i % len(paths)].resolve().as_uri(),
                uploaded_at=now,
            )
            producer.send(topic, key=event["content_id"].encode(), value=json.dumps(event).encode())
            sent[event["event_id"]] = now.timestamp()
        producer.flush()
        achieved = count / (time.monotonic() - began)
        _wait(lambda: all(e in watcher.seen for e in sent), 120 + count, worker, "every latency verdict", 0.05)
    finally:
        producer.close(timeout=10)
        worker.finish()
        watcher.stop()
    latencies = [(watcher.seen[e] - t) * 1000 for e, t in sent.items()]
    coarse = []
    for event_id, t in sent.items():
        created = datetime.fromisoformat(watcher.created_at[event_id]).replace(tzinfo=timezone.utc)
        coarse.append((created.timestamp() - t) * 1000)
    return {
        "target_rate": round(rate, 3),
        "achieved_rate": round(achieved, 3),
        "events": len(sent),
        "p50_ms": round(percentile(latencies, 50) or 0, 1),
        "p90_ms": round(percentile(latencies, 90) or 0, 1),
        "p99_ms": round(percentile(latencies, 99) or 0, 1),
        "max_ms": round(max(latencies), 1),
        "created_at_p50_ms": round(percentile(coarse, 50) or 0, 1),
        "created_at_p99_ms": round(percentile(coarse, 99) or 0, 1),
        "method": "row first seen by a 25 ms poller minus send time (= uploaded_at); created_at has 1 s resolution",
    }
