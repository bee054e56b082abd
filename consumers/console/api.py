"""The JSON read API (v1), served by `moderation console` under /api/v1, with its OpenAPI document at
/api/v1/openapi.json.

Who may call: a service account's bearer token (`Authorization: Bearer mdt_...`, from `moderation console
token create`), scoped read or write; or a console login session (its cookie; a write then also needs the
session's CSRF token in the X-CSRF-Token header). Nothing answers without one of them, the OpenAPI
document included. Writes (claims, decisions, appeals) go through the same stores as the console's pages,
so the same role rules and the same audit rows apply, whoever calls.

Every list is a keyset page (newest first, `limit` at most 500, `cursor` from the previous page), every
parameter is validated, and an unknown parameter is refused rather than ignored: a misspelt filter must
not quietly return everything.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from consumers.console.api_models import (
    AppealIn,
    AuditOut,
    AuditPage,
    BulkDecisionIn,
    BulkDecisionOut,
    ContentHistory,
    CountOut,
    CountsOut,
    DecisionIn,
    DecisionOut,
    DecisionPage,
    ErrorOut,
    PolicyOut,
    PolicySummary,
    Problem,
    QueueOut,
    ReviewItemDetail,
    ReviewItemOut,
    ReviewItemPage,
    SearchHitOut,
    SearchOut,
    ShadowOut,
    VerdictDetail,
    VerdictOut,
    VerdictPage,
    WhoAmI,
)
from consumers.console.search import MAX_K, ConsoleSearch, SearchNotFound, SearchUnavailable
from consumers.console.security import CSRF_HEADER, same_token
from moderation.exceptions import ImageLoadError
from moderation.review.values import Actor, DecisionKind, Outcome, ReviewDecision, ReviewError
from moderation.search import Filters, Hit
from moderation.storage import StorageError
from moderation.storage.api_reads import MAX_COUNT_ROWS, ApiReads, DecisionFilter, VerdictFilter
from moderation.storage.api_tokens import ApiTokens, Scope
from moderation.storage.policies import PolicyStore
from moderation.storage.review_queue import ItemFilter
from moderation.storage.review_reads import MAX_HISTORY
from moderation.verdict import Verdict, VerdictStatus

PREFIX = "/api/v1"
MAX_LIMIT = 500
MAX_COUNT_RANGE = timedelta(days=92)
_STATUS = {ReviewError.NOT_FOUND: 404, ReviewError.CONFLICT: 409, ReviewError.FORBIDDEN: 403, ReviewError.INVALID: 422}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in ((401, "No valid token or session"), (403, "The token's scope or the account's role "
                         "does not allow it"), (422, "A parameter is invalid or unknown"))
}

ReasonName = Literal["escalate", "block", "review", "uncertain", "audit"]  # ReviewReason's values (a test checks)
Text = Annotated[str | None, Query(min_length=1, max_length=255)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page (at most 500).")]
Cursor = Annotated[str | None, Query(max_length=64, description="`next_cursor` of the previous page.")]
Since = Annotated[datetime | None, Query(description="At or after (ISO 8601; UTC when no offset is given).")]
Until = Annotated[datetime | None, Query(description="Before (ISO 8601; UTC when no offset is given).")]


class ApiError(Exception):
    def __init__(self, status: int, message: str, problems: list[Problem] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.problems, self.headers = status, message, problems or [], headers


@dataclass(frozen=True)
class Caller:
    actor: Actor
    scope: Scope
    via: Literal["token", "session"]
    token_name: str | None = None


def _context(request: Request) -> Any:
    return request.app.state.ctx


def _known_parameters(request: Request) -> None:
    """Refuse query parameters the endpoint does not declare (a typo must not widen a filter to all)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    declared = {param.alias for param in _all_query_params(dependant)}
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        raise ApiError(422, f"unknown parameter {unknown[0]!r}", [
            Problem(parameter=name, message=f"not a parameter of this endpoint; it takes {sorted(declared) or 'none'}")
            for name in unknown
        ])


def _all_query_params(dependant: Any) -> list[Any]:
    found = list(dependant.query_params)
    for sub in dependant.dependencies:
        found += _all_query_params(sub)
    return found


