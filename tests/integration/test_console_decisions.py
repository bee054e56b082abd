"""Decisions leave the console through the outbox onto the decisions topic (the real broker), once each
acknowledged; and `moderation console user ...` manages the accounts (a real process)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from consumers.clients import BrokerUnreachable, make_producer, read_topic
from consumers.console.publisher import DecisionPublisher
from consumers.settings import Settings
from moderation.review.values import Actor, Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.review_queue import ReviewQueue
from tests.support.cli import moderation
from tests.support.console import flagged
from tests.support.paths import REPO

pytestmark = pytest.mark.kafka
ALICE = Actor("alice", Role.REVIEWER)
LEAD = Actor("lena", Role.LEAD)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def kafka_settings(broker) -> Settings:  # noqa: ANN001 - the session broker
    tag = secrets.token_hex(4)
    return Settings(kafka={"bootstrap_servers": broker.bootstrap_servers, "decisions_topic": f"decisions-{tag}"})


def decide_two(engine: Engine) -> tuple[ReviewQueue, list[str]]:
    VerdictStore(engine).save_batch([flagged("e1", source="uploads-eu"), flagged("e2")])
    queue = ReviewQueue(engine)
    ids = []
    for violating in (True, False):
        item = queue.next_item(ALICE)
        ids.append(queue.decide(item.id, ALICE, {"violence": violating}, "seen").decision_id)
    return queue, ids


def test_each_decision_is_published_once_with_its_contract(engine: Engine, kafka_settings: Settings) -> None:
    queue, (removed, kept) = decide_two(engine)
    published: list[int] = []
    publisher = DecisionPublisher(queue, lambda: make_producer(kafka_settings), kafka_settings.kafka.decisions_topic,
                                  on_published=published.append)
    try:
        assert publisher.publish_pending() == 2
        assert publisher.publish_pending() == 0  # acknowledged: not sent again
        override = queue.override(queue.item_for_event("e2").id, LEAD, {"violence": True}, "missed it")
        assert publisher.publish_pending() == 1
    finally:
        publisher.stop()
    records = read_topic(kafka_settings, kafka_settings.kafka.decisions_topic, idle_s=1.0)
    # Keyed by content: one content's decisions are in order on its partition; across contents, any order.
    records.sort(key=lambda r: (r.key, r.offset))
    values = [json.loads(r.value) for r in records]
    assert [v["decision_id"] for v in values] == [removed, kept, override.decision_id]
    assert [v["action"] for v in values] == ["remove", "restore", "remove"]
    first = values[0]
    assert first["schema_version"] == 1 and first["content_id"] == "content-e1" and first["source"] == "uploads-eu"
    assert first["categories"] == {"violence": True} and first["violated"] == ["violence"]
    assert first["policy_version"] == "2024-11-01" and first["kind"] == "decide"
    assert values[2]["kind"] == "override" and values[2]["previous_decision_id"] == kept
    assert "reviewer" not in first and "reason" not in first  # they stay in the console
    assert [r.key for r in records] == [b"content-e1", b"content-e2", b"content-e2"]
    assert dict(records[0].headers)["decision_id"] == removed.encode()
    assert published == [2, 1]


def test_a_broker_outage_leaves_decisions_in_the_outbox(engine: Engine, kafka_settings: Settings) -> None:
    queue, ids = decide_two(engine)
    dead = Settings(kafka={"bootstrap_servers": "127.0.0.1:9", "bootstrap_timeout_ms": 500})
    failing = DecisionPublisher(queue, lambda: make_producer(dead), kafka_settings.kafka.decisions_topic)
    with pytest.raises(BrokerUnreachable):
        failing.publish_pending()
    assert [d.decision_id for d, _, _ in queue.unpublished()] == ids
    working = DecisionPublisher(queue, lambda: make_producer(kafka_settings), kafka_settings.kafka.decisions_topic)
    try:
        assert working.publish_pending() == 2
    finally:
        working.stop()
    assert queue.unpublished() == []


def test_the_publisher_thread_sends_when_woken(engine: Engine, kafka_settings: Settings) -> None:
    queue, ids = decide_two(engine)
    publisher = DecisionPublisher(
        queue, lambda: make_producer(kafka_settings), kafka_settings.kafka.decisions_topic
    ).start()
    try:
        publisher.notify()
        deadline = time.monotonic() + 30
        while queue.unpublished() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        publisher.stop()
    assert queue.unpublished() == []
    assert len(read_topic(kafka_settings, kafka_settings.kafka.decisions_topic, idle_s=1.0)) == 2


# --- accounts from the command line ------------------------------------------------------------------


@pytest.fixture
def cli(sqlite_url: str) -> Callable[..., object]:
    upgrade(sqlite_url)

    def run(*args: str, stdin: str | None = None) -> object:
        return subprocess.run(
            [sys.executable, "-m", "consumers.cli", "console", "user", *args], input=stdin, capture_output=True,
            text=True, cwd=REPO, timeout=120, env={**os.environ, "MODERATION_DATABASE__URL": sqlite_url},
        )

    return run


def test_console_users_are_managed_from_the_command_line(cli, sqlite_url: str) -> None:  # noqa: ANN001
    added = cli("add", "alice", "--role", "lead", "--password-stdin", stdin="a long enough password\n")
    assert added.returncode == 0, added.stderr
    assert "added alice (lead, password login)" in added.stdout
    assert cli("add", "pat", "--proxy-only").returncode == 0
    listed = cli("list")
    assert listed.stdout.splitlines() == ["alice\tlead\tenabled\tpassword", "pat\treviewer\tenabled\tproxy"]
    assert cli("role", "pat", "admin").returncode == 0
    assert cli("disable", "alice").returncode == 0
    assert "alice\tlead\tdisabled" in cli("list").stdout
    engine = create_engine_for(sqlite_url)
    try:
        from moderation.storage.accounts import Accounts

        assert Accounts(engine).authenticate("alice", "a long enough password") is None  # disabled
        assert Accounts(engine).get("pat").role is Role.ADMIN
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "Bad Name!", "--password-stdin"), "a long enough password\n", "not a valid user name"),
        (("add", "bob", "--password-stdin"), "short\n", "at least 12 characters"),
        (("add", "bob"), "", "--password-stdin"),
        (("disable", "nobody"), None, "no account 'nobody'"),
    ],
)
def test_account_mistakes_are_one_line(cli, args: tuple[str, ...], stdin: str | None, message: str) -> None:  # noqa: ANN001
    result = cli(*args, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_the_console_help_lists_its_commands() -> None:
    result = moderation("console", "user", "--help")
    assert result.returncode == 0 and "add" in result.stdout and "disable" in result.stdout


# --- `moderation console` as a real process ----------------------------------------------------------


def test_the_console_serves_probes_and_metrics_and_stops_on_sigterm(sqlite_url: str, tmp_path: Path) -> None:
    upgrade(sqlite_url)
    log = tmp_path / "console.log"
    variables = {
        **os.environ, "MODERATION_DATABASE__URL": sqlite_url, "MODERATION_CONSOLE__PORT": "0",
        "MODERATION_CONSOLE__OPS_PORT": "0", "MODERATION_LOG__FORMAT": "json", "MODERATION_DATA_DIR": str(tmp_path),
    }
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "consumers.cli", "console"], cwd=REPO, env=variables,
                                   stdout=sink, stderr=sink, text=True)
    try:
        deadline = time.monotonic() + 60
        serving = None
        while serving is None and time.monotonic() < deadline and process.poll() is None:
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            serving = next((line for line in lines if line.get("event") == "console serving"), None)
            time.sleep(0.1)
        assert serving is not None, log.read_text()
        base, ops = f"http://127.0.0.1:{serving['port']}", f"http://127.0.0.1:{serving['ops_port']}"
        with urllib.request.urlopen(f"{base}/login", timeout=10) as answer:
            assert answer.status == 200 and "Content-Security-Policy" in answer.headers
        opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,), {
            "redirect_request": lambda *a, **k: None}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"{base}/queue", timeout=10)
        assert refused.value.code == 303
        with urllib.request.urlopen(f"{ops}/readyz", timeout=10) as ready:
            assert json.loads(ready.read())["ok"] is True
        with urllib.request.urlopen(f"{ops}/metrics", timeout=10) as metrics:
            assert b"moderation_console_requests_total" in metrics.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_console_on_a_taken_port_or_an_unmigrated_database_is_one_line(sqlite_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        upgrade(sqlite_url)
        busy = moderation("console", "--port", str(port), env={"MODERATION_DATABASE__URL": sqlite_url,
                                                               "MODERATION_DATA_DIR": str(tmp_path)})
    assert busy.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1 and "Traceback" not in busy.stderr
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    unmigrated = moderation("console", "--port", "0", env={"MODERATION_DATABASE__URL": empty,
                                                           "MODERATION_DATA_DIR": str(tmp_path)})
    assert unmigrated.returncode != 0 and "migrate" in unmigrated.stderr
    assert len(unmigrated.stderr.strip().splitlines()) == 1
