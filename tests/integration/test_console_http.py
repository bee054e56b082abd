"""The review console over HTTP (consumers/console/), on SQLite and PostgreSQL: access, CSRF, escaping,
headers, the decide flow, roles, filters. The browser tests (test_console_browser.py) drive the same app."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from moderation.review.values import Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import review_audit_table, review_decisions_table
from moderation.verdict import MediaStatus, ReviewMedia
from tests.support.console import (
    CSRF,
    PASSWORD,
    MemoryMedia,
    add_user,
    client,
    console_context,
    csrf_of,
    flagged,
    logged_in,
)

HOSTILE = '<img src=x onerror=alert(1)>'
PAGES = ["/", "/queue", "/items", "/items/1", "/stats", "/audit", "/items?status=pending"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def media() -> MemoryMedia:
    return MemoryMedia()


@pytest.fixture
def context(engine: Engine, media: MemoryMedia):  # noqa: ANN201 - a ConsoleContext
    return console_context(engine, media=media, trusted_proxies="10.0.0.0/8")


def audit_actions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(review_audit_table.c.action).order_by(review_audit_table.c.id)).scalars())


def test_nothing_answers_without_a_session(context, engine: Engine, media: MemoryMedia) -> None:
    media.files["k"] = b"\xff\xd8jpeg"
    VerdictStore(engine).save_batch([flagged("e1", media=ReviewMedia(MediaStatus.STORED, key="k", width=4, height=4))])
    with client(context) as anonymous:
        for path in PAGES:
            answer = anonymous.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), path
        assert anonymous.get("/media/1").status_code == 401
        for path in ("/items/1/decide", "/items/1/claim", "/items/bulk", "/preferences", "/logout"):
            assert anonymous.post(path, data={"csrf": "x"}).status_code == 401, path
        # A forged cookie is no session either.
        anonymous.cookies.set("moderation_session", "forged")
        assert anonymous.get("/media/1").status_code == 401


def test_login_sets_a_strict_cookie_and_wrong_passwords_are_limited(context, engine: Engine) -> None:
    add_user(context, "alice")
    with client(context) as browser:
        token = CSRF.search(browser.get("/login").text).group(1)
        for _ in range(5):
            wrong = browser.post("/login", data={"username": "alice", "password": "nope", "csrf": token})
            assert wrong.status_code == 401 and "wrong name or password" in wrong.text
            token = CSRF.search(wrong.text).group(1)
        limited = browser.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": token})
        assert limited.status_code == 429
    assert audit_actions(engine).count("login_failed") == 5
    with client(context, address="127.0.0.2") as other:
        token = CSRF.search(other.get("/login").text).group(1)
        answer = other.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": token, "next": "/stats"})
        assert answer.status_code == 303 and answer.headers["location"] == "/stats"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
        assert other.get("/stats").status_code == 200
        # An open redirect is not possible through `next`.
        token = CSRF.search(other.get("/login").text).group(1)
        away = other.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": token,
                                          "next": "//evil.example/x"})
        assert away.headers["location"] == "/queue"


def test_the_login_form_needs_its_token(context) -> None:
    add_user(context, "alice")
    with client(context) as browser:
        browser.get("/login")
        assert browser.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403


def test_a_post_without_the_csrf_token_is_refused(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1")])
    with logged_in(context, "alice") as browser:
        assert browser.get("/queue").status_code == 303  # claims item 1
        form = {"category": ["violence", "safe"], "violating": ["violence"], "reason": "violent", "then": "stay"}
        assert browser.post("/items/1/decide", data=form).status_code == 403
        assert browser.post("/items/1/decide", data={**form, "csrf": "wrong"}).status_code == 403
        with engine.connect() as conn:
            assert conn.execute(select(review_decisions_table)).first() is None
        answer = browser.post("/items/1/decide", data={**form, "csrf": csrf_of(browser)})
        assert answer.status_code == 303
        with engine.connect() as conn:
            assert conn.execute(select(review_decisions_table.c.outcome)).scalar_one() == "violating"


def test_untrusted_text_is_escaped_and_no_inline_script_is_served(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([
        flagged("e1", content_id=HOSTILE, source=HOSTILE[:100], best_prompt=HOSTILE, image_ref=f"https://x/{HOSTILE}")
    ])
    with logged_in(context, "alice") as browser:
        browser.get("/queue")
        for path in ("/items/1", "/items", f"/items?source={HOSTILE[:100]}"):
            html = browser.get(path).text
            assert HOSTILE not in html, path
            assert "&lt;img src=x onerror=alert(1)&gt;" in html, path
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # every script is a file
            assert " on" + "error=" not in html.replace("onerror=alert", "")  # no handler attributes
        answer = browser.get("/items/1")
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
        assert answer.headers["x-frame-options"] == "DENY" and answer.headers["x-content-type-options"] == "nosniff"


def test_submit_and_next_records_the_decision_audit_and_moves_on(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1"), flagged("e2", action="review")])
    with logged_in(context, "alice") as browser:
        assert browser.get("/queue").headers["location"] == "/items/1"
        page = browser.get("/items/1").text
        assert "Submit &amp; next" in page and "violence" in page and "Ctrl</kbd>+<kbd>Enter" in page
        answer = browser.post("/items/1/decide", data={
            "csrf": csrf_of(browser), "category": ["violence", "safe"], "violating": ["violence"],
            "reason": "a weapon", "then": "next",
        })
        assert answer.status_code == 303 and answer.headers["location"] == "/queue"
        assert browser.get("/queue").headers["location"] == "/items/2"
        assert "a weapon" in browser.get("/items/1").text  # the history shows the decision
    assert audit_actions(engine) == ["user_add", "login", "claim", "decide", "claim"]


def test_media_is_served_only_through_the_console_and_each_view_is_audited(
    context, engine: Engine, media: MemoryMedia
) -> None:
    media.files["ab/cd/x.jpg"] = b"\xff\xd8\xff\xe0jpeg bytes"
    VerdictStore(engine).save_batch([
        flagged("e1", media=ReviewMedia(MediaStatus.STORED, key="ab/cd/x.jpg", width=10, height=10)),
        flagged("e2", media=ReviewMedia(MediaStatus.WITHHELD)),
    ])
    with logged_in(context, "alice") as browser:
        answer = browser.get("/media/1")
        assert answer.status_code == 200 and answer.content == media.files["ab/cd/x.jpg"]
        assert answer.headers["content-type"] == "image/jpeg" and "no-store" in answer.headers["cache-control"]
        assert browser.get("/media/2").status_code == 404  # withheld: there is nothing to serve
        assert "forbids retaining" in browser.get("/items/2").text
    assert audit_actions(engine).count("media_view") == 1


def test_roles_limit_the_audit_log_overrides_and_appeals(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1")])
    with logged_in(context, "alice") as reviewer:
        assert reviewer.get("/audit").status_code == 403
        reviewer.get("/queue")
        reviewer.post("/items/1/decide", data={"csrf": csrf_of(reviewer), "category": ["violence"],
                                              "violating": ["violence"], "reason": "violent", "then": "stay"})
        token = csrf_of(reviewer)
        refused = reviewer.post("/items/1/override", data={"csrf": token, "category": ["violence"], "reason": "x"})
        assert refused.status_code == 403
        assert reviewer.post("/items/1/appeal", data={"csrf": token, "reason": "x"}).status_code == 403
    with logged_in(context, "lena", Role.LEAD) as lead:
        assert "decide" in lead.get("/audit").text
        token = csrf_of(lead)
        assert lead.post("/items/1/override", data={"csrf": token, "category": ["violence"],
                                                   "reason": "a film still"}).status_code == 303
        assert lead.post("/items/1/appeal", data={"csrf": token, "reason": "the uploader asks"}).status_code == 303
        assert "appeals" in lead.get("/items/1").text


def test_a_trusted_proxy_names_the_user_and_an_untrusted_one_does_not(context) -> None:
    add_user(context, "pat", Role.LEAD, password=None)
    with client(context, address="10.1.2.3") as via_proxy:
        answer = via_proxy.get("/stats", headers={"X-Forwarded-User": "pat"})
        assert answer.status_code == 200 and "pat (lead)" in answer.text
        assert via_proxy.get("/stats", headers={"X-Forwarded-User": "nobody"}).status_code == 303
    with client(context, address="192.168.1.9") as direct:
        assert direct.get("/stats", headers={"X-Forwarded-User": "pat"}).status_code == 303
    with client(context) as browser:  # a proxy-only account has no password to log in with
        token = CSRF.search(browser.get("/login").text).group(1)
        assert browser.post("/login", data={"username": "pat", "password": PASSWORD, "csrf": token}).status_code == 401


def test_a_disabled_account_is_logged_out_at_once(context) -> None:
    with logged_in(context, "alice") as browser:
        assert browser.get("/stats").status_code == 200
        context.accounts.disable("alice", by="test")
        assert browser.get("/stats").status_code == 303


def test_list_filters_are_validated_and_metacharacters_are_harmless(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1"), flagged("e2", source="other")])
    with logged_in(context, "alice") as browser:
        assert browser.get("/items?reason=maybe").status_code == 422
        assert browser.get("/items?since=yesterday").status_code == 422
        assert browser.get("/items?before=1;DROP").status_code == 422
        sneaky = browser.get("/items", params={"source": "x' OR '1'='1", "category": "%"})
        assert sneaky.status_code == 200 and "No items match" in sneaky.text
        only = browser.get("/items", params={"source": "other"}).text
        assert "content-e2" in only and "content-e1" not in only
    assert VerdictStore(engine).count() == 2


def test_a_bulk_decision_is_one_audit_row(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged(f"e{i}") for i in range(3)])
    with logged_in(context, "lena", Role.LEAD) as lead:
        answer = lead.post("/items/bulk", data={"csrf": csrf_of(lead), "item": ["1", "2", "3"],
                                               "category": ["violence"], "reason": "a meme wave"})
        assert answer.status_code == 200 and "3 decided" in answer.text
    assert audit_actions(engine).count("bulk_decide") == 1 and "decide" not in audit_actions(engine)


def test_the_stats_page_shows_queues_precision_and_reviewers(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1"), flagged("e2"), flagged("e3", action="review")])
    with logged_in(context, "alice") as browser:
        for violating in (["violence"], []):
            browser.get("/queue")
            item = browser.get("/queue").headers["location"].split("/")[-1]
            browser.post(f"/items/{item}/decide", data={"csrf": csrf_of(browser), "category": ["violence"],
                                                        "violating": violating, "reason": "seen", "then": "stay"})
        html = browser.get("/stats").text
    assert re.search(r"<td>violence</td><td class=\"num\">1</td>", html)  # one still waiting
    precision = r"<td>violence</td><td class=\"num\">2</td><td class=\"num\">1</td>\s*<td class=\"num\">0.50"
    assert re.search(precision, html)
    assert "<td>alice</td>" in html and "<svg" in html


def test_behind_a_trusted_proxy_login_limits_count_per_forwarded_address(context) -> None:
    add_user(context, "alice")
    with client(context, address="10.0.0.7") as ingress:
        def attempt(forwarded_for: str, password: str = "nope") -> int:
            token = CSRF.search(ingress.get("/login").text).group(1)
            return ingress.post("/login", data={"username": "alice", "password": password, "csrf": token},
                                headers={"X-Forwarded-For": forwarded_for}).status_code

        assert [attempt("203.0.113.9") for _ in range(6)] == [401] * 5 + [429]
        assert attempt("198.51.100.4", PASSWORD) == 303  # another reviewer behind the same ingress
    with client(context, address="192.168.3.3") as direct:  # an untrusted peer cannot pick its address
        token = CSRF.search(direct.get("/login").text).group(1)
        for _ in range(5):
            direct.post("/login", data={"username": "alice", "password": "nope", "csrf": token},
                        headers={"X-Forwarded-For": "1.2.3.4"})
            token = CSRF.search(direct.get("/login").text).group(1)
        blocked = direct.post("/login", data={"username": "alice", "password": PASSWORD, "csrf": token},
                              headers={"X-Forwarded-For": "5.6.7.8"})
        assert blocked.status_code == 429


def test_a_proxy_user_gets_one_session_cookie_even_from_a_redirect(context, engine: Engine) -> None:
    add_user(context, "pat", Role.REVIEWER, password=None)
    VerdictStore(engine).save_batch([flagged("e1")])
    with client(context, address="10.9.9.9") as via_proxy:
        first = via_proxy.get("/queue", headers={"X-Forwarded-User": "pat"})
        assert first.status_code == 303 and "moderation_session=" in first.headers["set-cookie"]
        again = via_proxy.get(first.headers["location"], headers={"X-Forwarded-User": "pat"})
        assert again.status_code == 200 and "set-cookie" not in again.headers  # the cookie's session is reused
    assert audit_actions(engine).count("login") == 1
