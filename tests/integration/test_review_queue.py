"""The review queue in the database (moderation/review/), on SQLite and PostgreSQL: items written with
their verdicts, claims with leases, decisions, overrides, appeals and the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine, select

from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import review_items_table
from moderation.verdict import MediaStatus, ReviewMedia
from tests.integration.test_storage import make_error_verdict, make_verdict


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def items(engine: Engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {row["event_id"]: dict(row) for row in conn.execute(select(review_items_table)).mappings()}


def test_items_are_written_with_their_verdicts_and_only_for_review(engine: Engine) -> None:
    store = VerdictStore(engine)
    stored_copy = ReviewMedia(MediaStatus.STORED, key="ab/cd/x.jpg", width=512, height=384)
    store.save_batch([
        make_verdict("blocked", media=stored_copy),
        make_verdict("held", action="review", top_category="violence"),
        make_verdict("unsure", action="review", uncertain=True),
        make_verdict("audited", flagged=False, action="allow", top_category="safe", audited=True),
        make_verdict("allowed", flagged=False, action="allow", top_category="safe"),
        make_error_verdict("broken"),
    ])
    queued = items(engine)
    assert set(queued) == {"blocked", "held", "unsure", "audited"}
    assert {e: (r["reason"], r["priority"], r["queue"]) for e, r in queued.items()} == {
        "blocked": ("block", 1, "violence"),
        "held": ("review", 2, "violence"),
        "unsure": ("uncertain", 3, "violence"),
        "audited": ("audit", 4, "audit"),
    }
    blocked = queued["blocked"]
    assert (blocked["media_status"], blocked["media_key"], blocked["media_width"]) == ("stored", "ab/cd/x.jpg", 512)
    assert queued["held"]["media_status"] == "off" and queued["held"]["status"] == "pending"
    assert store.get("audited").audited and not store.get("allowed").audited


def test_a_redelivered_verdict_keeps_its_first_item(engine: Engine) -> None:
    store = VerdictStore(engine)
    first = make_verdict("again", media=ReviewMedia(MediaStatus.STORED, key="k1", width=10, height=10))
    store.save_batch([first])
    store.save_batch([replace(first, media=ReviewMedia(MediaStatus.FAILED, detail="gone"))])
    assert [(r["media_status"], r["media_key"]) for r in items(engine).values()] == [("stored", "k1")]
