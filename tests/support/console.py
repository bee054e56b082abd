"""The review console for tests: a context over a migrated database, accounts, and a logged-in client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import Engine
from starlette.testclient import TestClient

from consumers.console.app import ConsoleContext, create_app
from consumers.console.metrics import ConsoleMetrics
from consumers.console.security import Authenticator, LoginLimiter, TrustedProxies
from moderation.policy import LoadedPolicy
from moderation.review.values import Role
from moderation.storage import VerdictStore
from moderation.storage.accounts import Accounts
from moderation.storage.audit_log import AuditLog
from moderation.storage.review_queue import ReviewQueue
from moderation.storage.review_reads import ReviewReads
from moderation.verdict import Verdict

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class MemoryMedia:
    """Media by key from a dict: the HTTP tests' stand-in for the media store (its own tests are elsewhere)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.files.get(key)


def console_context(
    engine: Engine,
    *,
    media: object | None = None,
    policies: dict[str, LoadedPolicy] | None = None,
    trusted_proxies: str = "",
    attempts_per_minute: int = 5,
) -> ConsoleContext:
    accounts = Accounts(engine)
    queue = ReviewQueue(engine, lease=timedelta(minutes=10))
    return ConsoleContext(
        queue=queue, accounts=accounts, audit=AuditLog(engine), reads=ReviewReads(engine),
        verdicts=VerdictStore(engine),
        authenticator=Authenticator(accounts, TrustedProxies(trusted_proxies), "X-Forwarded-User"),
        limiter=LoginLimiter(attempts_per_minute), metrics=ConsoleMetrics(queue.pending_counts),
        media=media, policies=lambda: dict(policies or {}),  # type: ignore[arg-type]
    )


def add_user(context: ConsoleContext, name: str, role: Role = Role.REVIEWER, password: str | None = PASSWORD) -> None:
    context.accounts.add(name, password, role, by="test")


def client(context: ConsoleContext, address: str = "127.0.0.1") -> TestClient:
    # https: the session cookie is Secure, and a client only sends it back over https.
    return TestClient(create_app(context), base_url="https://testserver", follow_redirects=False,
                      client=(address, 40000))


def log_in(browser: TestClient, name: str, password: str = PASSWORD) -> TestClient:
    form = browser.get("/login")
    token = CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    answer = browser.post("/login", data={"username": name, "password": password, "csrf": token, "next": "/queue"})
    assert answer.status_code == 303, answer.text
    return browser


def csrf_of(browser: TestClient, path: str = "/items") -> str:
    return CSRF.search(browser.get(path).text).group(1)  # type: ignore[union-attr]


@contextmanager
def logged_in(context: ConsoleContext, name: str, role: Role = Role.REVIEWER) -> Iterator[TestClient]:
    if context.accounts.get(name) is None:
        add_user(context, name, role)
    with client(context) as browser:
        yield log_in(browser, name)


def flagged(event_id: str, content_id: str | None = None, **changes: object) -> Verdict:
    from tests.integration.test_storage import make_verdict

    verdict = make_verdict(event_id, **changes)
    return replace(verdict, content_id=content_id) if content_id else verdict
