"""Who is asking, and may they: sessions from cookies or a trusted proxy, CSRF tokens, login rate limits,
and the headers every response carries.

Nothing in the console answers without a session (the stylesheet and the script, the same for everyone,
are the one exception: the login page needs them). Built-in accounts log in with a password and get a
server-side session (an HttpOnly, Secure, SameSite=Strict cookie holding a random token). Behind an
authenticating proxy, the proxy's identity header is believed only when the request comes from one of
the configured proxy addresses; the named account must exist and be enabled (the proxy authenticates,
the console keeps the roles). Every state-changing request carries the session's CSRF token.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response

from moderation.storage.accounts import Accounts, Session

SESSION_COOKIE = "moderation_session"
LOGIN_COOKIE = "moderation_login"  # the login form's own CSRF token (double submit): no session exists yet
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class NotLoggedIn(Exception):  # noqa: N818 - a control-flow signal the app turns into a redirect or a 401
    """The request has no live session."""


class Forbidden(Exception):  # noqa: N818
    """The session's role does not allow this, or its CSRF token is missing or wrong."""


class TrustedProxies:
    """The addresses whose identity header is believed (exact addresses or CIDR networks)."""

    def __init__(self, spec: str) -> None:
        self.networks = [ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()]

    def __contains__(self, host: str | None) -> bool:
        if not host or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class LoginLimiter:
    """At most `per_minute` failed logins per (address, name) and five times that per address, per minute."""

    def __init__(self, per_minute: int, clock: callable = time.monotonic) -> None:  # type: ignore[valid-type]
        self.per_minute = per_minute
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def allowed(self, address: str, username: str) -> bool:
        with self._lock:
            now = self._clock()
            by_name = self._recent(("name", f"{address}\x00{username}"), now)
            by_address = self._recent(("address", address), now)
            return len(by_name) < self.per_minute and len(by_address) < self.per_minute * 5

    def failed(self, address: str, username: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent(("name", f"{address}\x00{username}"), now).append(now)
            self._recent(("address", address), now).append(now)
            if len(self._failures) > 100_000:  # a flood of names: forget the quiet ones
                for key in [k for k, v in self._failures.items() if not v]:
                    del self._failures[key]

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > 60.0:
            times.popleft()
        return times


@dataclass
class Authenticator:
    accounts: Accounts
    proxies: TrustedProxies
    identity_header: str

    def session(self, request: Request) -> tuple[Session | None, str | None]:
        """The request's session, and a new cookie token when a proxy login just started one."""
        token = request.cookies.get(SESSION_COOKIE)
        session = self.accounts.session(token)
        client = request.client.host if request.client else None
        named = request.headers.get(self.identity_header) if client in self.proxies else None
        if named is None:
            return session, None
        if session is not None and session.actor.username == named:
            return session, None
        actor = self.accounts.proxy_actor(named.strip().lower())
        if actor is None:
            return None, None
        new_token, started = self.accounts.start_session(actor)
        return started, new_token


def client_address(request: Request, proxies: TrustedProxies) -> str:
    """Who is really asking: behind a trusted proxy (an ingress), the last address it appended to
    X-Forwarded-For; otherwise the connecting address. Login limits count per this address, so reviewers
    behind one ingress do not share a single allowance (nor can one of them exhaust it for all)."""
    peer = request.client.host if request.client else "?"
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and peer in proxies:
        last = forwarded.split(",")[-1].strip()
        if last:
            return last[:64]
    return peer


def set_session_cookie(response: Response, token: str, max_age_s: int) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age_s, httponly=True, secure=True, samesite="strict", path="/"
    )


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and secrets.compare_digest(str(given), str(expected))
