"""The whole review flow, end to end on the real broker and both databases: events in, the worker's flagged
items in the queue with their images, reviewers deciding them in the console, the decisions out on the
decisions topic, and `moderation policy precision` reflecting them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumers.clients import make_producer, read_topic
from consumers.console.publisher import DecisionPublisher
from consumers.producer import file_event
from moderation.media import DirectoryMediaStore
from moderation.moderator import Moderator
from moderation.policy import load_policy
from moderation.review.values import Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.policies import PolicyStore
from tests.support.cli import moderation
from tests.support.console import console_context, csrf_of, logged_in
from tests.support.images import colour_files
from tests.support.kafka import PipelineEnv, all_committed, new_worker, run_worker_until
from tests.support.paths import POLICY

pytestmark = pytest.mark.kafka
COLOURS = ["red", "blue", "yellow", "green", "red", "yellow", "blue", "red"]  # 5 flagged: 3 red, 2 yellow


def test_events_to_queue_to_decisions_to_precision(
    pipeline_env: Any, database_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(database_url, max_size=4, max_wait_ms=50)
    decisions_topic = f"{env.settings.kafka.input_topic}-decisions"
    settings = env.settings.model_copy(
        update={"kafka": env.settings.kafka.model_copy(update={"decisions_topic": decisions_topic})}
    )
    images = colour_files(tmp_path, COLOURS)
    produced = env.produce([file_event(path, content_id=path.stem, source="uploads") for path in images])
    upgrade(database_url)
    engine = create_engine_for(database_url)
    store = VerdictStore(engine)
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)
    worker = new_worker(env, moderator, store)
    try:
        run_worker_until(worker, all_committed(env.settings, produced))
    finally:
        worker.consumer.close(autocommit=False)
        worker.close()
        moderator.close()

    # The worker stored the policy it decided under, by hash, with the first verdicts.
    stored = PolicyStore(engine).get(load_policy(POLICY).sha256)
    assert stored is not None and stored.version == "test-model-1"
    media = DirectoryMediaStore(env.settings.media_directory)
    context = console_context(engine, media=media, policies={p.sha256: p for p in [load_policy(POLICY)]})
    decided: dict[str, bool] = {}
    reds = {path.stem for path, colour in zip(images, COLOURS, strict=True) if colour == "red"}
    with logged_in(context, "alice", Role.REVIEWER) as browser:
        while (answer := browser.get("/queue")).status_code == 303:
            item_path = answer.headers["location"].split("?")[0]
            page = browser.get(item_path).text
            item = context.queue.item(int(item_path.rsplit("/", 1)[1]))
            assert item is not None and item.media_status == "stored"
            image = browser.get(f"/media/{item.id}")
            assert image.status_code == 200 and image.content == media.get(item.media_key)
            assert "≥ 0.5 → " in page  # the category's threshold from the policy file
            # The reviewer agrees with every yellow flag and with the first red one only.
            first_red = item.category == "red" and not any(decided.get(c) for c in reds)
            violating = item.category == "yellow" or first_red
            decided[item.content_id] = violating
            answer = browser.post(f"{item_path}/decide", data={
                "csrf": csrf_of(browser), "category": ["red", "yellow"],
                "violating": [item.category] if violating else [], "reason": "looked", "then": "next",
            })
            assert answer.status_code == 303
    flagged = {path.stem for path, colour in zip(images, COLOURS, strict=True) if colour in ("red", "yellow")}
    assert set(decided) == flagged

    publisher = DecisionPublisher(context.queue, lambda: make_producer(settings), decisions_topic)
    try:
        assert publisher.publish_pending() == len(flagged)
    finally:
        publisher.stop()
    messages = {m["content_id"]: m for m in (json.loads(r.value) for r in read_topic(settings, decisions_topic,
                                                                                     idle_s=1.0))}
    assert {c: m["action"] == "remove" for c, m in messages.items()} == decided

    report = moderation("policy", "precision", "--json", env={"MODERATION_DATABASE__URL": database_url})
    assert report.returncode == 0, report.stderr
    rows = {row["category"]: row for row in json.loads(report.stdout)}
    assert (rows["yellow"]["reviewed"], rows["yellow"]["confirmed"]) == (2, 2)
    assert (rows["red"]["reviewed"], rows["red"]["confirmed"], rows["red"]["overturned"]) == (3, 1, 2)
    engine.dispose()
