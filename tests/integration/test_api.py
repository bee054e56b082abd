"""The JSON read API (/api/v1, consumers/console/api.py) on SQLite and PostgreSQL: tokens and roles on
every endpoint, filters and keyset pages, validation, the whole history of a content id against the v1
views, counts against the hourly view, and decisions written through it with their audit and outbox."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from starlette.testclient import TestClient

from consumers.console.api import ReasonName
from consumers.console.security import CSRF_HEADER as CSRF_HEADER_NAME
from moderation.review.routing import ReviewReason
from moderation.review.values import Role
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.api_tokens import ApiTokens, Scope
from moderation.storage.models import api_tokens_table, review_audit_table, verdicts_table
from moderation.verdict import MediaStatus, ReviewMedia
from tests.integration.test_storage import make_error_verdict
from tests.support.console import MemoryMedia, add_user, client, console_context, csrf_of, flagged
from tests.support.console import logged_in as session_of

API = "/api/v1"
HOSTILE = "x' OR '1'='1'; DROP TABLE verdicts; --"


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
    return console_context(engine, media=media)


def token_for(context: Any, name: str, role: Role = Role.REVIEWER, scope: Scope = Scope.READ) -> dict[str, str]:
    if context.accounts.get(name) is None:
        add_user(context, name, role, password=None)
    secret, _ = ApiTokens(context.verdicts.engine).create(f"{name}-{scope.value}", name, scope, by="test")
    return {"Authorization": f"Bearer {secret}"}


def concrete(path: str) -> str:
    """An OpenAPI path with its parameters filled in."""
    return re.sub(r"\{[^}]+\}", "1", path)


def endpoints(api: TestClient, headers: dict[str, str]) -> list[tuple[str, str]]:
    document = api.get(f"{API}/openapi.json", headers=headers).json()
    return [(method.upper(), API + path) for path, methods in document["paths"].items() for method in methods]


def test_nothing_answers_without_a_valid_token(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1")])
    reader = token_for(context, "svc")
    with client(context) as api:
        routes = endpoints(api, reader)
        assert len(routes) >= 19
        assert ("GET", f"{API}/verdicts") in routes
        assert ("POST", f"{API}/review-items/{{item_id}}/decisions") in routes
        revoked = token_for(context, "gone")
        ApiTokens(engine).revoke(ApiTokens(engine).all()[-1].id, by="test")
        expired = token_for(context, "late")
        with engine.begin() as conn:
            conn.execute(update(api_tokens_table).where(api_tokens_table.c.username == "late")
                         .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        disabled = token_for(context, "off")
        context.accounts.disable("off", by="test")
        for headers in ({}, revoked, expired, disabled, {"Authorization": "Bearer mdt_forged"},
                        {"Authorization": "Basic c3ZjOnN2Yw=="}, {"Authorization": reader["Authorization"] + "x"}):
            for method, path in [*routes, ("GET", f"{API}/openapi.json")]:
                answer = api.request(method, concrete(path), headers=headers, json={"reason": "r"})
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
        # An unknown parameter is no way to learn the parameters either.
        assert api.get(f"{API}/verdicts?sorce=x").status_code == 401


def test_a_read_token_reads_everything_and_writes_nothing(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1")])
    reader = token_for(context, "svc", Role.ADMIN, Scope.READ)  # even an admin's read token
    with client(context) as api:
        for method, path in endpoints(api, reader):
            answer = api.request(method, concrete(path), headers=reader, json={"reason": "r", "kind": "decide"})
            if path in (f"{API}/search", f"{API}/search/image"):  # reads, one by POST; no query given here
                assert answer.status_code == 422, (path, answer.text)
            elif method == "GET":
                assert answer.status_code in (200, 404), (path, answer.text)
            else:
                assert answer.status_code == 403 and "scope is read" in answer.json()["error"], (path, answer.text)
    with engine.connect() as conn:
        actions = set(conn.execute(select(review_audit_table.c.action)).scalars())
    assert "claim" not in actions and "decide" not in actions


def test_roles_bound_what_a_write_token_may_do(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1")])
    reviewer = token_for(context, "bot", Role.REVIEWER, Scope.WRITE)
    leader = token_for(context, "boss", Role.LEAD, Scope.WRITE)
    with client(context) as api:
        assert api.get(f"{API}/audit", headers=reviewer).status_code == 403
        assert api.post(f"{API}/review-items/1/claim", headers=reviewer).status_code == 200
        made = api.post(f"{API}/review-items/1/decisions", headers=reviewer,
                        json={"categories": {"violence": True}, "reason": "clearly violent"})
        assert made.status_code == 201, made.text
        override = {"kind": "override", "categories": {"violence": False}, "reason": "a film still"}
        assert api.post(f"{API}/review-items/1/decisions", headers=reviewer, json=override).status_code == 403
        appeal = {"reason": "the user appealed"}
        assert api.post(f"{API}/review-items/1/appeal", headers=reviewer, json=appeal).status_code == 403
        overridden = api.post(f"{API}/review-items/1/decisions", headers=leader, json=override)
        assert overridden.status_code == 201
        assert overridden.json()["previous_decision_id"] == made.json()["decision_id"]
        assert api.post(f"{API}/review-items/1/appeal", headers=leader, json=appeal).status_code == 200
        audit = api.get(f"{API}/audit", headers=leader).json()["items"]
        assert [e["action"] for e in audit][:4] == ["appeal", "override", "decide", "claim"]
        assert audit[2]["actor"] == "bot" and audit[2]["detail"]["reason"] == "clearly violent"


def test_decisions_through_the_api_are_the_consoles(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1"), flagged("e2")])
    writer = token_for(context, "bot", Role.REVIEWER, Scope.WRITE)
    with client(context) as api:
        decision = {"categories": {"violence": True}, "reason": "violent"}
        unclaimed = api.post(f"{API}/review-items/1/decisions", headers=writer, json=decision)
        assert unclaimed.status_code == 409 and "claim item 1 first" in unclaimed.json()["error"]
        claimed = api.post(f"{API}/queue/next", headers=writer).json()
        assert claimed["id"] == 1 and claimed["claimed_by"] == "bot"
        assert api.post(f"{API}/review-items/1/decisions", headers=writer,
                        json={"categories": {"violence": True}}).status_code == 422  # the reason is required
        assert api.post(f"{API}/review-items/1/decisions", headers=writer,
                        json={**decision, "categories": {"nope": True}}).status_code == 422
        made = api.post(f"{API}/review-items/1/decisions", headers=writer, json=decision)
        assert made.status_code == 201 and made.json()["outcome"] == "violating"
        again = api.post(f"{API}/review-items/1/decisions", headers=writer, json=decision)
        assert again.status_code == 409
        listed = api.get(f"{API}/decisions?reviewer=bot", headers=writer).json()["items"]
        assert [d["decision_id"] for d in listed] == [made.json()["decision_id"]]
        one = api.get(f"{API}/decisions/{made.json()['decision_id']}", headers=writer).json()
        assert one["reviewer"] == "bot" and one["categories"] == {"violence": True}
    # The decision waits in the outbox for the decisions topic, and feeds the outcome store.
    assert [d.decision_id for d, _, _ in context.queue.unpublished()] == [made.json()["decision_id"]]
    from moderation.storage.review_decisions import OutcomeStore

    assert OutcomeStore(engine).get("e1").outcome == "confirmed"  # type: ignore[union-attr]


def test_a_bulk_decision_leaves_held_items_alone_with_one_audit_row(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged(f"e{i}") for i in range(1, 5)])
    writer = token_for(context, "bot", Role.LEAD, Scope.WRITE)
    other = token_for(context, "ann", Role.REVIEWER, Scope.WRITE)
    with client(context) as api:
        assert api.post(f"{API}/review-items/2/claim", headers=other).status_code == 200
        answer = api.post(f"{API}/decisions/bulk", headers=writer,
                          json={"item_ids": [1, 2, 3], "categories": {"violence": True}, "reason": "one campaign"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body["decided"]) == {"1", "3"} and "claimed" in body["refused"]["2"]
        assert api.post(f"{API}/decisions/bulk", headers=writer,
                        json={"item_ids": [], "categories": {}, "reason": "x"}).status_code == 422
    with engine.connect() as conn:
        bulk = conn.execute(select(review_audit_table).where(review_audit_table.c.action == "bulk_decide")).one()
    assert bulk.actor == "bot" and bulk.detail["bulk_id"] == body["bulk_id"]


def test_a_session_may_call_the_api_but_writes_need_its_csrf_token(context, engine: Engine) -> None:
    VerdictStore(engine).save_batch([flagged("e1")])
    with session_of(context, "alice") as browser:
        assert browser.get(f"{API}/whoami").json() == {
            "username": "alice", "role": "reviewer", "scope": "write", "via": "session", "token_name": None}
        assert browser.post(f"{API}/review-items/1/claim").status_code == 403
        token = csrf_of(browser)
        assert browser.post(f"{API}/review-items/1/claim", headers={CSRF_HEADER_NAME: "wrong"}).status_code == 403
        assert browser.post(f"{API}/review-items/1/claim", headers={CSRF_HEADER_NAME: token}).status_code == 200


def test_verdicts_filter_and_page_newest_first(context, engine: Engine) -> None:
    store = VerdictStore(engine)
    verdicts = []
    for i in range(230):
        verdicts.append(flagged(
            f"e{i:03d}", content_id=f"c{i % 50}", source=("app", "web", "api")[i % 3],
            top_category=("violence", "nsfw")[i % 2], action=("block", "review")[i % 2], uncertain=i % 5 == 0,
        ))
    verdicts.append(flagged("clean", flagged=False, top_category="violence", action="allow"))
    verdicts.append(make_error_verdict("broken"))
    for start in range(0, len(verdicts), 50):
        store.save_batch(verdicts[start:start + 50])
    reader = token_for(context, "svc")
    with client(context) as api:
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            page = api.get(f"{API}/verdicts", headers=reader,
                           params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
            seen += [v["event_id"] for v in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 232
        assert seen[0] == "broken" and seen[-1] == "e000"  # newest first, across pages

        def ids(**params: Any) -> set[str]:
            answer = api.get(f"{API}/verdicts", headers=reader, params={"limit": 500, **params})
            assert answer.status_code == 200, answer.text
            return {v["event_id"] for v in answer.json()["items"]}

        assert ids(source="web") == {f"e{i:03d}" for i in range(230) if i % 3 == 1}
        # A category is the flagged category: the clean image's top category "violence" is no finding.
        assert ids(category="violence") == {f"e{i:03d}" for i in range(230) if i % 2 == 0}
        assert ids(category="nsfw", source="app", uncertain="true") == {
            f"e{i:03d}" for i in range(230) if i % 2 == 1 and i % 3 == 0 and i % 5 == 0}
        assert ids(status="error") == {"broken"}
        assert ids(flagged="false") == {"clean", "broken"}
        assert ids(content_id="c7") == {f"e{i:03d}" for i in range(230) if i % 50 == 7}
        assert ids(action="review", content_id="c7") == {"e007", "e057", "e107", "e157", "e207"}
        assert ids(until="2000-01-01T00:00:00Z") == set()
        assert len(ids(since=(datetime.now(timezone.utc) - timedelta(hours=1)).isoformat())) == 232
        # SQL in a filter is a value, nothing more.
        assert ids(source=HOSTILE) == set() and ids(content_id=HOSTILE) == set() and ids(category=HOSTILE) == set()
        assert api.get(f"{API}/content/{HOSTILE}", headers=reader).status_code == 404
    with engine.connect() as conn:
        assert conn.execute(select(verdicts_table.c.id)).first() is not None


@pytest.mark.parametrize(("query", "parameter"), [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=ten", "limit"), ("flagged=maybe", "flagged"),
    ("status=bogus", "status"), ("since=yesterday", "since"), ("until=2026-13-01", "until"),
    ("since=2026-12-02&until=2026-12-01", "until"), ("cursor=bm9wZQ", "cursor"), ("cursor=%00", "cursor"),
    ("sorce=web", "sorce"), (f"source={'x' * 256}", "source"), ("category=", "category"),
])
def test_a_bad_filter_is_a_clear_422(context, query: str, parameter: str) -> None:
    reader = token_for(context, "svc")
    with client(context) as api:
        answer = api.get(f"{API}/verdicts?{query}", headers=reader)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] and parameter in [p["parameter"] for p in body["problems"]], body


def test_other_lists_validate_their_filters(context) -> None:
    reader = token_for(context, "svc")
    lead = token_for(context, "boss", Role.LEAD)
    with client(context) as api:
        for path in ("/review-items?reason=bogus", "/review-items?status=open", "/decisions?kind=vote",
                     "/decisions?outcome=maybe", "/counts?since=2020-01-01&until=2021-01-01", "/policies?limit=0",
                     "/review-items?limit=1000", "/queue?x=1"):
            assert api.get(API + path, headers=reader).status_code == 422, path
        assert api.get(f"{API}/audit?item_id=0", headers=lead).status_code == 422
        assert api.get(f"{API}/audit?item_id=abc", headers=lead).status_code == 422
    assert set(ReasonName.__args__) == {r.value for r in ReviewReason}  # type: ignore[attr-defined]


def test_one_content_id_has_its_whole_history_and_the_views_state(context, engine: Engine) -> None:
    store = VerdictStore(engine)
    store.save_batch([flagged("first", content_id="cat", action="review")])
    store.save_batch([flagged("second", content_id="cat", action="review", source="web")])
    writer = token_for(context, "bot", Role.REVIEWER, Scope.WRITE)
    with client(context) as api:
        history = api.get(f"{API}/content/cat", headers=writer).json()
        assert [v["event_id"] for v in history["verdicts"]] == ["second", "first"]
        assert len(history["review_items"]) == 2 and history["decisions"] == []
        assert history["state"] == _view_state(engine, "cat") == "in_review"
        item = history["review_items"][0]["id"]
        api.post(f"{API}/review-items/{item}/claim", headers=writer)
        api.post(f"{API}/review-items/{item}/decisions", headers=writer,
                 json={"categories": {"violence": False}, "reason": "a cartoon"})
        history = api.get(f"{API}/content/cat", headers=writer).json()
        assert [d["outcome"] for d in history["decisions"]] == ["not_violating"]
        assert history["state"] == _view_state(engine, "cat") == "kept"
        detail = api.get(f"{API}/verdicts/second", headers=writer).json()
        assert detail["review_item"]["event_id"] == "second" and detail["policy_url"] == f"{API}/policies/{'ab' * 32}"
        assert api.get(f"{API}/verdicts/nothing", headers=writer).status_code == 404
        assert api.get(f"{API}/content/nothing", headers=writer).status_code == 404


def _view_state(engine: Engine, content_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT state FROM moderation_v1_content_state WHERE content_id = :c"),
                                {"c": content_id}).scalar_one())


def test_counts_are_the_hourly_views(context, engine: Engine) -> None:
    store = VerdictStore(engine)
    store.save_batch([flagged(f"b{i}", source=("app", "web")[i % 2]) for i in range(7)])
    store.save_batch([flagged("clean", flagged=False, action="allow"), make_error_verdict("broken")])
    reader = token_for(context, "svc")
    with client(context) as api:
        answer = api.get(f"{API}/counts", headers=reader).json()
        filtered = api.get(f"{API}/counts?source=web", headers=reader).json()
    with engine.connect() as conn:
        view = conn.execute(text(
            "SELECT source, status, category, action, verdicts FROM moderation_v1_counts_hourly"
        )).all()
    got = sorted((r["source"], r["status"], r["category"], r["action"], r["verdicts"]) for r in answer["rows"])
    assert got == sorted(tuple(r) for r in view)
    assert sum(r["verdicts"] for r in filtered["rows"]) == 3


def test_queue_policies_and_media(context, engine: Engine, media: MemoryMedia) -> None:
    from moderation.policy import parse_policy
    from tests.support.paths import POLICY

    policy = parse_policy(POLICY.read_text(), str(POLICY))
    media.files["k1"] = b"\xff\xd8jpeg bytes"
    VerdictStore(engine).save_batch(
        [flagged("e1", policy_hash=policy.sha256, media=ReviewMedia(MediaStatus.STORED, key="k1", width=4, height=4)),
         flagged("e2", action="review", policy_hash=policy.sha256)],
        [policy],
    )
    reader = token_for(context, "svc")
    with client(context) as api:
        queues = api.get(f"{API}/queue", headers=reader).json()
        assert sum(q["pending"] for q in queues) == 2 and all(q["oldest_age_s"] >= 0 for q in queues)
        listed = api.get(f"{API}/policies", headers=reader).json()
        assert [p["policy_hash"] for p in listed] == [policy.sha256]
        stored = api.get(f"{API}/policies/{policy.sha256}", headers=reader).json()
        assert stored["text"] == POLICY.read_text() and stored["version"] == policy.policy.version
        image = api.get(f"{API}/review-items/1/media", headers=reader)
        assert image.status_code == 200 and image.content == b"\xff\xd8jpeg bytes"
        assert image.headers["content-type"] == "image/jpeg"
        assert api.get(f"{API}/review-items/2/media", headers=reader).status_code == 404
        items = api.get(f"{API}/review-items?status=pending&limit=1", headers=reader).json()
        assert len(items["items"]) == 1 and items["next_cursor"]
        rest = api.get(f"{API}/review-items", headers=reader,
                       params={"status": "pending", "cursor": items["next_cursor"]}).json()
        assert [i["id"] for i in items["items"] + rest["items"]] == [2, 1]
    with engine.connect() as conn:
        viewed = conn.execute(select(review_audit_table).where(review_audit_table.c.action == "media_view")).one()
    assert viewed.actor == "svc" and viewed.detail["token"] == "svc-read"


def test_the_openapi_document_describes_every_endpoint(context) -> None:
    reader = token_for(context, "svc")
    with client(context) as api:
        document = api.get(f"{API}/openapi.json", headers=reader).json()
    assert document["info"]["version"] == "1"
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary"), (method, path)
            assert "401" in operation["responses"] and "422" in operation["responses"], (method, path)
    verdicts = {p["name"] for p in document["paths"]["/verdicts"]["get"]["parameters"]}
    assert {"content_id", "source", "category", "action", "status", "uncertain", "since", "until",
            "limit", "cursor"} <= verdicts


def test_token_commands_create_list_and_revoke(sqlite_url: str) -> None:
    from tests.support.cli import moderation

    upgrade(sqlite_url)
    env = {"MODERATION_DATABASE__URL": sqlite_url}
    assert moderation("console", "user", "add", "grafana", "--proxy-only", env=env).returncode == 0
    missing = moderation("console", "token", "create", "dash", "--user", "nobody", env=env)
    assert missing.returncode == 2 and "no account 'nobody'" in missing.stderr and "Traceback" not in missing.stderr
    created = moderation("console", "token", "create", "dashboards", "--user", "grafana", "--expires-days", "30",
                         env=env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()  # stdout holds the secret alone: `... | kubectl create secret ...`
    assert re.fullmatch(r"mdt_[A-Za-z0-9_-]{40,}", secret) and "shown once" in created.stderr
    engine = create_engine_for(sqlite_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(api_tokens_table)).one()
        assert secret not in str(tuple(stored)) and stored.scope == "read" and stored.expires_at is not None
        context = console_context(engine)
        with client(context) as api:
            headers = {"Authorization": f"Bearer {secret}"}
            assert api.get(f"{API}/whoami", headers=headers).json()["token_name"] == "dashboards"
            listed = moderation("console", "token", "list", env=env)
            assert listed.returncode == 0 and "dashboards\tgrafana\tread" in listed.stdout
            assert secret not in listed.stdout and "active" in listed.stdout
            revoked = moderation("console", "token", "revoke", str(stored.id), env=env)
            assert revoked.returncode == 0 and "revoked token" in revoked.stdout
            assert api.get(f"{API}/whoami", headers=headers).status_code == 401
        again = moderation("console", "token", "revoke", str(stored.id), env=env)
        assert again.returncode == 2 and "revoked already" in again.stderr
        with engine.connect() as conn:
            query = select(review_audit_table.c.action).order_by(review_audit_table.c.id)
            actions = list(conn.execute(query).scalars())
        assert actions[-2:] == ["token_create", "token_revoke"]
    finally:
        engine.dispose()
