"""The review console's web application: one FastAPI app, server-rendered Jinja2 pages, a little script.

`create_app(context)` wires the routers (login and media here; the queue and item pages in
`review_routes`; lists, bulk decisions, stats and the audit log in `list_routes`) over a `ConsoleContext`:
the stores it reads and writes, the policies it explains scores with, the media store it serves images
from, and the publisher that sends decisions to the decisions topic. The pages are thin: every rule
(claims, roles, required reasons) is enforced by the stores in moderation/storage/, not by the HTML.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from consumers.console.metrics import ConsoleMetrics
from consumers.console.search import ConsoleSearch
from consumers.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SECURITY_HEADERS,
    Authenticator,
    Forbidden,
    LoginLimiter,
    NotLoggedIn,
    client_address,
    new_login_token,
    same_token,
    set_session_cookie,
)
from moderation.policy import LoadedPolicy
from moderation.review.values import ReviewError
from moderation.settings import ImageSettings
from moderation.storage import StorageError, VerdictStore
from moderation.storage.accounts import Accounts, Session
from moderation.storage.audit_log import AuditLog
from moderation.storage.review_queue import ReviewQueue
from moderation.storage.review_reads import ReviewReads

log = structlog.get_logger("moderation.console")
HERE = Path(__file__).parent
_ERROR_STATUS = {ReviewError.NOT_FOUND: 404, ReviewError.CONFLICT: 409, ReviewError.FORBIDDEN: 403,
                 ReviewError.INVALID: 422}


class MediaReader(Protocol):
    """What the console needs of a media store: the bytes under a key (None when absent)."""

    def get(self, key: str) -> bytes | None: ...


@dataclass
class ConsoleContext:
    queue: ReviewQueue
    accounts: Accounts
    audit: AuditLog
    reads: ReviewReads
    verdicts: VerdictStore
    authenticator: Authenticator
    limiter: LoginLimiter
    metrics: ConsoleMetrics
    media: MediaReader | None = None
    policies: Callable[[], dict[str, LoadedPolicy]] = dict  # policy hash -> policy, as the files say now
    notify_decision: Callable[[], None] = lambda: None  # wakes the decisions publisher
    session_ttl: timedelta = timedelta(hours=12)
    search: ConsoleSearch | None = None  # None: search is off
    image_limits: ImageSettings = field(default_factory=ImageSettings)  # for uploaded query images
    extra: dict[str, Any] = field(default_factory=dict)


def templates() -> Environment:
    # Autoescape everything: content ids, sources, prompts and reasons come from outside.
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True, default_for_string=True)
    )
    environment.filters["age"] = age
    return environment


def age(seconds: float) -> str:
    """A waiting time as people read it: 40 s, 12 min, 3.5 h, 2.1 days."""
    if seconds < 90:
        return f"{max(0, int(seconds))} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def create_app(context: ConsoleContext) -> FastAPI:
    from consumers.console import list_routes, review_routes, search_routes
    from consumers.console.api import PREFIX, create_api

    app = FastAPI(title="moderation review console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = context
    app.state.templates = templates()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(review_routes.router)
    app.include_router(list_routes.router)
    app.include_router(search_routes.router)
    app.mount(PREFIX, create_api(context))

    @app.middleware("http")
    async def headers_and_metrics(request: Request, call_next: Callable[..., Any]) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        token = getattr(request.state, "new_session_token", None)
        if token and "set-cookie" not in response.headers:  # a trusted proxy's user: one session, not one a request
            set_session_cookie(response, token, int(context.session_ttl.total_seconds()))
        route = request.scope.get("route")
        path = getattr(route, "path", None)
        path = request.scope.get("root_path", "") + path if path else "unmatched"
        elapsed = time.perf_counter() - started
        context.metrics.request(request.method, path, response.status_code, elapsed)
        log.info("request", method=request.method, path=path, status=response.status_code,
                 ms=round(elapsed * 1000, 1), user=getattr(request.state, "user", None))
        return response

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        if request.method == "GET" and not request.url.path.startswith(("/media/", "/api/")):
            target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
            return RedirectResponse(f"/login?next={target}", status_code=303)
        return JSONResponse({"error": "not logged in"}, status_code=401)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return page(request, "error.html", {"title": "Not allowed", "message": str(exc)}, status=403)

    @app.exception_handler(ReviewError)
    async def review_error(request: Request, exc: ReviewError) -> Response:
        return page(request, "error.html", {"title": "Not done", "message": str(exc)},
                    status=_ERROR_STATUS.get(exc.code, 400))

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        log.error("database error", error=str(exc))
        return page(request, "error.html", {"title": "Database unavailable", "message": "try again shortly"},
                    status=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return page(request, "error.html", {"title": str(exc.status_code), "message": str(exc.detail)},
                    status=exc.status_code)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/queue") -> Response:  # noqa: A002 - the query parameter's name
        token = new_login_token()
        response = page(request, "login.html", {"login_token": token, "next": safe_next(next), "error": None})
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, secure=True, samesite="strict", max_age=3600)
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        username = str(form.get("username", "")).strip().lower()[:64]
        password = str(form.get("password", ""))[:1024]
        target = safe_next(str(form.get("next", "/queue")))
        if not same_token(str(form.get(CSRF_FIELD, "")), request.cookies.get(LOGIN_COOKIE)):
            raise Forbidden("the login form expired: reload the page and try again")
        address = client_address(request, context.authenticator.proxies)
        if not context.limiter.allowed(address, username):
            context.audit.add(username or "?", "login_limited", detail={"address": address})
            return _login_again(request, target, "too many failed logins: wait a minute", 429)
        actor = context.accounts.authenticate(username, password)
        if actor is None:
            context.limiter.failed(address, username)
            context.audit.add(username or "?", "login_failed", detail={"address": address})
            return _login_again(request, target, "wrong name or password", 401)
        token, _ = context.accounts.start_session(actor)
        response = RedirectResponse(target, status_code=303)
        set_session_cookie(response, token, int(context.session_ttl.total_seconds()))
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session = await checked(request)
        token = request.cookies.get("moderation_session")
        if token:
            context.accounts.end_session(token)
        context.audit.add(session.actor.username, "logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie("moderation_session")
        return response

    @app.get("/")
    def home(request: Request) -> Response:
        viewer(request)
        return RedirectResponse("/queue", status_code=303)

    @app.post("/preferences")
    async def preferences(request: Request) -> Response:
        session = await checked(request)
        form = await request.form()
        changes = {name: str(form.get(name)) == "true" for name in ("blur", "grayscale") if name in form}
        return JSONResponse(context.accounts.set_preferences(session.actor.username, changes))

    @app.get("/media/{item_id}")
    def media(request: Request, item_id: int) -> Response:
        session = viewer(request)
        item = context.queue.item(item_id)
        if item is None or item.media_status != "stored" or not item.media_key or context.media is None:
            return Response(b"no media", status_code=404, media_type="text/plain")
        data = context.media.get(item.media_key)
        if data is None:
            return Response(b"no media", status_code=404, media_type="text/plain")
        context.audit.add(session.actor.username, "media_view", item_id=item.id, event_id=item.event_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})

    return app


def viewer(request: Request) -> Session:
    """The request's session, or NotLoggedIn (a redirect to the login page, or a 401)."""
    context: ConsoleContext = request.app.state.ctx
    session, new_token = context.authenticator.session(request)
    if session is None:
        raise NotLoggedIn()
    request.state.user = session.actor.username
    if new_token is not None:
        request.state.new_session_token = new_token
    return session


