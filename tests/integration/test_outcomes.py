"""Reviewer decisions: the outcome contract, the store on SQLite and PostgreSQL, the consumer on the real
broker, and `moderation policy precision` run as a process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import inspect, update

from consumers.broker import EmbeddedBroker
from consumers.clients import make_consumer, make_producer, read_topic
from consumers.messages import header
from consumers.outcome_consumer import OutcomeConsumer, group_id, run_outcomes
from consumers.settings import Settings
from moderation.events import REASON_EMPTY, REASON_INVALID_JSON, REASON_TOO_LARGE, REASON_UNSUPPORTED_VERSION
from moderation.exceptions import EventError
from moderation.review_outcome import ID_MAX_LENGTH, REASON_INVALID_OUTCOME, ReviewOutcome, parse_outcome
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import review_outcomes_table, verdicts_table
from moderation.storage.review_decisions import CategoryPrecision, OutcomeStore, ReviewCounts
from moderation.timespec import parse_since
from moderation.verdict import Verdict, VerdictStatus
from tests.support.kafka import committed_total
from tests.support.paths import REPO

UTC = timezone.utc
CEST = timezone(timedelta(hours=2))
DECIDED = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
MODEL = "test/clip"


def outcome_json(**fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "schema_version": 1, "event_id": "e-1", "outcome": "confirmed", "decided_at": DECIDED.isoformat(),
    }
    message.update(fields)
    return message


def outcome(event_id: str, result: str = "confirmed", at: datetime = DECIDED, **fields: Any) -> ReviewOutcome:
    message = outcome_json(event_id=event_id, outcome=result, decided_at=at.isoformat(), **fields)
    return parse_outcome(json.dumps(message).encode())


def refused(raw: bytes | None, **kwargs: Any) -> EventError:
    with pytest.raises(EventError) as info:
        parse_outcome(raw, **kwargs)
    return info.value


# --- the contract -----------------------------------------------------------------------------------


def test_a_full_outcome_parses_and_unknown_fields_are_ignored() -> None:
    raw = json.dumps(outcome_json(
        outcome="overturned", category="violent", reviewer="alice", decided_at="2026-11-27T14:00:00+02:00",
        note="added by a newer review tool",
    )).encode()
    parsed = parse_outcome(raw)
    assert parsed.event_id == "e-1" and parsed.outcome == "overturned"
    assert parsed.category == "violent" and parsed.reviewer == "alice"
    assert parsed.decided_at == DECIDED  # the same instant, whatever the offset
    assert parse_outcome(parsed.to_json()) == parsed


def test_category_and_reviewer_are_optional() -> None:
    parsed = parse_outcome(json.dumps(outcome_json(decided_at="2026-11-27T12:00:00Z")).encode())
    assert (parsed.category, parsed.reviewer, parsed.decided_at) == (None, None, DECIDED)
    assert b"category" not in parsed.to_json()


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"", REASON_EMPTY, "no value"),
        (None, REASON_EMPTY, "no value"),
        (b"{not json", REASON_INVALID_JSON, "Expecting property name"),
        (b'{"event_id": "\xff"}', REASON_INVALID_JSON, "can't decode"),
        (b'["confirmed"]', REASON_INVALID_JSON, "expected a JSON object, got list"),
        (json.dumps(outcome_json(schema_version=2)).encode(), REASON_UNSUPPORTED_VERSION, "schema_version 2"),
        (json.dumps(outcome_json(schema_version="1")).encode(), REASON_INVALID_OUTCOME, "schema_version"),
        (json.dumps(outcome_json(schema_version=True)).encode(), REASON_INVALID_OUTCOME, "schema_version"),
        (json.dumps(outcome_json(outcome="approved")).encode(), REASON_INVALID_OUTCOME, "outcome"),
        (json.dumps(outcome_json(outcome="Confirmed")).encode(), REASON_INVALID_OUTCOME, "outcome"),
        (json.dumps({k: v for k, v in outcome_json().items() if k != "event_id"}).encode(),
         REASON_INVALID_OUTCOME, "event_id: Field required"),
        (json.dumps(outcome_json(event_id="")).encode(), REASON_INVALID_OUTCOME, "event_id"),
        (json.dumps(outcome_json(event_id=17)).encode(), REASON_INVALID_OUTCOME, "event_id"),
        (json.dumps(outcome_json(event_id="x" * (ID_MAX_LENGTH + 1))).encode(), REASON_INVALID_OUTCOME, "event_id"),
        (json.dumps(outcome_json(decided_at="2026-11-27T12:00:00")).encode(), REASON_INVALID_OUTCOME, "timezone"),
        (json.dumps(outcome_json(decided_at=1764244800)).encode(), REASON_INVALID_OUTCOME, "ISO 8601"),
        (json.dumps(outcome_json(decided_at="yesterday")).encode(), REASON_INVALID_OUTCOME, "decided_at"),
        (json.dumps(outcome_json(category="Violent Content")).encode(), REASON_INVALID_OUTCOME, "category"),
        (json.dumps(outcome_json(reviewer=42)).encode(), REASON_INVALID_OUTCOME, "reviewer"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None,
)
def test_a_broken_outcome_is_refused_with_its_reason(raw: bytes | None, reason: str, detail: str) -> None:
    error = refused(raw)
    assert error.reason == reason
    assert detail.lower() in error.detail.lower()


def test_an_oversized_message_is_refused_before_parsing() -> None:
    raw = json.dumps(outcome_json(reviewer="r" * 200)).encode()
    error = refused(raw, max_bytes=100)
    assert error.reason == REASON_TOO_LARGE and str(len(raw)) in error.detail
    assert parse_outcome(raw).reviewer == "r" * 200  # the default limit is generous


def test_contract_limits_match_the_table() -> None:
    columns = review_outcomes_table.c
    assert ID_MAX_LENGTH == columns.event_id.type.length == columns.reviewer.type.length


# --- time spans ------------------------------------------------------------------------------------


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        (" 7d ", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T08:30:00", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20T08:30:00Z", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20T10:30:00+02:00", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
    ],
)
def test_parse_since_reads_spans_and_iso_times(text: str, expected: datetime) -> None:
    since = parse_since(text, now=NOW)
    assert since == expected and since.utcoffset() == timedelta(0)


def test_parse_since_defaults_to_the_current_time_and_refuses_nonsense() -> None:
    before = datetime.now(UTC)
    since = parse_since("1h")
    assert before - timedelta(hours=1) <= since <= datetime.now(UTC) - timedelta(hours=1)
    for text in ("7x", "", "d", "-3d", "0d", "2026-13-01", "last week"):
        with pytest.raises(ValueError, match="since"):
            parse_since(text, now=NOW)


# --- the store, on both databases ------------------------------------------------------------------


@pytest.fixture
def migrated(database_url: str) -> Iterator[tuple[VerdictStore, OutcomeStore]]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield VerdictStore(engine), OutcomeStore(engine)
    engine.dispose()


def verdict(event_id: str, category: str | None = "nsfw", **changes: Any) -> Verdict:
    """A flagged verdict in `category` with its own image hash; `changes` overrides any field."""
    fields: dict[str, Any] = {
        "event_id": event_id, "content_id": f"c-{event_id}", "source": "uploads", "status": VerdictStatus.OK,
        "flagged": True, "top_category": category, "action": "block", "scores": {category or "safe": 0.9},
        "best_prompt": None, "policy_version": "p1", "policy_hash": "ab" * 32, "model_id": MODEL,
        "image_ref": f"https://images.example.com/{event_id}.jpg", "image_sha256": f"{event_id:0>64}"[:64],
        "uploaded_at": DECIDED - timedelta(hours=1),
    }
    fields.update(changes)
    return Verdict(**fields)


def test_save_many_keeps_the_latest_decision_per_event(migrated: tuple[VerdictStore, OutcomeStore]) -> None:
    _, store = migrated
    first = outcome("e-1", "confirmed", DECIDED, reviewer="alice")
    assert store.save_many([first]) == 1
    assert store.save_many([first]) == 0  # redelivered: nothing changes
    assert store.save_many([outcome("e-1", "overturned", DECIDED - timedelta(minutes=5))]) == 0  # older
    assert store.save_many([outcome("e-1", "overturned", DECIDED, reviewer="bob")]) == 0  # same instant
    assert store.get("e-1") == first

    later = outcome("e-1", "overturned", DECIDED.astimezone(CEST) + timedelta(seconds=1), category="violent")
    assert store.save_many([later]) == 1
    stored = store.get("e-1")
    assert stored == later and stored is not None
    assert (stored.outcome, stored.category, stored.reviewer) == ("overturned", "violent", None)
    assert stored.decided_at.utcoffset() == timedelta(0) and stored.decided_at == DECIDED + timedelta(seconds=1)


def test_save_many_collapses_one_batch_to_its_latest_and_writes_unknown_events(
    migrated: tuple[VerdictStore, OutcomeStore],
) -> None:
    _, store = migrated
    batch = [
        outcome("e-1", "overturned", DECIDED + timedelta(hours=2)),
        outcome("e-1", "confirmed", DECIDED + timedelta(hours=1)),  # older, though later in the batch
        outcome("e-1", "confirmed", DECIDED + timedelta(hours=2), reviewer="tie"),  # a tie: the first stays
        outcome("no-such-verdict", "confirmed"),  # its verdict may land later
    ]
    assert store.save_many(batch) == 2
    assert store.get("e-1") == batch[0]
    assert store.get("no-such-verdict") == batch[3]
    assert store.save_many(batch) == 0
    assert store.save_many([]) == 0
    assert store.get("never-reviewed") is None


def test_save_many_writes_large_batches_in_chunks(migrated: tuple[VerdictStore, OutcomeStore]) -> None:
    _, store = migrated
    many = [outcome(f"e-{i}", "confirmed" if i % 3 else "overturned") for i in range(2_500)]
    assert store.save_many(many) == 2_500
    assert store.get("e-2499") == many[2499] and store.get("e-0") == many[0]
    with store.engine.connect() as conn:
        assert conn.execute(review_outcomes_table.select()).all().__len__() == 2_500


@pytest.fixture
def reviewed(migrated: tuple[VerdictStore, OutcomeStore]) -> OutcomeStore:
    """Hand-built verdicts and decisions; the expected numbers are written out in the tests below."""
    verdicts, store = migrated
    embedding = np.linspace(-1, 1, 8, dtype=np.float32)
    verdicts.save_batch([
        verdict("n1", embedding=(embedding * 1).astype(np.float16)),
        verdict("n2", embedding=(embedding * 2).astype(np.float16)),
        verdict("n3", embedding=(embedding * 3).astype(np.float16)),
        verdict("n4", embedding=(embedding * 4).astype(np.float16)),  # never reviewed
        verdict("n5", uncertain=True, action="review", embedding=(embedding * 5).astype(np.float16)),
        verdict("n6", uncertain=True, action="review"),  # never reviewed
        verdict("v1", "violent", embedding=(embedding * 6).astype(np.float16)),
        verdict("v2", "violent", policy_version="p2"),  # reviewed, but no stored embedding
        verdict("v3", "violent", model_id="other/clip", embedding=(embedding * 7).astype(np.float16)),
        verdict("s1", "safe", flagged=False, action="allow", embedding=(embedding * 8).astype(np.float16)),
    ])
    store.save_many([
        outcome("n1", "confirmed"),
        outcome("n2", "overturned"),
        outcome("n3", "confirmed", category="violent"),
        outcome("n5", "confirmed"),
        outcome("v1", "overturned", category="graphic"),
        outcome("v2", "confirmed"),
        outcome("v3", "overturned"),
        outcome("s1", "confirmed"),  # not a flag: outside the report
        outcome("ghost", "overturned"),  # no verdict: outside the report
    ])
    return store


def test_precision_report_counts_per_category(reviewed: OutcomeStore) -> None:
    report = reviewed.precision_report()
    assert report == [
        CategoryPrecision(
            "nsfw", total=ReviewCounts(flagged=6, reviewed=4, confirmed=3, overturned=1),
            uncertain=ReviewCounts(flagged=2, reviewed=1, confirmed=1, overturned=0), recategorised=1,
        ),
        CategoryPrecision(
            "violent", total=ReviewCounts(flagged=3, reviewed=3, confirmed=1, overturned=2),
            uncertain=ReviewCounts(), recategorised=0,
        ),
    ]
    assert report[0].precision == 0.75 and report[0].uncertain.precision == 1.0
    assert report[1].precision == pytest.approx(1 / 3) and report[1].uncertain.precision is None
    assert report[0].as_dict()["uncertain"] == {
        "flagged": 2, "reviewed": 1, "confirmed": 1, "overturned": 0, "precision": 1.0,
    }


def test_precision_report_filters_by_policy_version_and_time(reviewed: OutcomeStore) -> None:
    assert reviewed.precision_report(policy_version="p2") == [
        CategoryPrecision("violent", ReviewCounts(1, 1, 1, 0), ReviewCounts(), 0),
    ]
    assert reviewed.precision_report(policy_version="no-such-version") == []
    # Age every nsfw verdict but n1 by ten days: a 7-day window keeps n1 and the violent ones.
    with reviewed.engine.begin() as conn:
        conn.execute(
            update(verdicts_table)
            .where(verdicts_table.c.top_category == "nsfw", verdicts_table.c.event_id != "n1")
            .values(created_at=datetime.now(UTC) - timedelta(days=10))
        )
    recent = reviewed.precision_report(since=datetime.now(UTC) - timedelta(days=7))
    assert [(row.category, row.total) for row in recent] == [
        ("nsfw", ReviewCounts(1, 1, 1, 0)),
        ("violent", ReviewCounts(3, 3, 1, 2)),
    ]
    assert recent[0].uncertain == ReviewCounts()


def test_labelled_embeddings_from_reviewed_flags_with_stored_embeddings(reviewed: OutcomeStore) -> None:
    embeddings, labels, content_ids = reviewed.labelled_embeddings(MODEL)
    # n4 and n6 were never reviewed, v2 has no stored embedding, v3 is another model, s1 was not flagged.
    assert content_ids == ["c-n1", "c-n2", "c-n3", "c-n5", "c-v1"]
    assert labels == [
        frozenset({"nsfw"}),  # confirmed: the flagged category
        frozenset(),  # overturned without a category: clean
        frozenset({"violent"}),  # confirmed, but another category applies
        frozenset({"nsfw"}),
        frozenset({"graphic"}),  # overturned: another category applies
    ]
    base = np.linspace(-1, 1, 8, dtype=np.float32)
    expected = np.stack([(base * k).astype(np.float16) for k in (1, 2, 3, 5, 6)])
    assert embeddings.dtype == np.float16 and embeddings.shape == (5, 8)
    np.testing.assert_array_equal(embeddings, expected)

    other, other_labels, other_ids = reviewed.labelled_embeddings("other/clip")
    assert other_ids == ["c-v3"] and other_labels == [frozenset()] and other.shape == (1, 8)
    future = datetime.now(UTC) + timedelta(days=1)
    nothing = reviewed.labelled_embeddings(MODEL, since=future)
    assert nothing[0].shape == (0, 0) and nothing[1:] == ([], [])


def test_the_store_reports_a_missing_schema_as_a_storage_error(sqlite_url: str) -> None:
    from moderation.storage import StorageError

    engine = create_engine_for(sqlite_url)
    try:
        with pytest.raises(StorageError, match="review outcomes"):
            OutcomeStore(engine).save_many([outcome("e-1")])
        with pytest.raises(StorageError, match="precision report"):
            OutcomeStore(engine).precision_report()
    finally:
        engine.dispose()


# --- the consumer, on the real broker --------------------------------------------------------------


@pytest.fixture
def outcome_settings(broker: EmbeddedBroker, tmp_path: Path) -> Callable[[str], Settings]:
    def make(database_url: str) -> Settings:
        tag = secrets.token_hex(4)
        return Settings(
            data_dir=tmp_path,
            kafka={
                "bootstrap_servers": broker.bootstrap_servers,
                "review_outcomes_topic": f"outcomes-{tag}",
                "dead_letter_topic": f"dlq-{tag}",
                "consumer_group": f"group-{tag}",
                "session_timeout_ms": 2000,
            },
            database={"url": database_url},
        )

    return make


def produce(settings: Settings, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings)
    try:
        futures = [producer.send(settings.kafka.review_outcomes_topic, key=k, value=v) for k, v in values]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(timeout=10)


def outcomes_committed(settings: Settings) -> int:
    """`committed_total` for the outcomes consumer's own group and topic."""
    kafka = settings.kafka.model_copy(
        update={"input_topic": settings.kafka.review_outcomes_topic, "consumer_group": group_id(settings)}
    )
    return committed_total(settings.model_copy(update={"kafka": kafka}))


