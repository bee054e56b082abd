"""A worker as operators meet it: probes from start-up, standby members, idle reloads, true lag, bounded stalls.

Every test runs `run_worker` (the `moderation run` body) or the CLI itself against the real embedded broker
and a real database, and reads the worker only through what an operator sees: /healthz, /readyz, /metrics,
the topics, the exit status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from prometheus_client import generate_latest

from consumers import service
from consumers.clients import ensure_topics
from consumers.metrics import WorkerMetrics
from consumers.producer import file_event
from consumers.service import build_moderator, run_worker
from consumers.settings import Settings
from moderation.events import parse_event
from moderation.exceptions import ConfigurationError
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.testmodel import make_colour_image
from tests.support.cli import worker_variables
from tests.support.http import get
from tests.support.kafka import PipelineEnv, committed_total
from tests.support.paths import POLICY, REPO

WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_ops(settings: Settings, port: int, **policy: Any) -> Settings:
    updates: dict[str, Any] = {"ops": settings.ops.model_copy(update={"host": "127.0.0.1", "port": port})}
    if policy:
        updates["policy"] = settings.policy.model_copy(update=policy)
    return settings.model_copy(update=updates)


class RunningWorker:
    """`run_worker` on a thread, as `moderation run` runs it, with its ops port known in advance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.ops.port
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="worker-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            run_worker(self.settings, self.stop)
        except BaseException as exc:  # surfaced by close()
            self.errors.append(exc)

    def probe(self, path: str) -> tuple[int, str]:
        try:
            return get(self.port, path)
        except OSError as exc:  # not listening yet
            return 0, str(exc)

    def metrics(self) -> str:
        return self.probe("/metrics")[1]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.errors:
            raise self.errors[0]


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def samples(text: str, name: str) -> dict[str, float]:
    """`name`'s samples in a Prometheus page: label text (or '') -> value."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def ready(worker: RunningWorker) -> bool:
    return worker.probe("/readyz")[0] == 200


def colour_events(directory: Path, colours: list[str]) -> list[dict[str, Any]]:
    events = []
    for i, colour in enumerate(colours):
        path = directory / f"{i}-{colour}.png"
        make_colour_image(colour, (64, 48), seed=i).save(path)
        events.append(file_event(path, source="ops-test"))
    return events


@pytest.mark.kafka
def test_a_taken_ops_port_fails_before_the_model_loads(
    pipeline_env: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    upgrade(sqlite_url)
    loads: list[str] = []
    monkeypatch.setattr(service, "build_moderator", lambda *args, **kwargs: loads.append("loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = with_ops(env.settings, taken.getsockname()[1])
        with pytest.raises(ConfigurationError, match="the ops server cannot listen on 127.0.0.1:"):
            run_worker(settings, threading.Event())
    assert loads == []


@pytest.mark.kafka
def test_probes_answer_during_a_slow_start_and_the_output_topics_are_created(
    pipeline_env: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    upgrade(sqlite_url)
    release = threading.Event()
    real_build = service.build_moderator

    def slow_model_load(*args: Any, **kwargs: Any) -> Any:
        release.wait(WAIT_S)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(service, "build_moderator", slow_model_load)
    worker = RunningWorker(with_ops(env.settings, free_port()))
    try:
        # The ops server answers from the first step (opening the database); the start-up is then
        # held at the model load, and the probes must keep answering, live but not ready, there.
        status, body = wait_for(
            lambda: (reply := worker.probe("/healthz"))[0] and "loading the model" in reply[1] and reply,
            "the ops server to report the model load",
        )
        assert status == 200, body
        status, body = worker.probe("/readyz")
        assert status == 503 and "loading the model" in json.loads(body)["checks"]["startup"]["detail"]
        release.set()
        wait_for(lambda: ready(worker), "readiness after the model loaded")
        assert worker.probe("/healthz")[0] == 200
        # Nothing was ever sent to them: they exist because the worker created them at start-up.
        admin = KafkaAdminClient(**env.settings.kafka.client_options())
        try:
            topics = set(admin.list_topics())
        finally:
            admin.close()
        kafka = env.settings.kafka
        assert {kafka.review_topic, kafka.dead_letter_topic} <= topics
    finally:
        release.set()
        worker.close()


@pytest.mark.kafka
def test_a_member_without_partitions_is_a_ready_standby(pipeline_env: Any, sqlite_url: str) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    upgrade(sqlite_url)
    ensure_topics(env.settings, [env.settings.kafka.input_topic], partitions=1)
    workers = [RunningWorker(with_ops(env.settings, free_port())) for _ in range(2)]
    try:

        def settled() -> bool:
            owned = [sum(samples(w.metrics(), "moderation_assigned_partitions").values()) for w in workers]
            return sorted(owned) == [0, 1]

        wait_for(settled, "one member owning the only partition")
        wait_for(lambda: all(ready(w) for w in workers), "both members ready")
        details = [json.loads(w.probe("/readyz")[1])["checks"]["partitions"]["detail"] for w in workers]
        assert sorted(details) == ["1 partitions assigned", "standby: no partitions assigned"]
    finally:
        for worker in workers:
            worker.close()


@pytest.mark.kafka
def test_an_idle_worker_applies_and_refuses_policy_edits(pipeline_env: Any, sqlite_url: str, tmp_path: Path) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    upgrade(sqlite_url)
    policy = tmp_path / "policy.yaml"
    original = POLICY.read_text()
    policy.write_text(original)
    worker = RunningWorker(with_ops(env.settings, free_port(), path=policy, reload_interval_s=0.2))
    try:
        wait_for(lambda: ready(worker), "readiness")
        bumped = original.replace('version: "test-model-1"', 'version: "test-model-2"').replace(
            "threshold: 0.5\n    action: review", "threshold: 0.6\n    action: review"
        )
        assert bumped != original
        policy.write_text(bumped)
        # No event arrives: only a timer can notice the edit.
        wait_for(lambda: 'version="test-model-2"' in worker.metrics(), "the edited policy applied without any event")

        policy.write_text(bumped.replace("categories:", "categories: [", 1))

        def refused() -> dict[str, Any] | None:
            status, body = worker.probe("/readyz")
            check = json.loads(body)["checks"]["policy"] if body.startswith("{") else {}
            return {"status": status, **check} if "edit refused" in check.get("detail", "") else None

        shown = wait_for(refused, "the refused edit in /readyz")
        assert shown["status"] == 200 and shown["ok"] is True  # still ready on the last good version
        assert "version test-model-2" in shown["detail"] and str(policy) in shown["detail"]
        assert samples(worker.metrics(), "moderation_policy_files_refused") == {"": 1.0}

        policy.write_text(bumped)  # the broken edit undone: the version in force again, nothing refused
        wait_for(
            lambda: samples(worker.metrics(), "moderation_policy_files_refused") == {"": 0.0}, "the refusal cleared"
        )
        assert "edit refused" not in worker.probe("/readyz")[1]
    finally:
        worker.close()


def lag_by_partition(worker: RunningWorker) -> dict[str, float]:
    return samples(worker.metrics(), "moderation_consumer_lag_records")


def owned(worker: RunningWorker) -> float:
    return sum(samples(worker.metrics(), "moderation_assigned_partitions").values())


@pytest.mark.kafka
def test_lag_is_the_groups_true_lag_after_a_restart_and_follows_the_assignment(
    pipeline_env: Any, sqlite_url: str, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    upgrade(sqlite_url)
    ensure_topics(env.settings, [env.settings.kafka.input_topic], partitions=4)
    produced = env.produce(colour_events(tmp_path, ["red", "blue", "green", "yellow"] * 3))
    first = RunningWorker(with_ops(env.settings, free_port()))
    try:
        wait_for(lambda: committed_total(env.settings) >= produced, "the first worker to commit everything")
    finally:
        first.close()

    restarted = RunningWorker(with_ops(env.settings, free_port()))
    joined = None
    try:
        # A quiet topic: nothing new arrives, and the group is at the end of every partition.
        lag = wait_for(lambda: len(lags := lag_by_partition(restarted)) == 4 and lags, "a lag series per partition")
        assert lag == dict.fromkeys(lag, 0.0), lag

        joined = RunningWorker(with_ops(env.settings, free_port()))
        wait_for(lambda: owned(restarted) > 0 and owned(joined) > 0, "the partitions shared by both members")

        def series_follow_assignment() -> bool:
            mine, theirs = lag_by_partition(restarted), lag_by_partition(joined)
            return len(mine) == owned(restarted) and len(theirs) == owned(joined) and not set(mine) & set(theirs)

        try:
            wait_for(series_follow_assignment, "each member to report only its own partitions", 15)
        except AssertionError as exc:
            reported = {"restarted": lag_by_partition(restarted), "joined": lag_by_partition(joined)}
            raise AssertionError(f"{exc}: {reported}, owning {owned(restarted)} and {owned(joined)}") from None
    finally:
        restarted.close()
        if joined is not None:
            joined.close()


def test_embedding_lookups_against_a_silent_database_are_bounded(test_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        model={"name_or_path": str(test_model_dir), "device": "cpu"},
        policy={"path": POLICY},
        images={"file_root": tmp_path},
        embeddings={"reuse": True, "store": True},
    )
    with socket.socket() as black_hole:  # accepts connections (the kernel does) and never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        url = f"postgresql://moderation@127.0.0.1:{black_hole.getsockname()[1]}/none"
        store = VerdictStore(create_engine_for(url))
        moderator = build_moderator(settings, store=store)
        try:
            for colours in (["red", "blue"], ["green", "yellow"]):
                events = [parse_event(json.dumps(event).encode()) for event in colour_events(tmp_path, colours)]
                started = time.monotonic()
                verdicts = moderator.moderate(events)
                elapsed = time.monotonic() - started
                # The connect timeout is 10 s; a bounded lookup gives up after 1 s, then skips lookups.
                assert elapsed < 5.0, f"a batch waited {elapsed:.1f} s on the silent database"
                assert [v.status.value for v in verdicts] == ["ok", "ok"]
                assert not any(v.embedding_reused for v in verdicts)
        finally:
            moderator.close()
            store.engine.dispose()


BLOCKING_LOADER = """
import pathlib, sys, threading
from moderation.moderator import Moderator

