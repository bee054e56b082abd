"""Trained heads after training, on SQLite and PostgreSQL: the heads a policy pins are stored with it (file,
model, report) and read back whole, the console's policy page and the API show each head's report,
and the queue serves uncertain items of the categories being trained first."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from moderation.heads import train_head
from moderation.policy import load_policy
from moderation.review.values import Actor, Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import policy_heads_table
from moderation.storage.policies import PolicyStore
from moderation.storage.review_queue import ReviewQueue
from tests.integration.test_storage import make_verdict
from tests.support.console import client, console_context, logged_in
from tests.support.heads import warm_policy


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


REPORT = {"positives": 40, "negatives": 60, "folds": 5, "pull": 0.25, "threshold": 0.5,
          "zero_shot_threshold": 0.5, "head": {"precision": 0.97, "recall": 0.95, "f1": 0.96, "roc_auc": 0.99},
          "zero_shot": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "roc_auc": 0.77},
          "curve": [{"labels": 25, "head": {"f1": 0.9}, "zero_shot": {"f1": 0.667}}],
          "thresholds": [{"target": "precision >= 0.9", "threshold": 0.31}],
          "expected_calibration_error": 0.04, "note": "<script>alert(1)</script>"}


def _headed_policy(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = train_head(x, x[:, 0] > 0, np.eye(16, dtype=np.float32)[0], category="warm", model_id="sha256:m")
    digest = head.save(directory / "heads" / "warm-1.safetensors", report=REPORT)
    (directory / "warm.yaml").write_text(warm_policy("warm-2", "heads/warm-1.safetensors", digest))
    return directory / "warm.yaml"


def test_a_policys_heads_are_stored_with_it_and_read_back_whole(engine: Engine, tmp_path: Path) -> None:
    policy = load_policy(_headed_policy(tmp_path))
    store = VerdictStore(engine)
    verdict = make_verdict("e1", policy_hash=policy.sha256, policy_version=policy.version, top_category="warm")
    store.save_batch([verdict], policies=[policy])
    store.save_batch([make_verdict("e2", policy_hash=policy.sha256)], policies=[policy])  # once only
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(policy_heads_table)).scalar() == 1
    stored = PolicyStore(engine).get(policy.sha256)
    assert stored is not None
    (head,) = stored.heads
    assert (head.category, head.model_id, head.head_sha256) == ("warm", "sha256:m", policy.heads["warm"].sha256)
    assert head.report is not None and head.report["head"]["f1"] == 0.96
    again = stored.loaded()  # from the database alone: the files are not needed to score it again
    assert again is not None and again.heads_loaded and again.sha256 == policy.sha256
    np.testing.assert_array_equal(again.heads["warm"].weight, policy.heads["warm"].weight)


def test_the_policy_page_and_the_api_show_each_heads_report_escaped(engine: Engine, tmp_path: Path) -> None:
    policy = load_policy(_headed_policy(tmp_path))
    VerdictStore(engine).save_batch([make_verdict("e1", policy_hash=policy.sha256)], policies=[policy])
    context = console_context(engine)
    with client(context) as anonymous:  # neither the page nor the API answers without a login
        refused = anonymous.get(f"/policies/{policy.sha256}", follow_redirects=False)
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
        assert anonymous.get(f"/api/v1/policies/{policy.sha256}").status_code == 401
    with logged_in(context, "rita") as browser:
        page = browser.get(f"/policies/{policy.sha256}")
        assert page.status_code == 200
        html = page.text
        assert 'id="head-warm"' in html and "Trained heads" in html
        assert "<td>0.96</td>" in html and "<td>0.667</td>" in html  # head F1 beside the zero-shot F1
        assert "25 labels: 0.9 vs 0.667" in html and "precision &gt;= 0.9: 0.31" in html
        assert "<script>alert(1)</script>" not in html
        api = browser.get(f"/api/v1/policies/{policy.sha256}").json()
        (head,) = api["heads"]
        assert head["category"] == "warm" and head["report"]["zero_shot"]["f1"] == 0.667
    (tmp_path / "plain.yaml").write_text(warm_policy("warm-1"))
    plain = load_policy(tmp_path / "plain.yaml")
    VerdictStore(engine).save_batch([make_verdict("e2", policy_hash=plain.sha256)], policies=[plain])
    with logged_in(context, "rita") as browser:  # a policy without heads has no such section
        page = browser.get(f"/policies/{plain.sha256}")
        assert page.status_code == 200 and "Trained heads" not in page.text
        assert browser.get(f"/api/v1/policies/{plain.sha256}").json()["heads"] == []


def test_uncertain_items_of_categories_being_trained_come_first(engine: Engine) -> None:
    t0 = datetime(2026, 12, 8, 9, 0, tzinfo=timezone.utc)
    store = VerdictStore(engine)
    store.save_batch([make_verdict("blocked", top_category="violence", action="block")])
    store.save_batch([make_verdict("unsure-other", top_category="nsfw", action="review", uncertain=True)])
    store.save_batch([make_verdict("unsure-warm", top_category="warm", action="review", uncertain=True)])
    reviewer = Actor("rita", Role.REVIEWER)
    usual = ReviewQueue(engine, clock=lambda: t0)
    assert usual.next_item(reviewer).event_id == "blocked"  # block before review before uncertain
    usual.release(usual.next_item(reviewer).id, reviewer)
    labelling = ReviewQueue(engine, clock=lambda: t0 + timedelta(seconds=1), label_first=["warm"])
    first = labelling.next_item(reviewer)
    assert first.event_id == "unsure-warm"
    labelling.release(first.id, reviewer)
    # Only uncertain items of those categories jump the queue, and only in the queues asked for.
    assert labelling.next_item(reviewer, queues=["violence"]).event_id == "blocked"


def test_console_decisions_label_flagged_uncertain_and_audited_items_per_category(engine: Engine) -> None:
    from moderation.review_outcome import ReviewOutcome
    from moderation.storage.review_decisions import OutcomeStore

    def vector(i: int) -> np.ndarray:
        return np.eye(8, dtype=np.float16)[i]

    cases = {  # event -> (verdict changes, the console's decision or None)
        "flag": ({"top_category": "warm", "action": "review"}, {"warm": True}),
        "unsure": ({"top_category": "warm", "action": "review", "uncertain": True}, {"warm": False}),
        "audit": ({"flagged": False, "action": "allow", "top_category": "safe", "audited": True}, {"warm": True}),
        "tool-only": ({"top_category": "warm", "action": "review"}, None),
    }
    verdicts = [make_verdict(name, model_id="sha256:m", image_sha256=f"{i:064x}", embedding=vector(i),
                             scores={"warm": 0.6, "safe": 0.4}, **changes)
                for i, (name, (changes, _)) in enumerate(cases.items())]
    VerdictStore(engine).save_batch(verdicts)
    queue = ReviewQueue(engine)
    reviewer = Actor("rita", Role.REVIEWER)
    for name, (_, decision) in cases.items():
        if decision is not None:
            item = queue.item_for_event(name)
            assert item is not None
            queue.claim(item.id, reviewer)
            queue.decide(item.id, reviewer, decision, "checked")
    decided = datetime.now(timezone.utc).isoformat()
    store = OutcomeStore(engine)
    store.save_many([ReviewOutcome(schema_version=1, event_id=e, outcome="confirmed", decided_at=decided)
                     for e in ("flag", "tool-only")])
    embeddings, labels, content_ids = store.console_labelled_embeddings("sha256:m")
    assert dict(zip(content_ids, labels, strict=True)) == {
        "content-flag": frozenset({"warm"}), "content-unsure": frozenset(), "content-audit": frozenset({"warm"}),
    }
    np.testing.assert_array_equal(embeddings[0], vector(0))
    _, tool_labels, tool_ids = store.labelled_embeddings("sha256:m", skip_console_decided=True)
    assert dict(zip(tool_ids, tool_labels, strict=True)) == {"content-tool-only": frozenset({"warm"})}
    # Without skipping, the console's decisions on flagged items are there too (they reach review_outcomes).
    assert sorted(store.labelled_embeddings("sha256:m")[2]) == ["content-flag", "content-tool-only", "content-unsure"]