def run_in_thread(target: Callable[[threading.Event], Any]) -> tuple[threading.Thread, threading.Event, list[Any]]:
    stop = threading.Event()
    results: list[Any] = []

    def body() -> None:
        try:
            results.append(target(stop))
        except BaseException as exc:  # surfaced to the test
            results.append(exc)

    thread = threading.Thread(target=body, name="test-outcomes", daemon=True)
    thread.start()
    return thread, stop, results


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.kafka
def test_run_outcomes_stores_decisions_dead_letters_bad_ones_and_commits(
    database_url: str, outcome_settings: Callable[[str], Settings]
) -> None:
    settings = outcome_settings(database_url)
    upgrade(database_url)
    later = outcome("e-1", "overturned", DECIDED + timedelta(hours=1), category="graphic", reviewer="bob")
    messages = [
        (b"e-1", later.to_json()),
        (b"e-1", outcome("e-1", "confirmed", DECIDED, reviewer="alice").to_json()),  # older, arrives after
        (b"e-2", outcome("e-2", "confirmed").to_json()),
        (b"e-3", b"{oops"),
        (b"e-4", json.dumps(outcome_json(event_id="e-4", outcome="maybe")).encode()),
    ]
    produce(settings, messages)

    thread, stop, results = run_in_thread(lambda stop: run_outcomes(settings, stop))
    try:
        assert wait_for(lambda: outcomes_committed(settings) >= len(messages)), "offsets were not committed"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    totals = results[0]
    assert not isinstance(totals, BaseException), totals
    assert (totals.records, totals.dead_lettered, totals.retries) == (5, 2, 0)
    assert outcomes_committed(settings) == len(messages)

    engine = create_engine_for(database_url)
    try:
        store = OutcomeStore(engine)
        assert store.get("e-1") == later
        assert store.get("e-2") == outcome("e-2", "confirmed")
        assert store.get("e-3") is None and store.get("e-4") is None
    finally:
        engine.dispose()

    dead = read_topic(settings, settings.kafka.dead_letter_topic, idle_s=1.0)
    by_key = {record.key: record for record in dead}
    assert sorted(by_key) == [b"e-3", b"e-4"]
    assert header(by_key[b"e-3"].headers, "dlq.reason") == "invalid_json"
    assert by_key[b"e-3"].value == b"{oops"  # forwarded untouched
    assert header(by_key[b"e-4"].headers, "dlq.reason") == "invalid_outcome"
    assert "outcome" in (header(by_key[b"e-4"].headers, "dlq.detail") or "")
    assert header(by_key[b"e-4"].headers, "dlq.source.topic") == settings.kafka.review_outcomes_topic


