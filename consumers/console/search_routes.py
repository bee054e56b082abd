"""The search page: stored images nearest to a text, an uploaded image, or an item ("more like this"),
with filters on time, source and verdict. Thumbnails only for items with a reviewer copy (the media store
keeps nothing else), blurred as the reviewer prefers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from consumers.console.api import read_upload
from consumers.console.app import ConsoleContext, checked, page, viewer
from consumers.console.list_routes import _day, _text
from consumers.console.search import SearchNotFound, SearchUnavailable
from moderation.exceptions import ImageLoadError
from moderation.review.values import ReviewError
from moderation.search import Filters, Hit
from moderation.storage.accounts import Session

router = APIRouter()
K = 24
FLAGGED = {"": None, "flagged": True, "not_flagged": False}


def search_filters(params: Any) -> tuple[Filters, dict[str, str]]:
    """The page's filters from a query string or form, validated; and the values to show back."""
    flagged = str(params.get("flagged") or "")
    if flagged not in FLAGGED:
        raise ReviewError(ReviewError.INVALID, f"flagged: one of flagged, not_flagged, not {flagged!r}")
    since, until = _day(params.get("since"), "since"), _day(params.get("until"), "until")
    source, category = _text(params.get("source"), 128), _text(params.get("category"), 64)
    shown = {"since": params.get("since") or "", "until": params.get("until") or "", "source": source or "",
             "category": category or "", "flagged": flagged}
    until = until.replace(hour=23, minute=59, second=59) if until else None
    return Filters(since=since, until=until, sources=(source,) if source else (), flagged=FLAGGED[flagged],
                   categories=(category,) if category else ()), shown


@router.get("/search")
def search_page(request: Request) -> Response:
    session = viewer(request)
    params = request.query_params
    filters, shown = search_filters(params)
    text, like = _text(params.get("q"), 500), _text(params.get("like"), 255)
    if text is None and like is None:
        return _render(request, session, shown, None, None)
    return _run(request, session, shown, "like" if like else "text", text or like,  # type: ignore[arg-type]
                lambda s: s.like(like, K, filters) if like else s.text(text, K, filters))  # type: ignore[arg-type]


@router.post("/search")
async def search_by_image(request: Request) -> Response:
    session = await checked(request)
    context: ConsoleContext = request.app.state.ctx
    form = await request.form()
    filters, shown = search_filters(form)
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ReviewError(ReviewError.INVALID, "choose an image file to search with")
    data = await read_upload(upload, context.image_limits.max_bytes)  # type: ignore[arg-type]
    return await run_in_threadpool(
        _run, request, session, shown, "image", upload.filename or "an image",
        lambda s: s.image(data, K, filters, context.image_limits),
    )


def _run(request: Request, session: Session, shown: dict[str, str], kind: str, query: str, run: Any) -> Response:
    context: ConsoleContext = request.app.state.ctx
    if context.search is None:
        return _render(request, session, shown, None, None, error="search is off in this console")
    try:
        hits: list[Hit] = run(context.search)
    except (SearchUnavailable, SearchNotFound) as exc:
        return _render(request, session, shown, kind, query, error=str(exc))
    except ImageLoadError as exc:
        return _render(request, session, shown, kind, query, error=f"not an image we can read: {exc.reason}")
    items = {}
    if hits:
        ids = context.queue.item_ids_for_events([h.row.event_id for h in hits])
        items = {event_id: context.queue.item(item_id) for event_id, item_id in ids.items()}
    context.audit.add(session.actor.username, "search", detail={"kind": kind, "query": query[:500],
                                                                  "hits": len(hits)})
    return _render(request, session, shown, kind, query, hits=hits, items=items)


def _render(
    request: Request, session: Session, shown: dict[str, str], kind: str | None, query: str | None,
    *, hits: list[Hit] | None = None, items: dict[str, Any] | None = None, error: str | None = None,
) -> Response:
    context: ConsoleContext = request.app.state.ctx
    status = context.search.status if context.search is not None else None
    return page(request, "search.html", {
        "session": session, "filters": shown, "kind": kind, "query": query, "hits": hits, "items": items or {},
        "error": error, "status": status, "now": datetime.now(),
    })
