"""The review queue in the database (moderation/review/), on SQLite and PostgreSQL: items written with
their verdicts, claims with leases, decisions, overrides, appeals and the audit log."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, select, update

from moderation.review.values import Actor, DecisionKind, Outcome, ReviewError, Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import review_audit_table, review_decisions_table, review_items_table
from moderation.storage.review_decisions import OutcomeStore
from moderation.storage.review_queue import ReviewQueue
from moderation.verdict import MediaStatus, ReviewMedia, Verdict
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


# --- the queue: claims, decisions, escalations, overrides, appeals ------------------------------------

ALICE = Actor("alice", Role.REVIEWER)
BOB = Actor("bob", Role.REVIEWER)
LEAD = Actor("lena", Role.LEAD)
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(engine: Engine, clock: Clock) -> ReviewQueue:
    return ReviewQueue(engine, lease=timedelta(minutes=10), clock=clock)


def fill(engine: Engine, *verdicts: Verdict) -> dict[str, int]:
    """Save verdicts (their items enter the queue one second apart, in order); item id per event id."""
    store = VerdictStore(engine)
    for i, verdict in enumerate(verdicts):
        store.save_batch([verdict])
        with engine.begin() as conn:
            conn.execute(
                update(review_items_table).where(review_items_table.c.event_id == verdict.event_id)
                .values(entered_at=T0 - timedelta(hours=1) + timedelta(seconds=i))
            )
    return {event_id: row["id"] for event_id, row in items(engine).items()}


def audit_rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(review_audit_table).order_by(review_audit_table.c.id)).mappings()]


VIOLENT = {"violence": True, "safe": False}
CLEAN = {"violence": False, "safe": False}


def test_next_item_serves_block_then_review_then_uncertain_then_audit_oldest_first(
    engine: Engine, queue: ReviewQueue
) -> None:
    fill(
        engine,
        make_verdict("audit-old", flagged=False, action="allow", top_category="safe", audited=True),
        make_verdict("unsure", action="review", uncertain=True),
        make_verdict("review-old", action="review"),
        make_verdict("block-new", action="block"),
        make_verdict("review-new", action="review"),
    )
    order = []
    while (item := queue.next_item(ALICE)) is not None:
        assert queue.next_item(ALICE) == item  # one job per reviewer: the held item comes back
        queue.decide(item.id, ALICE, CLEAN, "looked at it")
        order.append(item.event_id)
    assert order == ["block-new", "review-old", "review-new", "unsure", "audit-old"]


def test_two_reviewers_never_hold_the_same_item(engine: Engine, queue: ReviewQueue) -> None:
    fill(engine, *(make_verdict(f"e{i}") for i in range(24)))
    decided: dict[str, list[str]] = {"alice": [], "bob": [], "carol": []}
    failures: list[BaseException] = []

    def work(name: str) -> None:
        actor = Actor(name, Role.REVIEWER)
        try:
            while (item := queue.next_item(actor)) is not None:
                queue.decide(item.id, actor, VIOLENT, "violent")
                decided[name].append(item.event_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in decided]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    every = [e for names in decided.values() for e in names]
    assert sorted(every) == sorted(f"e{i}" for i in range(24))  # each decided once, by one reviewer
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(review_decisions_table)).scalar_one() == 24


def test_an_abandoned_claim_returns_to_the_queue_when_its_lease_runs_out(
    engine: Engine, queue: ReviewQueue, clock: Clock
) -> None:
    ids = fill(engine, make_verdict("only"))
    assert queue.next_item(ALICE).id == ids["only"]
    assert queue.next_item(BOB) is None
    with pytest.raises(ReviewError) as refused:
        queue.claim(ids["only"], BOB)
    assert refused.value.code == ReviewError.CONFLICT
    clock.now += timedelta(minutes=11)
    assert queue.next_item(BOB).id == ids["only"]
    with pytest.raises(ReviewError, match="claimed by bob"):
        queue.decide(ids["only"], ALICE, VIOLENT, "too late")
    decision = queue.decide(ids["only"], BOB, VIOLENT, "violent")
    assert decision.reviewer == "bob"
    assert [r["action"] for r in audit_rows(engine)] == ["claim", "claim", "decide"]


def test_a_decision_needs_a_reason_and_known_categories(engine: Engine, queue: ReviewQueue) -> None:
    ids = fill(engine, make_verdict("x"))
    queue.next_item(ALICE)
    for categories, reason, message in (
        (VIOLENT, "   ", "reason is required"),
        ({}, "fine", "at least one category"),
        ({"weapons": True}, "fine", "unknown categories"),
    ):
        with pytest.raises(ReviewError, match=message) as refused:
            queue.decide(ids["x"], ALICE, categories, reason)
        assert refused.value.code == ReviewError.INVALID
    assert queue.item(ids["x"]).status == "pending"


def test_decisions_are_history_state_audit_and_reviewer_outcomes(engine: Engine, queue: ReviewQueue) -> None:
    ids = fill(engine, make_verdict("kept"), make_verdict("wrong"))
    queue.claim(ids["kept"], ALICE)
    first = queue.decide(ids["kept"], ALICE, VIOLENT, "a weapon is pointed at someone")
    queue.claim(ids["wrong"], ALICE)
    queue.decide(ids["wrong"], ALICE, CLEAN, "a toy")
    item = queue.item(ids["kept"])
    assert (item.status, item.latest_decision_id, item.claimed_by) == ("decided", first.decision_id, None)
    assert first.outcome is Outcome.VIOLATING and first.violated == ["violence"]
    outcomes = OutcomeStore(engine)
    assert outcomes.get("kept").outcome == "confirmed" and outcomes.get("wrong").outcome == "overturned"
    report = {row.category: row for row in outcomes.precision_report()}
    assert (report["violence"].total.reviewed, report["violence"].precision) == (2, 0.5)

    with pytest.raises(ReviewError) as refused:
        queue.override(ids["kept"], ALICE, CLEAN, "not mine to change")
    assert refused.value.code == ReviewError.FORBIDDEN
    clock_later = queue._clock() + timedelta(seconds=1)  # noqa: SLF001 - an override is a later decision
    queue._clock = lambda: clock_later  # noqa: SLF001
    override = queue.override(ids["kept"], LEAD, CLEAN, "a prop in a film still")
    assert override.previous_decision_id == first.decision_id and override.kind is DecisionKind.OVERRIDE
    assert [d.decision_id for d in queue.history(ids["kept"])] == [first.decision_id, override.decision_id]
    assert queue.item(ids["kept"]).latest_decision_id == override.decision_id
    assert outcomes.get("kept").outcome == "overturned"
    assert [r["action"] for r in audit_rows(engine)][-1] == "override"


def test_escalated_items_go_to_the_leads_first(engine: Engine, queue: ReviewQueue) -> None:
    ids = fill(engine, make_verdict("hard", action="review"), make_verdict("easy", action="review"))
    assert queue.next_item(ALICE).id == ids["hard"]
    escalation = queue.escalate(ids["hard"], ALICE, "needs legal")
    assert escalation.outcome is Outcome.ESCALATED
    item = queue.item(ids["hard"])
    assert (item.queue, item.status, item.priority, item.claimed_by) == ("escalated", "pending", 0, None)
    assert queue.next_item(ALICE).id == ids["easy"]  # reviewers never get it
    with pytest.raises(ReviewError) as refused:
        queue.claim(ids["hard"], BOB)
    assert refused.value.code == ReviewError.FORBIDDEN
    assert queue.next_item(LEAD).id == ids["hard"]  # the most urgent item there is, for a lead
    assert queue.decide(ids["hard"], LEAD, VIOLENT, "legal says remove").kind is DecisionKind.DECIDE
    assert [d.kind for d in queue.history(ids["hard"])] == [DecisionKind.ESCALATE, DecisionKind.DECIDE]


def test_an_appeal_goes_to_another_reviewer(engine: Engine, queue: ReviewQueue, clock: Clock) -> None:
    ids = fill(engine, make_verdict("appealed"))
    queue.next_item(ALICE)
    first = queue.decide(ids["appealed"], ALICE, VIOLENT, "violent")
    with pytest.raises(ReviewError, match="not decided"):
        queue.appeal(fill(engine, make_verdict("open"))["open"], LEAD, "the uploader says no")
    clock.now += timedelta(minutes=1)
    item = queue.appeal(ids["appealed"], LEAD, "the uploader says it is a film still")
    assert (item.status, item.queue, item.excluded_reviewer) == ("pending", "appeals", "alice")
    assert queue.next_item(ALICE, queues=["appeals"]) is None
    with pytest.raises(ReviewError) as refused:
        queue.claim(ids["appealed"], ALICE)
    assert refused.value.code == ReviewError.FORBIDDEN
    assert queue.next_item(BOB, queues=["appeals"]).id == ids["appealed"]
    second = queue.decide(ids["appealed"], BOB, CLEAN, "a film still")
    assert second.previous_decision_id == first.decision_id
    assert OutcomeStore(engine).get("appealed").outcome == "overturned"
    assert "appeal" in [r["action"] for r in audit_rows(engine)]


def test_a_bulk_decision_is_one_audit_row_with_per_item_results(engine: Engine, queue: ReviewQueue) -> None:
    ids = fill(engine, *(make_verdict(f"b{i}") for i in range(4)))
    queue.claim(ids["b3"], BOB)
    before = len(audit_rows(engine))
    result = queue.decide_many([ids["b0"], ids["b1"], ids["b2"], ids["b3"], 999_999], LEAD, CLEAN, "a meme wave")
    assert set(result.decided) == {ids["b0"], ids["b1"], ids["b2"]}
    assert set(result.refused) == {ids["b3"], 999_999} and "claimed by bob" in result.refused[ids["b3"]]
    rows = audit_rows(engine)[before:]
    assert [r["action"] for r in rows] == ["bulk_decide"]
    assert rows[0]["detail"]["bulk_id"] == result.bulk_id
    assert set(rows[0]["detail"]["decided"]) == {str(ids[f"b{i}"]) for i in range(3)}
    assert {queue.history(ids["b0"])[0].bulk_id} == {result.bulk_id}


def test_the_outbox_holds_decisions_until_published(engine: Engine, queue: ReviewQueue) -> None:
    ids = fill(engine, make_verdict("p1"), make_verdict("p2"))
    queue.claim(ids["p1"], ALICE)
    decided = queue.decide(ids["p1"], ALICE, VIOLENT, "violent")
    queue.claim(ids["p2"], ALICE)
    queue.escalate(ids["p2"], ALICE, "unsure")
    pending = queue.unpublished()
    assert [d.decision_id for d, _, _ in pending] == [decided.decision_id]  # not the escalation
    assert pending[0][1:] == ("uploads", "2024-11-01")  # the item's source, the verdict's policy version
    queue.mark_published([decided.decision_id])
    assert queue.unpublished() == []
    assert queue.decision(decided.decision_id).published_at is not None
    counts = queue.pending_counts()
    assert counts["escalated"][0] == 1 and counts["escalated"][1] == T0 - timedelta(hours=1) + timedelta(seconds=1)