def outcome_consumer(settings: Settings, url: str) -> tuple[OutcomeConsumer, Callable[[], None]]:
    engine = create_engine_for(url)
    consumer = make_consumer(settings, group_id=group_id(settings))
    producer = make_producer(settings)
    loop = OutcomeConsumer(
        consumer=consumer, producer=producer, store=OutcomeStore(engine), settings=settings,
        backoff_s=0.2, max_backoff_s=0.5,
    )

    def close() -> None:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
        engine.dispose()

    return loop, close


@pytest.mark.kafka
def test_a_database_outage_is_retried_without_committing(
    sqlite_url: str, outcome_settings: Callable[[str], Settings]
) -> None:
    settings = outcome_settings(sqlite_url)
    produce(settings, [(b"e-1", outcome("e-1").to_json())])
    loop, close = outcome_consumer(settings, sqlite_url)  # the schema is not there yet: every save fails
    thread, stop, results = run_in_thread(loop.run)
    try:
        assert wait_for(lambda: loop.totals.retries >= 2), "the failing save was not retried"
        assert outcomes_committed(settings) == 0
        assert loop.polls_while_waiting > 0  # it kept polling (partitions paused) to stay in the group
        upgrade(sqlite_url)  # the database comes back
        assert wait_for(lambda: outcomes_committed(settings) == 1), "not committed after the database came back"
    finally:
        stop.set()
        thread.join(timeout=30)
        close()
    assert not thread.is_alive() and results[0].records == 1 and results[0].stored == 1
    engine = create_engine_for(sqlite_url)
    try:
        assert OutcomeStore(engine).get("e-1") == outcome("e-1")
    finally:
        engine.dispose()