def load_for_ever(self, event):
    pathlib.Path(sys.argv[1]).touch()  # the test waits for this: an event is in a loader thread
    threading.Event().wait()  # a read that never returns (a pipe, a hung mount)

Moderator.load_one = load_for_ever
from consumers.cli import main
sys.exit(main(["run"]))
"""


@pytest.mark.kafka
def test_a_stuck_loader_cannot_hold_shutdown_past_the_drain_deadline(
    pipeline_env: Any, sqlite_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    upgrade(sqlite_url)
    variables = {**worker_variables(env, sqlite_url, test_model_dir), "MODERATION_BATCHING__DRAIN_TIMEOUT_S": "3"}
    script, entered, log = tmp_path / "stuck.py", tmp_path / "entered", tmp_path / "worker.log"
    script.write_text(BLOCKING_LOADER)
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, str(script), str(entered)],
            cwd=REPO,
            env={**os.environ, **variables},
            stdout=sink,
            stderr=sink,
        )
    try:
        env.produce(colour_events(tmp_path, ["red"]))
        wait_for(lambda: entered.exists() or process.poll() is not None, "the event to reach a loader")
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the worker was still running 30 s after SIGTERM with a 3 s drain deadline") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == 1, log.read_text()
    assert committed_total(env.settings) == 0  # the unfinished event is left for redelivery
    assert "Traceback" not in log.read_text()


def test_metrics_follow_the_naming_conventions_and_include_the_process_collectors() -> None:
    metrics = WorkerMetrics()
    metrics.model.info({"model": "sha256:x"})
    page = generate_latest(metrics.registry).decode()
    families = {line.split()[2]: line.split()[3] for line in page.splitlines() if line.startswith("# TYPE ")}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= set(families)
    assert "python_gc_objects_collected_total" in families or "python_gc_objects_collected" in families
    ours = {name: kind for name, kind in families.items() if name.startswith("moderation_")}
    # Series that carry labels with value 1 end in _info; the old unit-less names are gone.
    assert {"moderation_model_info", "moderation_policy_info", "moderation_policies_info"} <= set(ours)
    assert {"moderation_batch_size", "moderation_consumer_lag", "moderation_policies"}.isdisjoint(ours)
    assert {"moderation_batch_size_images", "moderation_consumer_lag_records"} <= set(ours)
    for name, kind in ours.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_images")), f"{name}: a histogram names its unit"
