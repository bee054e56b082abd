"""The list of items with filters and bulk decisions, the stats page, and the leads' audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from consumers.console.app import ConsoleContext, checked, lead, page, viewer
from moderation.review.routing import ReviewReason
from moderation.review.values import ReviewError
from moderation.storage.review_queue import ItemFilter

router = APIRouter()
PAGE = 50
STATUSES = ("pending", "decided")
CHART_DAYS = 30


@dataclass(frozen=True)
class Column:
    """One day's bar in a category's chart (SVG coordinates, 0-100 high)."""

    day: date
    count: int
    x: float
    height: float


def _text(value: str | None, limit: int = 255) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > limit:
        raise ReviewError(ReviewError.INVALID, f"a filter value longer than {limit} characters")
    return value


def _day(value: str | None, name: str) -> datetime | None:
    value = _text(value, 10)
    if value is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), time(0), tzinfo=timezone.utc)
    except ValueError:
        raise ReviewError(ReviewError.INVALID, f"{name}: expected a date as YYYY-MM-DD, got {value!r}") from None


def item_filter(params: Any) -> ItemFilter:
    """The list's filters from the query string, each validated (a bad one is a 422, never a guess)."""
    reason = _text(params.get("reason"))
    if reason is not None and reason not in {r.value for r in ReviewReason}:
        raise ReviewError(ReviewError.INVALID, f"reason: one of {[r.value for r in ReviewReason]}, not {reason!r}")
    status = _text(params.get("status"))
    if status is not None and status not in STATUSES:
        raise ReviewError(ReviewError.INVALID, f"status: one of {list(STATUSES)}, not {status!r}")
    until = _day(params.get("until"), "until")
    return ItemFilter(
        category=_text(params.get("category"), 64), reason=reason, queue=_text(params.get("queue"), 64),
        status=status, source=_text(params.get("source"), 128), since=_day(params.get("since"), "since"),
        until=until + timedelta(days=1) if until else None,
    )


@router.get("/items")
def items(request: Request) -> Response:
    session = viewer(request)
    context: ConsoleContext = request.app.state.ctx
    where = item_filter(request.query_params)
    before = request.query_params.get("before")
    if before is not None and not before.isdigit():
        raise ReviewError(ReviewError.INVALID, f"before: an item id, not {before!r}")
    found = context.queue.items(where, limit=PAGE, before=int(before) if before else None)
    filters = {k: v for k, v in request.query_params.items() if k != "before" and v}
    return page(request, "items.html", {
        "session": session, "items": found, "filters": filters, "where": where,
        "next_before": found[-1].id if len(found) == PAGE else None, "reasons": [r.value for r in ReviewReason],
        "statuses": STATUSES, "result": None,
    })


@router.post("/items/bulk")
async def bulk(request: Request) -> Response:
    session = await checked(request)
    context: ConsoleContext = request.app.state.ctx
    form = await request.form()
    ids = [int(v) for v in form.getlist("item") if str(v).isdigit()]
    shown = [str(name) for name in form.getlist("category")]
    violating = {str(name) for name in form.getlist("violating")}
    categories = {name: name in violating for name in shown}
    result = context.queue.decide_many(ids, session.actor, categories, str(form.get("reason", "")))
    context.metrics.decided("decide", "violating" if violating else "not_violating", len(result.decided))
    if result.decided:
        context.notify_decision()
    return page(request, "items.html", {
        "session": session, "items": [], "filters": {}, "where": ItemFilter(), "next_before": None,
        "reasons": [r.value for r in ReviewReason], "statuses": STATUSES, "result": result,
    })


@router.get("/stats")
def stats(request: Request) -> Response:
    session = viewer(request)
    context: ConsoleContext = request.app.state.ctx
    now = datetime.now(timezone.utc)
    numbers = context.reads.stats(days=CHART_DAYS, now=now)
    days = [(now - timedelta(days=CHART_DAYS - 1 - i)).date() for i in range(CHART_DAYS)]
    charts = {}
    for category, per_day in sorted(numbers.flagged_per_day.items()):
        top = max(per_day.values(), default=1) or 1
        charts[category] = [
            Column(day, n, x=i * (100.0 / CHART_DAYS), height=round(100.0 * n / top, 2))
            for i, day in enumerate(days)
            for n in (per_day.get(day, 0),)
        ]
    recent_days = days[-7:]
    return page(request, "stats.html", {
        "session": session, "stats": numbers, "charts": charts, "bar_width": round(100.0 / CHART_DAYS * 0.8, 2),
        "recent_days": recent_days, "now": now,
    })


@router.get("/audit")
def audit(request: Request) -> Response:
    session = lead(viewer(request))
    context: ConsoleContext = request.app.state.ctx
    params = request.query_params
    before = params.get("before")
    item = params.get("item")
    for name, value in (("before", before), ("item", item)):
        if value and not value.isdigit():
            raise ReviewError(ReviewError.INVALID, f"{name}: a number, not {value!r}")
    entries = context.audit.entries(
        actor=_text(params.get("actor")), action=_text(params.get("action"), 32),
        item_id=int(item) if item else None, before_id=int(before) if before else None, limit=PAGE,
    )
    filters = {k: v for k, v in params.items() if k != "before" and v}
    return page(request, "audit.html", {
        "session": session, "entries": entries, "filters": filters,
        "next_before": entries[-1].id if len(entries) == PAGE else None,
    })
