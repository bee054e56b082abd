"""The queue and the item page: take the next item, see it, decide it (or skip, escalate), and for leads,
override a decision or send it to appeal. Submit & next is one POST and a redirect to the next item."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from consumers.console.app import ConsoleContext, checked, page, viewer
from consumers.console.security import Forbidden
from moderation.policy import LoadedPolicy
from moderation.review.values import ReviewItem, Role
from moderation.storage.accounts import Session
from moderation.storage.policies import PolicyStore
from moderation.verdict import Verdict

router = APIRouter()
MAX_SKIPS = 50


@dataclass(frozen=True)
class Bar:
    """One category's score against its threshold, for the item page's bars (percent of the bar's width)."""

    name: str
    score: float
    threshold: float | None
    action: str | None
    margin: float | None
    keep_media: bool
    known: bool = True  # False: the verdict's policy is not among the console's files (no thresholds to show)

    @property
    def unsafe(self) -> bool:
        return self.threshold is not None

    @property
    def over(self) -> bool:
        return self.threshold is not None and self.score >= self.threshold

    @property
    def width(self) -> float:
        return round(100.0 * min(1.0, max(0.0, self.score)), 2)

    @property
    def mark(self) -> float | None:
        return None if self.threshold is None else round(100.0 * min(1.0, self.threshold), 2)


def bars(verdict: Verdict | None, policy: LoadedPolicy | None) -> list[Bar]:
    if verdict is None:
        return []
    categories = policy.policy.categories if policy is not None else {}
    found = []
    for name, score in verdict.scores.items():
        category = categories.get(name)
        found.append(Bar(
            name, float(score), category.threshold if category else None,
            category.action.value if category and category.action else None,
            category.uncertain_margin if category else None, category.keep_media if category else True,
            known=policy is not None,
        ))
    return found


def skips(text: str | None) -> list[int]:
    ids = []
    for part in (text or "").split(","):
        if part.strip().isdigit():
            ids.append(int(part))
    return ids[-MAX_SKIPS:]


@router.get("/queue")
def next_item(request: Request, queue: str | None = None, skip: str | None = None) -> Response:
    """Claim the next item for this reviewer and show it; or the empty-queue page with the counts."""
    session = viewer(request)
    context: ConsoleContext = request.app.state.ctx
    queues = [queue] if queue else None
    item = context.queue.next_item(session.actor, queues=queues, skip=skips(skip))
    if item is None:
        return page(request, "empty.html", {"session": session, "pending": context.queue.pending_counts(),
                                            "queue": queue})
    return RedirectResponse(_with_query(f"/items/{item.id}", queue=queue, skip=skip), status_code=303)


@router.get("/items/{item_id}")
def item_page(request: Request, item_id: int, queue: str | None = None, skip: str | None = None) -> Response:
    session = viewer(request)
    context: ConsoleContext = request.app.state.ctx
    item = context.queue.item(item_id)
    if item is None:
        return page(request, "error.html", {"session": session, "title": "Not found",
                                            "message": f"no review item {item_id}"}, status=404)
    verdict = context.verdicts.get(item.event_id)
    policies = context.policies()
    policy = policies.get(verdict.policy_hash) if verdict is not None else None
    if verdict is not None and policy is None:  # no longer in the files: the copy stored with the verdicts
        stored = PolicyStore(context.verdicts.engine).get(verdict.policy_hash)
        policy = stored.loaded() if stored is not None else None
    shown = bars(verdict, policy)
    return page(request, "item.html", {
        "session": session,
        "item": item,
        "verdict": verdict,
        "policy": policy,
        "bars": shown,
        # What a reviewer decides on: the policy's unsafe categories (every scored one when the policy is unknown).
        "decidable": [b for b in shown if b.unsafe] or shown,
        "history": context.reads.verdicts_of(item.content_id),
        "shadows": context.reads.shadows_of(item.event_id),
        "decisions": context.queue.history(item.id),
        "mine": _held_by(item, session),
        "can_claim": item.status == "pending" and not _held_by(item, session) and _claimable(item, session),
        "is_lead": session.actor.role.is_lead,
        "queue": queue or "",
        "skip": ",".join(str(i) for i in skips(skip)),
    })


@router.get("/policies/{policy_hash}")
def policy_page(request: Request, policy_hash: str) -> Response:
    """A stored policy's exact text: what the verdicts naming this hash were decided under."""
    session = viewer(request)
    context: ConsoleContext = request.app.state.ctx
    stored = PolicyStore(context.verdicts.engine).get(policy_hash[:64])
    if stored is None:
        return page(request, "error.html", {"session": session, "title": "Not found",
                                            "message": "no policy stored under that hash"}, status=404)
    return page(request, "policy.html", {"session": session, "stored": stored})


@router.post("/items/{item_id}/claim")
async def claim(request: Request, item_id: int) -> Response:
    session = await checked(request)
    request.app.state.ctx.queue.claim(item_id, session.actor)
    return RedirectResponse(f"/items/{item_id}", status_code=303)


@router.post("/items/{item_id}/decide")
async def decide(request: Request, item_id: int) -> Response:
    session = await checked(request)
    context: ConsoleContext = request.app.state.ctx
    form = await request.form()
    decision = context.queue.decide(item_id, session.actor, _categories(form), str(form.get("reason", "")))
    context.metrics.decided(decision.kind.value, decision.outcome.value)
    context.notify_decision()
    return _onwards(form, item_id)


@router.post("/items/{item_id}/skip")
async def skip_item(request: Request, item_id: int) -> Response:
    session = await checked(request)
    context: ConsoleContext = request.app.state.ctx
    form = await request.form()
    context.queue.release(item_id, session.actor)
    skipped = ",".join(str(i) for i in [*skips(str(form.get("skip", ""))), item_id][-MAX_SKIPS:])
    return RedirectResponse(_with_query("/queue", queue=str(form.get("queue", "")), skip=skipped), status_code=303)


@router.post("/items/{item_id}/escalate")
async def escalate(request: Request, item_id: int) -> Response:
    session = await checked(request)
    context: ConsoleContext = request.app.state.ctx
    form = await request.form()
    decision = context.queue.escalate(item_id, session.actor, str(form.get("reason", "")))
    context.metrics.decided(decision.kind.value, decision.outcome.value)
    return _onwards(form, item_id, force_next=True)


@router.post("/items/{item_id}/override")
async def override(request: Request, item_id: int) -> Response:
    session = await checked(request)
    context: ConsoleContext = request.app.state.ctx
    form = await request.form()
    decision = context.queue.override(item_id, session.actor, _categories(form), str(form.get("reason", "")))
    context.metrics.decided(decision.kind.value, decision.outcome.value)
    context.notify_decision()
    return RedirectResponse(f"/items/{item_id}", status_code=303)


@router.post("/items/{item_id}/appeal")
async def appeal(request: Request, item_id: int) -> Response:
    session = await checked(request)
    context: ConsoleContext = request.app.state.ctx
    form = await request.form()
    if not session.actor.role.is_lead:
        raise Forbidden("appeals are registered by leads")
    context.queue.appeal(item_id, session.actor, str(form.get("reason", "")))
    return RedirectResponse(f"/items/{item_id}", status_code=303)


def _categories(form: Any) -> dict[str, bool]:
    """Every category shown on the form (`category` fields), violating when its box was ticked."""
    shown = [str(name) for name in form.getlist("category")]
    violating = {str(name) for name in form.getlist("violating")}
    return {name: name in violating for name in shown}


def _onwards(form: Any, item_id: int, *, force_next: bool = False) -> Response:
    """Submit & next goes to the next item in the same queue; otherwise back to the decided item."""
    if force_next or str(form.get("then", "")) == "next":
        target = _with_query("/queue", queue=str(form.get("queue", "")), skip=str(form.get("skip", "")))
        return RedirectResponse(target, status_code=303)
    return RedirectResponse(f"/items/{item_id}", status_code=303)


def _with_query(path: str, **values: str | None) -> str:
    query = urlencode({name: value for name, value in values.items() if value})
    return f"{path}?{query}" if query else path


def _held_by(item: ReviewItem, session: Session) -> bool:
    return (
        item.status == "pending" and item.claimed_by == session.actor.username
        and item.claim_expires_at is not None and item.claim_expires_at > datetime.now(timezone.utc)
    )


def _claimable(item: ReviewItem, session: Session) -> bool:
    if item.escalated and session.actor.role is Role.REVIEWER:
        return False
    return item.excluded_reviewer != session.actor.username