@pytest.mark.kafka
def test_stop_during_an_outage_leaves_the_batch_uncommitted(
    sqlite_url: str, outcome_settings: Callable[[str], Settings]
) -> None:
    settings = outcome_settings(sqlite_url)
    produce(settings, [(b"e-1", outcome("e-1").to_json())])
    loop, close = outcome_consumer(settings, sqlite_url)
    thread, stop, results = run_in_thread(loop.run)
    try:
        assert wait_for(lambda: loop.totals.retries >= 1)
        stop.set()
        thread.join(timeout=10)
    finally:
        stop.set()
        close()
    assert not thread.is_alive(), "stop did not interrupt the retry loop"
    assert results[0].batches == 0 and results[0].records == 0
    assert outcomes_committed(settings) == 0
    engine = create_engine_for(sqlite_url)
    try:
        assert "review_outcomes" not in inspect(engine).get_table_names()  # nothing created on the side
    finally:
        engine.dispose()


# --- the command line, as a process ----------------------------------------------------------------


def moderation(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "MODERATION_DATABASE__URL": database_url},
    )


def test_policy_precision_prints_a_table_and_json(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    engine = create_engine_for(sqlite_url)
    try:
        VerdictStore(engine).save_batch([
            verdict("n1"), verdict("n2"), verdict("n3", uncertain=True), verdict("v1", "violent", policy_version="p2"),
        ])
        OutcomeStore(engine).save_many([outcome("n1"), outcome("n2", "overturned"), outcome("v1")])
    finally:
        engine.dispose()

    table = moderation("policy", "precision", "--since", "7d", database_url=sqlite_url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["category", "flagged", "reviewed", "confirmed", "overturned", "precision"]
    assert lines[1].split() == ["nsfw", "3", "2", "1", "1", "0.500", "0", "1", "0", "-"]
    assert lines[2].split() == ["violent", "1", "1", "1", "0", "1.000", "0", "0", "0", "-"]

    as_json = moderation("policy", "precision", "--policy-version", "p2", "--json", database_url=sqlite_url)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [{
        "category": "violent", "flagged": 1, "reviewed": 1, "confirmed": 1, "overturned": 0, "precision": 1.0,
        "recategorised": 0,
        "uncertain": {"flagged": 0, "reviewed": 0, "confirmed": 0, "overturned": 0, "precision": None},
    }]

    future = moderation("policy", "precision", "--since", "2999-01-01", database_url=sqlite_url)
    assert future.returncode == 0 and future.stdout.strip() == "no flagged verdicts in range"

    bad = moderation("policy", "precision", "--since", "a week", database_url=sqlite_url)
    assert bad.returncode == 2 and "not a span or an ISO 8601" in bad.stderr


def test_outcome_commands_refuse_an_unmigrated_database(sqlite_url: str) -> None:
    for command in (("policy", "precision"), ("outcomes", "run")):
        result = moderation(*command, database_url=sqlite_url)
        assert result.returncode == 1, result.stderr
        assert "run `moderation migrate` first" in result.stderr


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"event_id": ' + b"9" * 5_000 + b"}"])
def test_json_that_would_crash_the_decoder_is_invalid_json(raw: bytes) -> None:
    """Deep nesting raises RecursionError and a 5,000-digit integer ValueError inside json.loads: both are
    the message's fault, so they must be a dead letter, never a crash of the outcomes consumer."""
    assert refused(raw, max_bytes=1_000_000).reason == REASON_INVALID_JSON
