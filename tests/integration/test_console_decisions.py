"""Decisions leave the console through the outbox onto the decisions topic (the real broker), once each
acknowledged; and `moderation console user ...` manages the accounts (a real process)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

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
