"""Reviewer copies in delivery: stored before the verdict commits, withheld, off, retried when the store fails,
made by the real worker, and pruned by `moderation media prune` on both databases."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update

from consumers.clients import ensure_topics, make_producer
from consumers.delivery import STEP_PERSISTED, BatchResult, Delivery, ScoredBatch
from consumers.messages import header
from consumers.reviewer_copies import ReviewerCopies
from moderation.media import DirectoryMediaStore, MediaError, MediaStore, media_key
from moderation.moderator import Moderator
from moderation.policy import load_policy
from moderation.settings import MediaSettings
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import review_items_table
from moderation.testmodel import make_colour_image
from moderation.verdict import Verdict, VerdictStatus
from tests.integration.test_delivery import record
from tests.support.cli import moderation
from tests.support.events import colour_events
from tests.support.kafka import PipelineEnv, all_committed, new_worker, run_worker_until
from tests.support.paths import POLICY


def jpeg(colour: str, size: tuple[int, int] = (900, 600), seed: int = 0) -> bytes:
    out = io.BytesIO()
    make_colour_image(colour, size, seed=seed).save(out, "JPEG")
    return out.getvalue()


def verdict(event_id: str, data: bytes, *, flagged: bool = True, audited: bool = False, **fields: Any) -> Verdict:
    return Verdict(
        event_id=event_id, content_id=f"c-{event_id}", source="s", status=VerdictStatus.OK, flagged=flagged,
        top_category="red" if flagged else "safe", action="review" if flagged else "allow", scores={"red": 0.9},
        best_prompt="a red picture", policy_version="v1", policy_hash="0" * 64, model_id="sha256:m",
        image_ref=f"https://x/{event_id}.jpg", image_sha256=hashlib.sha256(data).hexdigest(),
        uploaded_at=datetime.now(timezone.utc), audited=audited, **fields,
    )


def batch_of(verdicts: list[Verdict], originals: list[bytes | None]) -> ScoredBatch:
    records = tuple(record(json.dumps({"event_id": v.event_id}).encode(), offset=i) for i, v in enumerate(verdicts))
    return ScoredBatch(
        number=1, size=len(verdicts), verdicts=tuple(verdicts), records=records, originals=tuple(originals)
    )


def items(store: VerdictStore) -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        return {row["event_id"]: dict(row) for row in conn.execute(select(review_items_table)).mappings()}


@pytest.fixture
def delivery_env(pipeline_env: Any, database_url: str, tmp_path: Path) -> Any:
    env: PipelineEnv = pipeline_env(database_url)
    ensure_topics(env.settings, [env.settings.kafka.review_topic, env.settings.kafka.dead_letter_topic])
    upgrade(database_url)
    store = VerdictStore(create_engine_for(database_url))
    made: list[Delivery] = []

    def make(media: MediaStore | None, enabled: bool = True, on_step: Any = None) -> Delivery:
        delivery = Delivery(
            store=store, producer=make_producer(env.settings), kafka=env.settings.kafka,
            on_step=on_step or (lambda *_: None), copies=ReviewerCopies(media, MediaSettings(enabled=enabled)),
        )
        made.append(delivery)
        return delivery

    yield env, store, make
    for delivery in made:
        delivery.close()
    store.engine.dispose()


@pytest.mark.kafka
def test_the_copy_is_in_the_store_before_the_verdict_is_persisted(delivery_env: Any, tmp_path: Path) -> None:
    env, store, make = delivery_env
    media = DirectoryMediaStore(tmp_path / "media")
    flagged, audited, allowed = jpeg("red", seed=1), jpeg("blue", seed=2), jpeg("green", seed=3)
    verdicts = [
        verdict("e-flagged", flagged), verdict("e-audited", audited, flagged=False, audited=True),
        verdict("e-allowed", allowed, flagged=False),
    ]
    seen: dict[str, bool] = {}

    def on_step(step: str, result: BatchResult) -> None:
        if step == STEP_PERSISTED:
            seen.update({v.event_id: media.exists(media_key(v.image_sha256)) for v in verdicts})  # type: ignore[arg-type]

    result = make(media, on_step=on_step).deliver(batch_of(verdicts, [flagged, audited, allowed]))
    assert seen == {"e-flagged": True, "e-audited": True, "e-allowed": False}  # allowed, not audited: no copy
    assert dict(result.media) == {"stored": 2}
    rows = items(store)
    assert set(rows) == {"e-flagged", "e-audited"}
    for event_id, data in (("e-flagged", flagged), ("e-audited", audited)):
        row = rows[event_id]
        assert row["media_status"] == "stored" and row["media_key"] == media_key(hashlib.sha256(data).hexdigest())
        copy = Image.open(io.BytesIO(media.get(row["media_key"]) or b""))
        assert copy.size == (row["media_width"], row["media_height"]) == (512, 341)
    bodies = [json.loads(m.value) for m in env.read(env.settings.kafka.review_topic)]
    media_status = sorted((b["event_id"], b["media_status"]) for b in bodies)
    assert media_status == [("e-audited", "stored"), ("e-flagged", "stored")]


@pytest.mark.kafka
def test_keep_media_false_is_withheld_and_media_off_is_off(delivery_env: Any, tmp_path: Path) -> None:
    env, store, make = delivery_env
    media_root = tmp_path / "media"
    withheld = jpeg("red", seed=4)
    make(DirectoryMediaStore(media_root)).deliver(batch_of([verdict("e-1", withheld, keep_media=False)], [withheld]))
    off = jpeg("red", seed=5)
    result = make(DirectoryMediaStore(media_root), enabled=False).deliver(batch_of([verdict("e-2", off)], [off]))
    assert dict(result.media) == {"off": 1}
    broken = b"\xff\xd8 not really a jpeg"
    both = batch_of([verdict("e-3", broken), verdict("e-4", off)], [broken, None])
    failed = make(DirectoryMediaStore(media_root)).deliver(both)
    assert dict(failed.media) == {"failed": 2}
    rows = items(store)
    statuses = {e: r["media_status"] for e, r in rows.items()}
    assert statuses == {"e-1": "withheld", "e-2": "off", "e-3": "failed", "e-4": "failed"}
    assert all(r["media_key"] is None for r in rows.values())
    assert not media_root.exists() or not any(p.is_file() for p in media_root.rglob("*"))


@pytest.mark.kafka
def test_an_unwritable_media_store_fails_the_attempt_and_nothing_is_persisted(
    delivery_env: Any, tmp_path: Path
) -> None:
    env, store, make = delivery_env
    root = tmp_path / "media"
    root.write_bytes(b"")  # a file where the directory should be: every write fails (even as root)
    media = CountingStore(root)
    delivery = make(media)
    data = jpeg("red", seed=6)
    batch = batch_of([verdict("e-1", data)], [data])
    with pytest.raises(MediaError, match="could not write media"):
        delivery.deliver(batch)
    assert store.count() == 0 and items(store) == {}
    assert env.read(env.settings.kafka.review_topic) == []
    root.unlink()  # the volume is writable again: the retry goes through
    result = delivery.deliver(batch)
    assert result.verdicts == 1 and dict(result.media) == {"stored": 1}
    assert items(store)["e-1"]["media_status"] == "stored"
    assert media.puts == 2  # the failed write and the one that went through
    # Redelivered: the copy is found, not re-encoded nor written again, and the stored row is kept.
    again = delivery.deliver(batch)
    assert dict(again.media) == {"stored": 1} and store.count() == 1 and media.puts == 2
    assert [header(m.headers, "event_id") for m in env.read(env.settings.kafka.review_topic)] == ["e-1"]


class CountingStore(DirectoryMediaStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0

    def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        super().put(key, data)


@pytest.mark.kafka
def test_the_worker_stores_copies_of_flagged_items(
    pipeline_env: Any, sqlite_url: str, scorer: Any, tmp_path: Path
) -> None:
    env: PipelineEnv = pipeline_env(sqlite_url, max_size=4, max_wait_ms=50)
    produced = env.produce(colour_events(tmp_path / "images", 8))
    upgrade(sqlite_url)
    store = VerdictStore(create_engine_for(sqlite_url))
    moderator = Moderator(scorer, load_policy(POLICY), env.settings.images)
    worker = new_worker(env, moderator, store)
    try:
        run_worker_until(worker, all_committed(env.settings, produced))
    finally:
        worker.consumer.close(autocommit=False)
        worker.close()
        moderator.close()
    rows = items(store)
    assert len(rows) == 4  # red and yellow, twice each
    media = DirectoryMediaStore(env.settings.media_directory)
    assert env.settings.media_directory == tmp_path / "media"
    for row in rows.values():
        assert row["media_status"] == "stored"
        stored = media.get(row["media_key"])
        assert stored is not None and Image.open(io.BytesIO(stored)).size == (row["media_width"], row["media_height"])
    assert len(list((tmp_path / "media").rglob("*.jpg"))) == 4
    assert worker.metrics.registry.get_sample_value("moderation_reviewer_copies_total", {"result": "stored"}) == 4


def test_prune_deletes_decided_copies_keeps_pending_and_shared_ones_and_removes_orphans(
    database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    store = VerdictStore(create_engine_for(database_url))
    root = tmp_path / "media"
    media = DirectoryMediaStore(root)
    copies = ReviewerCopies(media, MediaSettings())
    old, shared, pending, fresh = (jpeg(c, (200, 100), seed=i) for i, c in enumerate(["red", "blue", "green", "white"]))
    verdicts = [
        verdict("decided-old", old), verdict("decided-shared", shared), verdict("newer-shared", shared),
        verdict("pending-old", pending), verdict("decided-new", fresh),
    ]
    with_media, _ = copies.attach(verdicts, [old, shared, shared, pending, fresh])
    store.save_batch(with_media)
    copies.close()
    orphan = media_key("f" * 64)
    media.put(orphan, b"left by a crashed batch")
    recent_orphan = media_key("e" * 64)
    media.put(recent_orphan, b"written a moment ago by a batch not yet committed")
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    decided = {"decided-old", "decided-shared", "decided-new"}
    table = review_items_table
    with store.engine.begin() as conn:
        conn.execute(update(table).where(table.c.event_id.in_(decided)).values(status="decided"))
        aged = {"decided-old", "decided-shared", "pending-old"}
        conn.execute(update(table).where(table.c.event_id.in_(aged)).values(created_at=long_ago))
    stamp = long_ago.timestamp()
    for v in (verdicts[0], verdicts[1], verdicts[3]):
        os.utime(media.path(media_key(v.image_sha256 or "")), (stamp, stamp))
    os.utime(media.path(orphan), (stamp, stamp))

    env = {"MODERATION_DATABASE__URL": database_url, "MODERATION_MEDIA__DIRECTORY": str(root)}
    result = moderation("media", "prune", env=env)
    assert result.returncode == 0, result.stderr
    assert "pruned the reviewer copies of 2 decided review items" in result.stdout
    assert "1 files deleted, 1 kept" in result.stdout and "1 orphan files removed" in result.stdout
    status = {e: r["media_status"] for e, r in items(store).items()}
    assert status == {
        "decided-old": "pruned", "decided-shared": "pruned", "newer-shared": "stored",
        "pending-old": "stored", "decided-new": "stored",
    }

    def present(data: bytes) -> bool:
        return media.exists(media_key(hashlib.sha256(data).hexdigest()))

    assert not present(old) and present(shared) and present(pending) and present(fresh)
    assert not media.exists(orphan) and media.exists(recent_orphan)

    everything = moderation("media", "prune", "--include-pending", env=env)
    assert everything.returncode == 0, everything.stderr
    assert items(store)["pending-old"]["media_status"] == "pruned" and not present(pending)
    assert present(shared)  # still held by newer-shared
    store.engine.dispose()


def test_prune_with_retention_zero_prunes_nothing(tmp_path: Path) -> None:
    result = moderation("media", "prune", env={"MODERATION_MEDIA__RETENTION_DAYS": "0"})
    assert result.returncode == 0 and "nothing to prune" in result.stdout


def test_media_prune_refuses_a_non_positive_override(tmp_path: Path) -> None:
    result = moderation("media", "prune", "--older-than-days", "0")
    assert result.returncode == 2 and "positive number of days" in result.stderr