async def checked(request: Request) -> Session:
    """`viewer` for a state-changing request: its CSRF token (form field or header) must be the session's."""
    session = viewer(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        form = await request.form()
        given = str(form.get(CSRF_FIELD, "")) or None
    if not same_token(given, session.csrf_token):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")
    return session


def lead(session: Session) -> Session:
    if not session.actor.role.is_lead:
        raise Forbidden("this page is for leads")
    return session


def page(request: Request, name: str, values: dict[str, Any], status: int = 200) -> HTMLResponse:
    """Render a template with what every page shows (the user, the CSRF token, the preferences)."""
    values = dict(values)
    session: Session | None = values.pop("session", None)
    html = request.app.state.templates.get_template(name).render(
        request=request, session=session, csrf=session.csrf_token if session else "",
        preferences=session.preferences if session else {}, **values,
    )
    return HTMLResponse(html, status_code=status)


def safe_next(target: str) -> str:
    """Only paths on this site: never an open redirect to another host."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or "\n" in target or "\r" in target:
        return "/queue"
    return target


def _login_again(request: Request, target: str, error: str, status: int) -> Response:
    token = new_login_token()
    response = page(request, "login.html", {"login_token": token, "next": target, "error": error}, status=status)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, secure=True, samesite="strict", max_age=3600)
    return response
