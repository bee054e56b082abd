"""End to end on the real embedded broker and real SQLite / PostgreSQL: events in, verdicts, review, DLQ."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumers.delivery import STEP_FLUSHED, BatchResult
from consumers.messages import header
from consumers.pipeline import WorkerCrashed
from consumers.producer import file_event
from moderation.moderator import Moderator
from moderation.policy import load_policy
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.testmodel import make_colour_image
from moderation.verdict import VerdictStatus
from tests.support.events import corpus
from tests.support.kafka import PipelineEnv, all_committed, committed_total, drain, new_worker, run_worker_until
from tests.support.paths import POLICY

pytestmark = pytest.mark.kafka

@pytest.mark.parametrize("batch_size", [4])
def test_events_become_verdicts_review_messages_and_dead_letters(
    pipeline_env: Any, database_url: str, scorer: Any, tmp_path: Path, batch_size: int
) -> None:
    env: PipelineEnv = pipeline_env(database_url, max_size=batch_size)
    events, expected = corpus(tmp_path / "images")
    produced = env.produce(events)
    store = drain(env, database_url, scorer, produced)

    verdicts = {v.content_id: v for v in store.recent(limit=1000)}
    assert store.count() == len(expected) == len(verdicts)  # exactly one row per valid event
    for content_id, outcome in expected.items():
        verdict = verdicts[content_id]
        if outcome.startswith("error:"):
            assert verdict.status is VerdictStatus.ERROR
            assert verdict.error_reason == outcome.removeprefix("error:")
            assert not verdict.flagged
        else:
            assert verdict.status is VerdictStatus.OK
            assert verdict.action == outcome, (content_id, verdict.scores)
            assert verdict.flagged == (outcome != "allow")
            assert verdict.policy_version == "test-model-1"
            assert len(verdict.policy_hash) == 64
            assert abs(sum(verdict.scores.values()) - 1.0) < 1e-3

    kafka = env.settings.kafka
    review = env.read(kafka.review_topic)
    flagged = {v.event_id: v for v in verdicts.values() if v.flagged}
    assert len(flagged) == 6  # three red, three yellow
    review_ids = [json.loads(r.value)["event_id"] for r in review]
    assert sorted(review_ids) == sorted(flagged)  # each flagged verdict exactly once
    for record in review:
        body = json.loads(record.value)
        verdict = flagged[body["event_id"]]
        assert record.key.decode() == verdict.content_id
        assert header(record.headers, "event_id") == verdict.event_id
        assert body["top_category"] == verdict.top_category
        assert body["action"] == verdict.action
        assert body["scores"] == verdict.scores
        assert body["policy_version"] == verdict.policy_version

    dead = env.read(kafka.dead_letter_topic)
    reasons = Counter(header(r.headers, "dlq.reason") for r in dead)
    assert reasons == {"invalid_json": 1, "invalid_event": 1, "unsupported_schema_version": 1}
    assert b"{not json" in [r.value for r in dead]  # the original bytes travel unchanged
    for record in dead:
        assert header(record.headers, "dlq.source.topic") == kafka.input_topic
        assert header(record.headers, "dlq.source.offset") is not None

    assert committed_total(env.settings) == produced  # every record, dead-lettered ones too


def test_crash_before_offset_commit_redelivers_without_duplicate_rows(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=64, max_wait_ms=1500)
    events, expected = corpus(tmp_path / "images", per_colour=2)
    produced = env.produce(events)
    upgrade(sqlite_url)
    store = VerdictStore(create_engine_for(sqlite_url))
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)

    class Crash(Exception):
        pass

    def crash_after_flush(step: str, result: BatchResult) -> None:
        if step == STEP_FLUSHED:  # verdicts committed, review messages acknowledged, offsets NOT committed
            raise Crash

    first = new_worker(env, moderator, store, on_step=crash_after_flush)
    with pytest.raises(WorkerCrashed):
        run_worker_until(first, lambda: False, timeout_s=60)  # returns when the crash stops the worker
    first_attempt = {v.event_id for v in store.flagged(limit=1000)}  # published before the crash
    assert store.count() > 0
    assert committed_total(env.settings) == 0
    first.consumer.close(autocommit=False)
    first.close()

    second = new_worker(env, moderator, store)
    try:
        run_worker_until(second, all_committed(env.settings, produced))
    finally:
        second.consumer.close(autocommit=False)
        second.close()
        moderator.close()

    assert store.count() == len(expected)  # the redelivered batch added no second row
    review = env.read(env.settings.kafka.review_topic)
    ids = Counter(header(r.headers, "event_id") for r in review)
    flagged = {v.event_id for v in store.flagged(limit=1000)}
    assert set(ids) == flagged  # every flagged event reached the review topic
    # Repeats are exactly those the crashed attempt had already published; each carries its event id.
    for event_id, count in ids.items():
        assert count == (2 if event_id in first_attempt else 1), event_id
    assert committed_total(env.settings) == produced


def test_a_repeated_event_gets_one_row_and_one_review_message(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    # An upload service that retries its send produces the same event twice; same key, same partition.
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=16, max_wait_ms=1000)
    path = tmp_path / "red.png"
    make_colour_image("red", (120, 90), seed=3).save(path, "PNG")
    event = file_event(path, source="retrying-uploader", content_id="red-once")
    blue = tmp_path / "blue.png"
    make_colour_image("blue", (120, 90), seed=4).save(blue, "PNG")
    produced = env.produce([event, event, file_event(blue, source="t", content_id="blue-once")])
    store = drain(env, sqlite_url, scorer, produced)
    assert store.count() == 2
    review = env.read(env.settings.kafka.review_topic)
    assert [header(r.headers, "event_id") for r in review] == [event["event_id"]]


def test_an_event_id_reused_for_other_content_is_dead_lettered(
    pipeline_env: Any, database_url: str, scorer: Any, tmp_path: Path
) -> None:
    """Its image was never checked, and the stored verdict is about another image: never silently dropped."""
    env: PipelineEnv = pipeline_env(database_url, max_size=4, max_wait_ms=200)
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    make_colour_image("red", (120, 90), seed=8).save(red, "PNG")
    make_colour_image("blue", (120, 90), seed=9).save(blue, "PNG")
    first = file_event(red, source="buggy-uploader", content_id="photo-1")
    same_id_other_image = file_event(blue, source="buggy-uploader", content_id="photo-2")
    same_id_other_image["event_id"] = first["event_id"]
    retried = dict(first)  # a plain retry of the first: not a conflict
    produced = env.produce([first, retried, same_id_other_image])
    store = drain(env, database_url, scorer, produced)
    assert store.count() == 1
    kept = store.get(first["event_id"])
    assert kept is not None and kept.content_id == "photo-1" and kept.top_category == "red"
    dead = env.read(env.settings.kafka.dead_letter_topic)
    assert len(dead) == 1
    assert header(dead[0].headers, "dlq.reason") == "event_id_conflict"
    assert "photo-2" in (header(dead[0].headers, "dlq.detail") or "")
    assert json.loads(dead[0].value) == same_id_other_image  # the original bytes, untouched
    review = env.read(env.settings.kafka.review_topic)
    assert [json.loads(r.value)["content_id"] for r in review] == ["photo-1"]


def test_a_verdict_the_database_rejects_is_dead_lettered_not_retried_for_ever(
    pipeline_env: Any, postgres_url: str, scorer: Any, tmp_path: Path
) -> None:
    """A data error is permanent: the batch is saved row by row and the rejected event dead-lettered."""
    from sqlalchemy import text

    env: PipelineEnv = pipeline_env(postgres_url, max_size=8, max_wait_ms=300)
    upgrade(postgres_url)
    engine = create_engine_for(postgres_url)
    with engine.begin() as conn:  # a rule this database enforces and the pipeline knows nothing of
        conn.execute(text("ALTER TABLE verdicts ADD CONSTRAINT no_poison CHECK (content_id <> 'poison')"))
    engine.dispose()
    events = []
    for i, colour in enumerate(["red", "blue", "yellow", "green", "red"]):
        path = tmp_path / f"{i}-{colour}.png"
        make_colour_image(colour, (96, 72), seed=i).save(path, "PNG")
        events.append(file_event(path, source="t", content_id="poison" if i == 2 else path.stem))
    produced = env.produce(events)
    store = drain(env, postgres_url, scorer, produced)
    assert store.count() == 4
    assert store.get(events[2]["event_id"]) is None
    dead = env.read(env.settings.kafka.dead_letter_topic)
    assert [header(d.headers, "dlq.reason") for d in dead] == ["unstorable"]
    assert "no_poison" in (header(dead[0].headers, "dlq.detail") or "")
    assert json.loads(dead[0].value)["content_id"] == "poison"
    review = {header(r.headers, "event_id") for r in env.read(env.settings.kafka.review_topic)}
    assert review == {events[0]["event_id"], events[4]["event_id"]}  # the rest of the batch went on
    assert committed_total(env.settings) == produced
