"""The `moderation` command line, run as a real process: settings, policy check, migrate, run, demo."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from consumers.messages import header
from consumers.producer import file_event
from moderation.events import parse_event
from moderation.storage import VerdictStore, create_engine_for
from moderation.testmodel import make_colour_image
from tests.support.cli import drain_and_terminate, moderation, start_worker, worker_variables
from tests.support.http import get
from tests.support.images import colour_files
from tests.support.kafka import PipelineEnv, committed_total
from tests.support.paths import POLICY, REPO


def test_settings_prints_effective_settings_with_secrets_masked() -> None:
    result = moderation(
        "settings",
        env={
            "MODERATION_DATABASE__URL": "postgresql://app:hunter2@127.0.0.1:5432/verdicts",
            "MODERATION_KAFKA__SASL_PASSWORD": "kafka-secret",
            "MODERATION_BATCHING__MAX_SIZE": "17",
        },
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["batching"]["max_size"] == 17
    assert shown["database"]["url"] == "postgresql://app:**********@127.0.0.1:5432/verdicts"
    assert "hunter2" not in result.stdout and "kafka-secret" not in result.stdout


def test_invalid_settings_are_refused_with_the_variable_named() -> None:
    result = moderation("settings", env={"MODERATION_MODEL__DEVICE": "gpu"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: MODERATION_MODEL__DEVICE: ")


def test_policy_check_accepts_good_files_and_names_file_field_problem(tmp_path: Path) -> None:
    good = moderation("policy", "check", "--skip-examples", str(POLICY), "policies/default.yaml")
    assert good.returncode == 0, good.stderr
    assert "version=test-model-1" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: '2'\ncategories:\n  safe: {prompts: [a]}\n  nsfw: {prompts: [b], threshold: 2, action: block}\n"
    )
    result = moderation("policy", "check", str(bad))
    assert result.returncode == 1
    assert f"{bad}: categories.nsfw.threshold: Input should be less than or equal to 1" in result.stderr


def test_migrate_creates_the_schema_and_is_repeatable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'verdicts.db'}"
    for _ in range(2):
        result = moderation("migrate", env={"MODERATION_DATABASE__URL": url})
        assert result.returncode == 0, result.stderr
        assert "schema at revision 0009" in result.stdout
    assert VerdictStore(create_engine_for(url)).count() == 0


def test_run_refuses_an_unmigrated_database(tmp_path: Path, test_model_dir: Path) -> None:
    result = moderation(
        "run",
        env={"MODERATION_DATABASE__URL": f"sqlite:///{tmp_path / 'empty.db'}", "MODERATION_POLICY__PATH": str(POLICY)},
    )
    assert result.returncode == 1
    assert "moderation migrate" in result.stderr


def test_missing_model_gives_a_clear_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    assert moderation("migrate", env={"MODERATION_DATABASE__URL": url}).returncode == 0
    result = moderation(
        "run",
        env={
            "MODERATION_DATABASE__URL": url,
            "MODERATION_MODEL__NAME_OR_PATH": str(tmp_path / "no-such-model"),
            "MODERATION_POLICY__PATH": str(POLICY),
            "HF_HUB_OFFLINE": "1",
        },
    )
    assert result.returncode == 1
    assert "no-such-model" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.kafka
def test_run_processes_events_and_exits_0_on_sigterm(
    pipeline_env: Any, sqlite_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    paths = colour_files(tmp_path, ["red", "blue", "yellow", "green", "red"])
    produced = env.produce([file_event(p, source="cli-test") for p in paths])
    variables = worker_variables(env, sqlite_url, test_model_dir)
    assert moderation("migrate", env=variables).returncode == 0
    log = tmp_path / "worker.log"
    process = start_worker(variables, log)
    drain_and_terminate(process, env, produced, log)
    assert process.returncode == 0, log.read_text()
    store = VerdictStore(create_engine_for(sqlite_url))
    assert store.count() == produced
    assert {v.content_id for v in store.flagged()} == {"0-red.jpg", "2-yellow.jpg", "4-red.jpg"}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "worker stopping" for line in lines)  # JSON logs, clean shutdown
    flagged_lines = [line for line in lines if line.get("event") == "flagged"]
    assert sorted(line["content_id"] for line in flagged_lines) == ["0-red.jpg", "2-yellow.jpg", "4-red.jpg"]
    for line in flagged_lines:  # every line about an event says which event and where it came from
        assert {"event_id", "content_id", "topic", "partition", "offset", "timestamp", "level"} <= set(line)
        assert line["topic"] == env.settings.kafka.input_topic
    started = next(line for line in lines if line.get("event") == "starting")
    assert started["settings"]["database"]["url"] == sqlite_url  # the effective settings, at start-up


@pytest.mark.kafka
def test_a_sigterm_during_start_up_is_a_clean_stop(
    pipeline_env: Any, sqlite_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    """The stop handler is installed before torch and the model load: an early SIGTERM exits 0."""
    env: PipelineEnv = pipeline_env(sqlite_url)
    variables = worker_variables(env, sqlite_url, test_model_dir)
    assert moderation("migrate", env=variables).returncode == 0
    log = tmp_path / "worker.log"
    process = start_worker(variables, log)
    try:
        time.sleep(1.5)  # well inside the imports and the model load
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, log.read_text()
    assert "stopping after the batch in flight" in log.read_text()


@pytest.mark.kafka
def test_sigkilled_worker_is_replaced_without_duplicate_rows(
    pipeline_env: Any, sqlite_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=3)
    colours = ["red", "blue", "yellow", "green"] * 4
    produced = env.produce([file_event(p, source="kill-test") for p in colour_files(tmp_path, colours)])
    variables = worker_variables(env, sqlite_url, test_model_dir)
    assert moderation("migrate", env=variables).returncode == 0
    store = VerdictStore(create_engine_for(sqlite_url))
    log = tmp_path / "worker.log"

    victim = start_worker(variables, log)
    deadline = time.monotonic() + 60
    while store.count() == 0 and time.monotonic() < deadline:  # kill as soon as the first batch is written
        assert victim.poll() is None, log.read_text()
        time.sleep(0.01)
    victim.kill()  # SIGKILL: no clean-up, no leave-group, no offset commit for work in flight
    victim.wait(timeout=10)
    rows_at_kill = store.count()
    assert 0 < rows_at_kill < produced

    successor = start_worker(variables, log)
    drain_and_terminate(successor, env, produced, log)
    assert successor.returncode == 0, log.read_text()
    assert store.count() == produced  # one row per event: nothing lost, nothing twice
    flagged = {v.event_id for v in store.flagged(limit=100)}
    assert len(flagged) == 8
    review_ids = Counter(header(r.headers, "event_id") for r in env.read(env.settings.kafka.review_topic))
    assert set(review_ids) == flagged  # every flagged event reached the review topic
    assert sum(review_ids.values()) - len(flagged) <= 3  # repeats: at most the one batch in flight at the kill


@pytest.mark.kafka
def test_produce_sends_one_contract_event_per_file(pipeline_env: Any, sqlite_url: str, tmp_path: Path) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    make_colour_image("red", (64, 48)).save(paths[0], "PNG")
    make_colour_image("blue", (64, 48)).save(paths[1], "JPEG")
    kafka = env.settings.kafka
    variables = {
        "MODERATION_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "MODERATION_KAFKA__INPUT_TOPIC": kafka.input_topic,
    }
    result = moderation("produce", *map(str, paths), "--inline", "--source", "trial", env=variables)
    assert result.returncode == 0, result.stderr
    assert f"produced 2 events to {kafka.input_topic}" in result.stdout
    events = [parse_event(r.value) for r in env.read(kafka.input_topic)]
    assert sorted(e.content_id for e in events) == ["a.png", "b.jpg"]
    assert {e.source for e in events} == {"trial"}
    assert sorted(e.inline_bytes for e in events) == sorted(p.read_bytes() for p in paths)


def test_demo_runs_end_to_end_and_exits_0(tmp_path: Path, test_model_dir: Path) -> None:
    result = moderation("demo", env={"MODERATION_DATA_DIR": str(tmp_path)}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test model" in result.stderr.lower()
    assert "one per flagged verdict" in result.stdout
    assert "11/11 events have a verdict; 4 flagged, 4 review messages" in result.stdout
    # Then the README's next step: the console on the demo's database, as the demo's last lines say.
    export = next(line for line in result.stdout.splitlines() if line.strip().startswith("export "))
    variables = dict(word.split("=", 1) for word in shlex.split(export.strip())[1:])
    assert set(variables) == {"MODERATION_DATA_DIR", "MODERATION_POLICY__PATH", "MODERATION_MODEL__NAME_OR_PATH"}
    added = subprocess.run(
        [sys.executable, "-m", "consumers.cli", "console", "user", "add", "me", "--role", "lead", "--password-stdin"],
        input="a long enough password\n", capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, **variables},
    )
    assert added.returncode == 0, added.stderr
    from consumers.console.app import create_app
    from consumers.console.server import console_context
    from consumers.settings import Settings
    from tests.support.console import CSRF

    settings = Settings(
        data_dir=Path(variables["MODERATION_DATA_DIR"]), policy={"path": variables["MODERATION_POLICY__PATH"]}
    )
    with console_context(settings, publish=False) as context, TestClient(
        create_app(context), base_url="https://testserver", follow_redirects=False
    ) as browser:
        token = CSRF.search(browser.get("/login").text).group(1)
        assert browser.post("/login", data={"username": "me", "password": "a long enough password",
                                            "csrf": token}).status_code == 303
        item = browser.get("/queue").headers["location"].split("?")[0]
        page = browser.get(item).text
        assert "≥ 0.5 → " in page and "/media/" in page  # the test-model policy's thresholds, the copy
        assert browser.get("/media/" + item.rsplit("/", 1)[1]).headers["content-type"] == "image/jpeg"


def test_build_moderator_applies_the_model_settings(test_model_dir: Path) -> None:
    from consumers.service import build_moderator
    from consumers.settings import Settings

    settings = Settings(
        model={"name_or_path": str(test_model_dir), "device": "cpu", "cpu_mode": "int8"},
        policy={"path": POLICY},
        batching={"loader_threads": 3},
    )
    moderator = build_moderator(settings)
    try:
        assert moderator.scorer.precision == "int8"  # type: ignore[attr-defined]
        assert moderator._loader_threads == 3
    finally:
        moderator.close()


def ops_port(log: Path, process: subprocess.Popen[str], timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "ops server listening":
                return int(json.loads(line)["port"])
        time.sleep(0.2)
    raise AssertionError("the worker never said where its ops server listens")


def metric(text: str, name: str) -> float:
    """The sum of every sample of `name` (all label sets) in a Prometheus text page."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((f"{name} ", f"{name}{{"))
    )


@pytest.mark.kafka
def test_a_running_workers_metrics_move_as_events_flow_and_it_turns_ready(
    pipeline_env: Any, sqlite_url: str, test_model_dir: Path, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url)
    variables = worker_variables(env, sqlite_url, test_model_dir)
    assert moderation("migrate", env=variables).returncode == 0
    log = tmp_path / "worker.log"
    process = start_worker(variables, log)
    try:
        port = ops_port(log, process)
        # The ops server answers from start-up; the model and policy metrics exist once it is ready.
        deadline = time.monotonic() + 60
        while get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        status, before = get(port, "/metrics")
        assert status == 200 and metric(before, "moderation_events_consumed_total") == 0
        assert 'moderation_policy_info{sha256="' in before and 'version="test-model-1"' in before
        paths = colour_files(tmp_path, ["red", "blue", "yellow", "green", "red", "blue"])
        produced = env.produce([file_event(p, source="metrics-test") for p in paths] + [b"not json"])
        deadline = time.monotonic() + 90
        while committed_total(env.settings) < produced and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(0.5)  # the committed-batch metrics are recorded right after the commit returns
        status, after = get(port, "/metrics")
        assert metric(after, "moderation_events_consumed_total") == produced
        assert metric(after, "moderation_verdicts_total") == produced - 1
        assert metric(after, 'moderation_flagged_total{category="red"}') == 2
        assert metric(after, 'moderation_flagged_total{category="yellow"}') == 1
        assert metric(after, 'moderation_dead_letters_total{reason="invalid_json"}') == 1
        assert metric(after, "moderation_images_scored_total") == produced - 1
        assert metric(after, "moderation_end_to_end_seconds_count") == produced - 1
        assert metric(after, 'moderation_stage_seconds_count{stage="score"}') >= 1
        assert metric(after, "moderation_assigned_partitions") == 4
        # Everything is committed: once the lag gauge has been refreshed (every second), it reads 0 on
        # every partition that received events, and it exists for at least one of them.
        time.sleep(1.5)
        lag_lines = [
            line
            for line in get(port, "/metrics")[1].splitlines()
            if line.startswith("moderation_consumer_lag_records{")
        ]
        assert lag_lines, "no consumer lag exported"
        assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in lag_lines), lag_lines
        status, body = get(port, "/readyz")
        assert status == 200, body
        assert get(port, "/healthz")[0] == 200
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, log.read_text()