def caller(request: Request) -> Caller:
    """Who is calling, from a bearer token or a console session; ApiError 401 when neither is valid (then
    the endpoint's parameters are checked: nobody learns them without authenticating)."""
    who = _authenticated(request)
    _known_parameters(request)
    return who


def _authenticated(request: Request) -> Caller:
    context = _context(request)
    header = request.headers.get("authorization")
    if header is not None:
        kind, _, secret = header.partition(" ")
        found = ApiTokens(context.verdicts.engine).caller(secret.strip()) if kind.lower() == "bearer" else None
        if found is None:
            raise ApiError(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
        request.state.user = f"{found.actor.username} (token {found.token_name})"
        return Caller(found.actor, found.scope, "token", found.token_name)
    session, new_token = context.authenticator.session(request)
    if session is None:
        raise ApiError(401, "authenticate with a bearer token or a console session",
                       headers={"WWW-Authenticate": "Bearer"})
    request.state.user = session.actor.username
    if new_token is not None:
        request.state.new_session_token = new_token
    request.state.csrf = session.csrf_token
    return Caller(session.actor, Scope.WRITE, "session")


def writer(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
    """A caller allowed to change things: a write-scoped token, or a session with its CSRF token."""
    if who.scope is not Scope.WRITE:
        raise ApiError(403, "this token's scope is read: writes need a token with scope write")
    if who.via == "session" and not same_token(request.headers.get(CSRF_HEADER), getattr(request.state, "csrf", None)):
        raise ApiError(403, f"missing or wrong CSRF token: send the session's token in {CSRF_HEADER}")
    return who


def lead(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.actor.role.is_lead:
        raise ApiError(403, "for leads only")
    return who


Reader = Annotated[Caller, Depends(caller)]
Writer = Annotated[Caller, Depends(writer)]
Lead = Annotated[Caller, Depends(lead)]


def cursor_of(row_id: int | None) -> str | None:
    return None if row_id is None else base64.urlsafe_b64encode(f"v1:{row_id}".encode()).decode().rstrip("=")


def before_of(cursor: str | None) -> int | None:
    """The id a cursor continues below; ApiError 422 for one this API did not hand out."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = text.partition(":")
        if version != "v1" or not value.isdigit():
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "cursor: not a cursor from this API", [
            Problem(parameter="cursor", message="pass the next_cursor of the previous page unchanged")
        ]) from None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _range(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and until <= since:
        raise ApiError(422, "until must be after since", [Problem(parameter="until", message="not after since")])
    return since, until


def _next(rows: list[tuple[int, Any]], limit: int) -> str | None:
    return cursor_of(rows[-1][0]) if len(rows) == limit else None


def search_filters(
    since: Since = None, until: Until = None,
    source: Annotated[list[str] | None, Query(description="Only these sources (repeatable).")] = None,
    flagged: bool | None = None,
    category: Annotated[list[str] | None, Query(description="Only these top categories (repeatable).")] = None,
    action: Annotated[list[str] | None, Query(description="Only these actions (repeatable).")] = None,
) -> Filters:
    since, until = _range(since, until)
    for name, values in (("source", source), ("category", category), ("action", action)):
        if values and (len(values) > 20 or any(not v or len(v) > 255 for v in values)):
            raise ApiError(422, f"{name}: at most 20 values of 1 to 255 characters",
                           [Problem(parameter=name, message="at most 20 values of 1 to 255 characters")])
    return Filters(since=since, until=until, sources=tuple(source or ()), flagged=flagged,
                   actions=tuple(action or ()), categories=tuple(category or ()))

SearchFilters = Annotated[Filters, Depends(search_filters)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="How many hits (at most 100).")]


def create_api(context: Any) -> FastAPI:
    """The /api/v1 application over the console's context (mounted by consumers/console/app.py)."""
    api = FastAPI(
        title="moderation read API", version="1",
        description="Verdicts, content history, counts, the review queue, decisions, stored policies and "
        "the audit log of the moderation pipeline. Authenticate with `Authorization: Bearer <token>` "
        "(`moderation console token create`). Lists are keyset pages, newest first.",
        docs_url=None, redoc_url=None, openapi_url=None, responses=_ERRORS,
    )
    api.state.ctx = context
    reads = ApiReads(context.verdicts.engine)
    policies = PolicyStore(context.verdicts.engine)

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        body = ErrorOut(error=exc.message, problems=exc.problems)
        return JSONResponse(body.model_dump(), status_code=exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            Problem(parameter=".".join(str(p) for p in error.get("loc", ())[1:]) or None, message=error.get("msg", ""))
            for error in exc.errors()
        ]
        first = problems[0] if problems else Problem(message="invalid request")
        body = ErrorOut(error=f"{first.parameter or 'request'}: {first.message}", problems=problems)
        return JSONResponse(body.model_dump(), status_code=422)

    @api.exception_handler(ReviewError)
    async def review_error(request: Request, exc: ReviewError) -> Response:
        return JSONResponse(ErrorOut(error=str(exc)).model_dump(), status_code=_STATUS.get(exc.code, 400))

    @api.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        return JSONResponse(ErrorOut(error="database unavailable: try again shortly").model_dump(), status_code=503)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse(ErrorOut(error=str(exc.detail)).model_dump(), status_code=exc.status_code)

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(who: Reader) -> Response:
        return JSONResponse(api.openapi())

    @api.get("/whoami", response_model=WhoAmI, summary="Who the token or session speaks for")
    def whoami(who: Reader) -> WhoAmI:
        return WhoAmI(username=who.actor.username, role=who.actor.role.value, scope=who.scope.value,
                      via=who.via, token_name=who.token_name)

    # -- verdicts ----------------------------------------------------------------------------------------

    @api.get("/verdicts", response_model=VerdictPage, summary="Verdicts, newest first, filtered")
    def verdicts(
        who: Reader,
        content_id: Text = None, source: Text = None,
        category: Annotated[str | None, Query(min_length=1, max_length=64, description="Flagged category")] = None,
        action: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
        status: Literal["ok", "error"] | None = None,
        flagged: bool | None = None, uncertain: bool | None = None, audited: bool | None = None,
        policy_version: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        since: Since = None, until: Until = None, limit: Limit = 100, cursor: Cursor = None,
    ) -> VerdictPage:
        since, until = _range(since, until)
        where = VerdictFilter(content_id=content_id, source=source, category=category, action=action,
                              status=status, flagged=flagged, uncertain=uncertain, audited=audited,
                              policy_version=policy_version, since=since, until=until)
        rows = reads.verdicts(where, limit=limit, before=before_of(cursor))
        return VerdictPage(items=[VerdictOut.of(i, v) for i, v in rows], next_cursor=_next(rows, limit))

    @api.get("/verdicts/{event_id}", response_model=VerdictDetail, summary="One verdict, with its review")
    def verdict(who: Reader, event_id: Annotated[str, Path(max_length=255)]) -> VerdictDetail:
        found = reads.verdict(event_id)
        if found is None:
            raise ApiError(404, f"no verdict for event {event_id!r}")
        row_id, shown = found
        item = context.queue.item_for_event(event_id)
        return VerdictDetail(
            verdict=VerdictOut.of(row_id, shown),
            shadow_verdicts=[ShadowOut.of(s) for s in context.reads.shadows_of(event_id)],
            review_item=ReviewItemOut.of(item) if item is not None else None,
            decisions=[DecisionOut.of(d) for d in context.queue.history(item.id)] if item is not None else [],
            policy_url=f"{PREFIX}/policies/{shown.policy_hash}",
        )

    @api.get("/content/{content_id}", response_model=ContentHistory, summary="One content id's whole history")
    def content(who: Reader, content_id: Annotated[str, Path(max_length=255)]) -> ContentHistory:
        ids = reads.verdicts(VerdictFilter(content_id=content_id), limit=MAX_HISTORY)
        history = [v for _, v in ids]
        if not history:
            raise ApiError(404, f"no verdict for content {content_id!r}")
        shadows = [s for v in history[:20] for s in context.reads.shadows_of(v.event_id)]
        items = [item for v in history if (item := context.queue.item_for_event(v.event_id)) is not None]
        decisions = reads.decisions_of_content(content_id)
        return ContentHistory(
            content_id=content_id, state=_state(history[0], decisions),
            verdicts=[VerdictOut.of(i, v) for i, v in ids], shadow_verdicts=[ShadowOut.of(s) for s in shadows],
            review_items=[ReviewItemOut.of(i) for i in items], decisions=[DecisionOut.of(d) for d in decisions],
        )

    @api.get("/counts", response_model=CountsOut, summary="Verdicts per hour, source, status, category, action")
    def counts(
        who: Reader, since: Since = None, until: Until = None, source: Text = None,
        category: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        action: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    ) -> CountsOut:
        since, until = _range(since, until)
        until = until or datetime.now(timezone.utc)
        since = since or until - timedelta(days=1)
        if until - since > MAX_COUNT_RANGE:
            raise ApiError(422, f"a time range of at most {MAX_COUNT_RANGE.days} days", [
                Problem(parameter="since", message="narrow the range, or read moderation_v1_counts_hourly in SQL")
            ])
        rows = reads.counts(since, until, source=source, category=category, action=action)
        if len(rows) > MAX_COUNT_ROWS:
            raise ApiError(422, f"more than {MAX_COUNT_ROWS} rows: narrow the range or filter by source")
        return CountsOut(since=since, until=until, rows=[CountOut.of(r) for r in rows])

    # -- the review queue --------------------------------------------------------------------------------

    @api.get("/queue", response_model=list[QueueOut], summary="Pending items and oldest pending age per queue")
    def queue(who: Reader) -> list[QueueOut]:
        now = datetime.now(timezone.utc)
        return [
            QueueOut(queue=name, pending=n, oldest_entered_at=oldest,
                     oldest_age_s=round((now - oldest).total_seconds(), 1) if oldest else None)
            for name, (n, oldest) in sorted(context.queue.pending_counts().items())
        ]

    @api.get("/review-items", response_model=ReviewItemPage, summary="Review items, newest first, filtered")
    def review_items(
        who: Reader,
        category: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        reason: ReasonName | None = None,
        queue: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        status: Literal["pending", "decided"] | None = None, source: Text = None,
        since: Since = None, until: Until = None, limit: Limit = 100, cursor: Cursor = None,
    ) -> ReviewItemPage:
        since, until = _range(since, until)
        where = ItemFilter(category=category, reason=reason, queue=queue, status=status, source=source,
                           since=since, until=until)
        found = context.queue.items(where, limit=limit, before=before_of(cursor))
        rows = [(item.id, item) for item in found]
        return ReviewItemPage(items=[ReviewItemOut.of(i) for i in found], next_cursor=_next(rows, limit))

    @api.get("/review-items/{item_id}", response_model=ReviewItemDetail, summary="One review item and its decisions")
    def review_item(who: Reader, item_id: int) -> ReviewItemDetail:
        item = context.queue.item(item_id)
        if item is None:
            raise ApiError(404, f"no review item {item_id}")
        return ReviewItemDetail(item=ReviewItemOut.of(item),
                                decisions=[DecisionOut.of(d) for d in context.queue.history(item_id)])

    @api.get("/review-items/{item_id}/media", summary="The item's reviewer copy (JPEG); the view is audited",
             responses={200: {"content": {"image/jpeg": {}}}})
    def review_media(who: Reader, item_id: int) -> Response:
        item = context.queue.item(item_id)
        if item is None or item.media_status != "stored" or not item.media_key or context.media is None:
            raise ApiError(404, f"no stored media for review item {item_id}")
        data = context.media.get(item.media_key)
        if data is None:
            raise ApiError(404, f"no stored media for review item {item_id}")
        context.audit.add(who.actor.username, "media_view", item_id=item.id, event_id=item.event_id,
                          detail={"via": who.via, "token": who.token_name})
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})

    @api.post("/queue/next", response_model=ReviewItemOut | None,
              summary="Claim the next item the caller may take (null when there is none)")
    def claim_next(who: Writer, queue: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
                   ) -> ReviewItemOut | None:
        item = context.queue.next_item(who.actor, queues=[queue] if queue else None)
        return ReviewItemOut.of(item) if item is not None else None

    @api.post("/review-items/{item_id}/claim", response_model=ReviewItemOut, summary="Claim one item (a lease)")
    def claim(who: Writer, item_id: int) -> ReviewItemOut:
        return ReviewItemOut.of(context.queue.claim(item_id, who.actor))

    @api.post("/review-items/{item_id}/release", response_model=ReviewItemOut, summary="Give a claimed item back")
    def release(who: Writer, item_id: int) -> ReviewItemOut:
        if not context.queue.release(item_id, who.actor):
            raise ApiError(409, f"you do not hold review item {item_id}")
        return ReviewItemOut.of(context.queue.item(item_id))  # type: ignore[arg-type]

    @api.post("/review-items/{item_id}/decisions", response_model=DecisionOut, status_code=201,
              summary="Decide, override (leads) or escalate an item", responses={409: {"model": ErrorOut}})
    def decide(who: Writer, item_id: int, body: DecisionIn) -> DecisionOut:
        if body.kind == "decide":
            made = context.queue.decide(item_id, who.actor, body.categories, body.reason)
        elif body.kind == "override":
            made = context.queue.override(item_id, who.actor, body.categories, body.reason)
        else:
            made = context.queue.escalate(item_id, who.actor, body.reason)
        context.metrics.decided(made.kind.value, made.outcome.value)
        if made.kind.value != "escalate":
            context.notify_decision()
        return DecisionOut.of(made)

    @api.post("/decisions/bulk", response_model=BulkDecisionOut, summary="Decide many pending items at once")
    def decide_many(who: Writer, body: BulkDecisionIn) -> BulkDecisionOut:
        result = context.queue.decide_many(body.item_ids, who.actor, body.categories, body.reason)
        if result.decided:
            outcome = "violating" if any(body.categories.values()) else "not_violating"
            context.metrics.decided("decide", outcome, len(result.decided))
            context.notify_decision()
        return BulkDecisionOut(bulk_id=result.bulk_id, decided={str(k): v for k, v in result.decided.items()},
                               refused={str(k): v for k, v in result.refused.items()})

    @api.post("/review-items/{item_id}/appeal", response_model=ReviewItemOut,
              summary="Send a decided item back to review for another reviewer (leads)")
    def appeal(who: Writer, item_id: int, body: AppealIn) -> ReviewItemOut:
        if not who.actor.role.is_lead:
            raise ApiError(403, "appeals are registered by leads")
        return ReviewItemOut.of(context.queue.appeal(item_id, who.actor, body.reason))

    # -- decisions, policies, audit ------------------------------------------------------------------------

    @api.get("/decisions", response_model=DecisionPage, summary="Decisions, newest first, filtered")
    def decisions(
        who: Reader, reviewer: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        kind: Literal["decide", "override", "escalate"] | None = None,
        outcome: Literal["violating", "not_violating", "escalated"] | None = None,
        content_id: Text = None, since: Since = None, until: Until = None, limit: Limit = 100,
        cursor: Cursor = None,
    ) -> DecisionPage:
        since, until = _range(since, until)
        where = DecisionFilter(reviewer=reviewer, kind=kind, outcome=outcome, content_id=content_id,
                               since=since, until=until)
        rows = reads.decisions(where, limit=limit, before=before_of(cursor))
        return DecisionPage(items=[DecisionOut.of(d) for _, d in rows], next_cursor=_next(rows, limit))

    @api.get("/decisions/{decision_id}", response_model=DecisionOut, summary="One decision")
    def decision(who: Reader, decision_id: Annotated[str, Path(max_length=64)]) -> DecisionOut:
        found = context.queue.decision(decision_id)
        if found is None:
            raise ApiError(404, f"no decision {decision_id!r}")
        return DecisionOut.of(found)

    @api.get("/policies", response_model=list[PolicySummary], summary="Every stored policy, last in force first")
    def policy_list(who: Reader, limit: Limit = 100) -> list[PolicySummary]:
        return [PolicySummary.of(p) for p in policies.all(limit=limit)]

    @api.get("/policies/{policy_hash}", response_model=PolicyOut, summary="A stored policy's exact text")
    def policy(who: Reader, policy_hash: Annotated[str, Path(max_length=64)]) -> PolicyOut:
        stored = policies.get(policy_hash)
        if stored is None:
            raise ApiError(404, "no policy stored under that hash")
        return PolicyOut.of(stored)

    @api.get("/audit", response_model=AuditPage, summary="The audit log, newest first (leads)")
    def audit(
        who: Lead, actor: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        action: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
        item_id: Annotated[int | None, Query(ge=1)] = None, limit: Limit = 100, cursor: Cursor = None,
    ) -> AuditPage:
        entries = context.audit.entries(actor=actor, action=action, item_id=item_id,
                                        before_id=before_of(cursor), limit=limit)
        rows = [(e.id, e) for e in entries]
        return AuditPage(items=[AuditOut.of(e) for e in entries], next_cursor=_next(rows, limit))

    # -- search ------------------------------------------------------------------------------------------

    def found(kind: str, hits: list[Hit]) -> SearchOut:
        items = context.queue.item_ids_for_events([h.row.event_id for h in hits])
        return SearchOut(query=kind, index_size=_searcher().status.size, hits=[  # type: ignore[arg-type]
            SearchHitOut(rank=rank, score=round(hit.score, 4), verdict_id=hit.row.verdict_id,
                         event_id=hit.row.event_id, content_id=hit.row.content_id, source=hit.row.source,
                         flagged=hit.row.flagged, action=hit.row.action, top_category=hit.row.top_category,
                         created_at=hit.row.created_at, review_item_id=items.get(hit.row.event_id))
            for rank, hit in enumerate(hits, 1)
        ])

    def _searcher() -> ConsoleSearch:
        if context.search is None:
            raise ApiError(503, "search is off in this console (MODERATION_CONSOLE__SEARCH=false)")
        return context.search

    def searched(kind: str, run: Callable[[ConsoleSearch], list[Hit]]) -> SearchOut:
        try:
            return found(kind, run(_searcher()))
        except SearchUnavailable as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "10"}) from None
        except SearchNotFound as exc:
            raise ApiError(404, str(exc)) from None

    @api.get("/search", response_model=SearchOut, summary="Stored images nearest to a text, or like a stored item",
             responses={503: {"model": ErrorOut, "description": "The index is building, or search is off"}})
    def search(
        who: Reader, filters: SearchFilters, k: K = 10,
        text: Annotated[str | None, Query(min_length=1, max_length=500, description="What the images show")] = None,
        like: Annotated[str | None, Query(min_length=1, max_length=255, description="An event or content id")] = None,
    ) -> SearchOut:
        if (text is None) == (like is None):
            raise ApiError(422, "give exactly one of text and like", [
                Problem(parameter="text", message="give exactly one of text and like")])
        if text is not None:
            if not text.strip():
                raise ApiError(422, "text: empty", [Problem(parameter="text", message="empty")])
            return searched("text", lambda s: s.text(text, k, filters))
        return searched("like", lambda s: s.like(like, k, filters))  # type: ignore[arg-type]

    @api.post("/search/image", response_model=SearchOut, summary="Stored images nearest to an uploaded image",
              responses={503: {"model": ErrorOut, "description": "The index is building, or search is off"}})
    async def search_image(who: Reader, filters: SearchFilters, image: Annotated[UploadFile, File()],
                           k: K = 10) -> SearchOut:
        data = await read_upload(image, context.image_limits.max_bytes)
        try:
            return await run_in_threadpool(
                searched, "image", lambda s: s.image(data, k, filters, context.image_limits)
            )
        except ImageLoadError as exc:
            raise ApiError(422, f"image: {exc.reason}: {exc.detail}",
                           [Problem(parameter="image", message=f"{exc.reason}: {exc.detail}")]) from None

    return api


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes; ApiError 413 past `limit` (read no further than that)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"image: larger than {limit:,} bytes")
    if not data:
        raise ApiError(422, "image: empty", [Problem(parameter="image", message="empty")])
    return data


def _state(latest: Verdict, decisions: list[ReviewDecision]) -> str:
    """The content's state as moderation_v1_content_state words it: its latest decision (an escalation is
    not one) wins over the latest verdict."""
    decided = next((d for d in reversed(decisions) if d.kind is not DecisionKind.ESCALATE), None)
    if decided is not None and decided.outcome is Outcome.VIOLATING:
        return "removed"
    if decided is not None and decided.outcome is Outcome.NOT_VIOLATING:
        return "kept"
    if latest.status is VerdictStatus.ERROR:
        return "error"
    if latest.action in ("block", "escalate"):
        return "blocked"
    return "in_review" if latest.flagged else "allowed"
