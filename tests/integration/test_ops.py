"""The ops HTTP server: metrics, liveness and readiness, including each failing state."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from consumers.metrics import WorkerMetrics
from consumers.ops import CachedCheck, OpsServer
from consumers.service import serve_running_worker
from moderation.moderator import Moderator
from moderation.policy import load_policy
from moderation.storage import VerdictStore, create_engine_for, upgrade
from tests.support.http import get
from tests.support.kafka import PipelineEnv, new_worker
from tests.support.paths import POLICY


def test_probes_answer_200_or_503_with_the_failing_check_named() -> None:
    state = {"db": True}
    metrics = WorkerMetrics()
    metrics.events_consumed.inc(3)
    server = OpsServer(
        "127.0.0.1",
        0,
        metrics.registry,
        liveness={"loop": lambda: (True, "polled")},
        readiness={
            "database": lambda: (state["db"], "reachable" if state["db"] else "refused"),
            "model": lambda: (True, "x"),
        },
    ).start()
    try:
        assert get(server.port, "/healthz")[0] == 200
        status, body = get(server.port, "/readyz")
        assert status == 200 and json.loads(body)["ok"] is True
        state["db"] = False
        status, body = get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body)["checks"]["database"] == {"ok": False, "detail": "refused"}
        status, text = get(server.port, "/metrics")
        assert status == 200 and "moderation_events_consumed_total 3.0" in text
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


def test_cached_check_runs_at_most_once_per_ttl_and_turns_exceptions_into_failures() -> None:
    calls = []

    def check() -> tuple[bool, str]:
        calls.append(time.monotonic())
        raise ConnectionError("database went away")

    cached = CachedCheck(check, ttl_s=60)
    assert cached() == (False, "ConnectionError: database went away")
    assert cached()[0] is False
    assert len(calls) == 1


@pytest.mark.kafka
def test_a_workers_readiness_fails_without_database_and_liveness_without_polls(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    env.settings = env.settings.model_copy(
        update={"ops": env.settings.ops.model_copy(update={"host": "127.0.0.1", "port": 0, "liveness_timeout_s": 5})}
    )
    upgrade(sqlite_url)
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)
    unreachable = VerdictStore(create_engine_for("postgresql://postgres@127.0.0.1:1/none"))
    worker = new_worker(env, moderator, unreachable)
    server = serve_running_worker(env.settings, worker, unreachable)
    try:
        status, body = get(server.port, "/readyz")
        checks = json.loads(body)["checks"]
        assert status == 503
        assert checks["database"]["ok"] is False
        # No partitions yet is a standby, not a failure (see tests/integration/test_worker_ops.py).
        assert checks["partitions"] == {"ok": True, "detail": "standby: no partitions assigned"}
        assert checks["model"]["ok"] is True and checks["policy"]["ok"] is True
        assert get(server.port, "/healthz")[0] == 200
        worker.last_poll_at = time.monotonic() - 10  # a wedged loop: no poll for longer than the limit
        status, body = get(server.port, "/healthz")
        assert status == 503 and "last poll" in json.loads(body)["checks"]["loop"]["detail"]
    finally:
        server.stop()
        worker.consumer.close(autocommit=False)
        worker.close()
        moderator.close()
