"""The stable read side in the database, on SQLite and PostgreSQL: policies stored by hash with the verdicts
decided under them, and the moderation_v1_* views (columns as the README documents them)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, text, update

from moderation.policy import load_policy, parse_policy
from moderation.review.values import Actor, Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import policies_table
from moderation.storage.policies import PolicyStore
from moderation.storage.review_queue import ReviewQueue
from tests.integration.test_storage import make_error_verdict, make_verdict
from tests.support.console import console_context, logged_in
from tests.support.paths import POLICY, REPO

README = (REPO / "README.md").read_text()
VIEWS = ["moderation_v1_content_state", "moderation_v1_review_queue", "moderation_v1_decisions",
         "moderation_v1_counts_hourly"]
ALICE = Actor("alice", Role.REVIEWER)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def rows(engine: Engine, sql: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql)).mappings()]


def test_policies_are_stored_by_hash_with_their_first_verdicts(engine: Engine) -> None:
    policy = load_policy(POLICY)
    shadow = parse_policy(policy.text.replace('version: "test-model-1"', 'version: "test-model-2"')
                          .replace("threshold: 0.5\n    action: review", "threshold: 0.6\n    action: review"))
    store = VerdictStore(engine)
    store.save_batch([make_verdict("e1", policy_hash=policy.sha256, policy_version=policy.version)],
                     [policy, shadow])
    stored = PolicyStore(engine).get(policy.sha256)
    assert stored is not None and stored.version == "test-model-1" and stored.text == policy.text
    assert stored.loaded().sha256 == policy.sha256  # the stored text means exactly what the hash says
    assert stored.meaning["categories"]["red"]["threshold"] == 0.5
    assert PolicyStore(engine).get(shadow.sha256).version == "test-model-2"
    # Later batches neither insert again nor touch last_seen within the minute.
    with engine.begin() as conn:
        conn.execute(update(policies_table).values(last_seen=stored.first_seen - timedelta(hours=1)))
    store.save_batch([make_verdict("e2")], [policy])
    assert PolicyStore(engine).get(policy.sha256).last_seen == stored.first_seen - timedelta(hours=1)
    fresh = VerdictStore(engine)  # another worker: refreshes last_seen once
    fresh.save_batch([make_verdict("e3")], [policy])
    assert PolicyStore(engine).get(policy.sha256).last_seen > stored.first_seen - timedelta(hours=1)
    assert len(PolicyStore(engine).all()) == 2


def test_the_console_explains_a_verdict_from_its_stored_policy(engine: Engine) -> None:
    policy = load_policy(POLICY)
    VerdictStore(engine).save_batch([make_verdict(
        "e1", policy_hash=policy.sha256, policy_version=policy.version, top_category="red", action="review",
        scores={"safe": 0.2, "red": 0.7, "yellow": 0.1},
    )], [policy])
    context = console_context(engine)  # no policy files at all: only the database knows it
    with logged_in(context, "alice") as browser:
        browser.get("/queue")
        page = browser.get("/items/1").text
        assert "≥ 0.5 → review" in page and f"/policies/{policy.sha256}" in page
        shown = browser.get(f"/policies/{policy.sha256}").text
        assert "a red picture" in shown and "test-model-1" in shown
        assert browser.get("/policies/" + "0" * 64).status_code == 404


def test_the_content_state_view_is_the_latest_verdict_and_decision(engine: Engine) -> None:
    store = VerdictStore(engine)
    store.save_batch([make_verdict("old", content_id="photo-1", action="block")])
    store.save_batch([make_verdict("new", content_id="photo-1", action="review")])
    store.save_batch([make_verdict("clean", content_id="photo-2", flagged=False, action="allow",
                                   top_category="violence")])
    store.save_batch([make_error_verdict("broken")])
    queue = ReviewQueue(engine)
    item = queue.item_for_event("old")
    queue.claim(item.id, ALICE)
    queue.decide(item.id, ALICE, {"violence": False}, "a film still")
    state = {r["content_id"]: r for r in rows(engine, "SELECT * FROM moderation_v1_content_state")}
    assert set(state) == {"photo-1", "photo-2", "content-broken"}
    one = state["photo-1"]
    assert (one["latest_event_id"], one["action"], one["verdicts"]) == ("new", "review", 2)
    assert (one["decision_outcome"], one["state"]) == ("not_violating", "kept")
    # An allowed image's top category is no finding: the trap the view closes.
    assert state["photo-2"]["flagged_category"] is None and state["photo-2"]["state"] == "allowed"
    assert state["content-broken"]["state"] == "error"
    assert rows(engine, "SELECT state FROM moderation_v1_content_state WHERE content_id = 'photo-1'") == [
        {"state": "kept"}]


def test_the_queue_decisions_and_hourly_views(engine: Engine) -> None:
    store = VerdictStore(engine)
    store.save_batch([make_verdict("a"), make_verdict("b", action="review"),
                      make_verdict("c", flagged=False, action="allow", top_category="violence"),
                      make_verdict("d", flagged=False, action="allow", top_category="safe", audited=True)])
    queue = ReviewQueue(engine)
    item = queue.next_item(ALICE)
    queue.decide(item.id, ALICE, {"violence": True}, "violent")
    pending = rows(engine, "SELECT * FROM moderation_v1_review_queue ORDER BY priority, item_id")
    assert [(r["event_id"], r["reason"], r["queue"]) for r in pending] == [("b", "review", "violence"),
                                                                         ("d", "audit", "audit")]
    decisions = rows(engine, "SELECT * FROM moderation_v1_decisions")
    assert [(d["event_id"], d["outcome"], d["review_reason"], d["reviewer"]) for d in decisions] == [
        ("a", "violating", "block", "alice")]
    hourly = rows(engine, "SELECT * FROM moderation_v1_counts_hourly")
    counts = {(r["category"], r["action"]): (r["verdicts"], r["audited"]) for r in hourly}
    assert counts == {("violence", "block"): (1, 0), ("violence", "review"): (1, 0), (None, "allow"): (2, 1)}
    assert len({str(r["hour"]) for r in hourly}) == 1


@pytest.mark.parametrize("view", VIEWS)
def test_each_view_has_the_columns_the_readme_promises(engine: Engine, view: str) -> None:
    section = README.split(f"`{view}`", 1)[1].split("\n\n", 1)[0]
    documented = re.findall(r"`([a-z_]+)`", section.split("columns:", 1)[1])
    with engine.connect() as conn:
        columns = list(conn.execute(select(text("*")).select_from(text(view)).limit(0)).keys())
    assert columns == documented


DASHBOARD = REPO / "helm" / "moderation" / "dashboards" / "trust-and-safety.json"


def grafana_sql(sql: str) -> str:
    """A panel's query with Grafana's macros as Grafana expands them for PostgreSQL (last 30 days)."""
    return re.sub(r"\$__timeFilter\(([a-z_]+)\)", r"\1 BETWEEN now() - interval '30 days' AND now()", sql)


@pytest.mark.postgres
def test_the_trust_and_safety_dashboard_reads_only_the_views_and_every_query_runs(postgres_url: str) -> None:
    import json

    upgrade(postgres_url)
    engine = create_engine_for(postgres_url)
    try:
        store = VerdictStore(engine)
        store.save_batch([make_verdict("a"), make_verdict("b", action="review", source="kids-app"),
                          make_verdict("c", flagged=False, action="allow", top_category="safe", audited=True),
                          make_error_verdict("d")])
        queue = ReviewQueue(engine)
        item = queue.next_item(ALICE)
        queue.decide(item.id, ALICE, {"violence": True}, "violent")
        audited = queue.item_for_event("c")
        queue.claim(audited.id, ALICE)
        queue.decide(audited.id, ALICE, {"violence": False}, "fine")
        dashboard = json.loads(DASHBOARD.read_text())
        assert dashboard["templating"]["list"][0]["query"] == "grafana-postgresql-datasource"
        for panel in dashboard["panels"]:
            (target,) = panel["targets"]
            sql = target["rawSql"]
            relations = set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_0-9]+)\b(?!\s*\()", sql, flags=re.IGNORECASE))
            assert relations and all(r.startswith("moderation_v1_") for r in relations), (panel["title"], relations)
            with engine.connect() as conn:
                answer = conn.execute(text(grafana_sql(sql))).all()
            assert answer, panel["title"]  # each panel has something to show on this data
    finally:
        engine.dispose()
