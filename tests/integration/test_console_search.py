"""Search in the console and its API, on SQLite and PostgreSQL: verdicts and embeddings written by the real
moderator, queries embedded by the test model's towers, one long-lived index refreshed as verdicts come."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from consumers.console.search import ConsoleSearch
from moderation.clip_scorer import ClipScorer
from moderation.review.values import Role
from moderation.search import ExactIndex
from moderation.storage import create_engine_for, upgrade
from moderation.storage.api_tokens import ApiTokens, Scope
from moderation.storage.models import review_audit_table, review_items_table
from tests.integration.test_search import TRAFFIC, save
from tests.support.console import add_user, client, console_context, csrf_of, logged_in
from tests.support.events import event
from tests.support.images import png

API = "/api/v1"


@pytest.fixture
def engine(database_url: str, scorer: ClipScorer) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    save(engine, scorer, [event(f"{colour}-{i}", png(colour, i), source)
                          for colour, (n, source) in TRAFFIC.items() for i in range(n)])
    yield engine
    engine.dispose()


@pytest.fixture
def context(engine: Engine, scorer: ClipScorer):  # noqa: ANN201 - a ConsoleContext
    context = console_context(engine)
    context.search = ConsoleSearch(engine, lambda: scorer, index_factory=ExactIndex, refresh_every=0.0).start()
    assert context.search.wait(60) and context.search.status.ready, context.search.status
    return context


def reader(context: Any) -> dict[str, str]:
    add_user(context, "svc", Role.REVIEWER, password=None)
    secret, _ = ApiTokens(context.verdicts.engine).create("search", "svc", Scope.READ, by="test")
    return {"Authorization": f"Bearer {secret}"}


def colours(answer: Any) -> list[str]:
    return [hit["event_id"].split("-")[0] for hit in answer.json()["hits"]]


def test_search_by_text_image_and_like_through_the_api(context, scorer: ClipScorer) -> None:
    headers = reader(context)
    with client(context) as api:
        red = api.get(f"{API}/search", params={"text": "a red picture", "k": 3}, headers=headers)
        assert red.status_code == 200, red.text
        assert colours(red) == ["red"] * 3 and red.json()["index_size"] == 12
        # The red ones went to review: each hit names its review item.
        assert all(hit["review_item_id"] for hit in red.json()["hits"])
        image = api.post(f"{API}/search/image", params={"k": 3}, headers=headers,
                         files={"image": ("q.png", png("yellow", 77), "image/png")})
        assert image.status_code == 200, image.text
        assert colours(image) == ["yellow"] * 3
        like = api.get(f"{API}/search", params={"like": "content-blue-1", "k": 2}, headers=headers)
        assert colours(like) == ["blue", "blue"] and like.json()["hits"][0]["event_id"] == "blue-1"
        chat = api.get(f"{API}/search", params={"text": "a red picture", "k": 12, "source": "chat"}, headers=headers)
        assert {hit["source"] for hit in chat.json()["hits"]} == {"chat"}
        flagged = api.get(f"{API}/search", params={"text": "a red picture", "k": 12, "flagged": "true"},
                          headers=headers)
        assert set(colours(flagged)) == {"red", "yellow"}
        # Harmless metacharacters, clear errors.
        hostile = api.get(f"{API}/search", headers=headers,
                          params={"text": "x' OR 1=1 --", "source": "'; DROP TABLE verdicts; --"})
        assert hostile.status_code == 200 and hostile.json()["hits"] == []
        for params in ({}, {"text": "red", "like": "x"}, {"text": "red", "k": 0}, {"text": "red", "k": 101},
                       {"text": " "}, {"text": "red", "flagged": "maybe"}, {"text": "red", "colour": "red"}):
            assert api.get(f"{API}/search", params=params, headers=headers).status_code == 422, params
        assert api.get(f"{API}/search", params={"like": "no-such-item"}, headers=headers).status_code == 404
        junk = {"image": ("q.png", b"not an image", "image/png")}
        broken = api.post(f"{API}/search/image", headers=headers, files=junk)
        assert broken.status_code == 422 and "image" in broken.json()["error"]
        assert api.get(f"{API}/search", params={"text": "red"}).status_code == 401
        assert api.post(f"{API}/search/image", files=junk).status_code == 401


def test_a_new_verdict_is_found_by_the_running_index(context, engine: Engine, scorer: ClipScorer) -> None:
    headers = reader(context)
    save(engine, scorer, [event("late-white", png("white", 61), "uploads")])
    with client(context) as api:
        found = api.post(f"{API}/search/image", params={"k": 1}, headers=headers,
                         files={"image": ("q.png", png("white", 61), "image/png")}).json()
    assert found["hits"][0]["event_id"] == "late-white" and found["index_size"] == 13


def test_an_index_that_is_not_ready_says_why(engine: Engine) -> None:
    def broken() -> ClipScorer:
        raise RuntimeError("no weights here")

    context = console_context(engine)
    context.search = ConsoleSearch(engine, broken).start()
    assert context.search.wait(30)
    headers = reader(context)
    with client(context) as api:
        answer = api.get(f"{API}/search", params={"text": "red"}, headers=headers)
        assert answer.status_code == 503 and "no weights here" in answer.json()["error"]
    context.search = None
    with client(context) as api:
        assert api.get(f"{API}/search", params={"text": "red"}, headers=headers).status_code == 503
    with logged_in(context, "alice") as browser:
        page = browser.get("/search", params={"q": "red"})
        assert page.status_code == 200 and "search is off" in page.text


def test_the_search_page_shows_hits_and_audits_the_query(context, engine: Engine) -> None:
    with engine.begin() as conn:  # reviewer copies for the yellow items (the moderator alone stores none)
        conn.execute(update(review_items_table).where(review_items_table.c.event_id.like("yellow-%"))
                     .values(media_status="stored", media_key="k", media_width=8, media_height=8))
    with logged_in(context, "alice") as browser:
        empty = browser.get("/search")
        assert empty.status_code == 200 and 'name="q"' in empty.text and "12 images" in empty.text
        page = browser.get("/search", params={"q": "a yellow picture"})
        assert page.status_code == 200
        assert page.text.count('<tr>') >= 12 and "content-yellow-0" in page.text
        assert page.text.index("content-yellow") < page.text.index("content-blue")
        # Yellow is blocked and went to review: its thumbnail comes from the console, blurred by default.
        assert 'class="media thumb blurred' in page.text and 'src="/media/' in page.text
        like = browser.get("/search", params={"like": "yellow-1", "flagged": "not_flagged"})
        assert "content-yellow" not in like.text and "more like this" in like.text
        bad = browser.get("/search", params={"q": "red", "since": "yesterday"})
        assert bad.status_code == 422
        uploaded = browser.post("/search", data={"csrf": csrf_of(browser, "/search")},
                                files={"image": ("q.png", png("red", 5), "image/png")})
        assert uploaded.status_code == 200 and uploaded.text.index("content-red") < uploaded.text.index("content-blue")
        assert browser.post("/search", files={"image": ("q.png", png("red", 5), "image/png")}).status_code == 403
        hostile = browser.get("/search", params={"q": "<script>alert(1)</script>"})
        assert "<script>alert(1)" not in hostile.text and "&lt;script&gt;alert(1)" in hostile.text
    with engine.connect() as conn:
        searches = conn.execute(select(review_audit_table).where(review_audit_table.c.action == "search")).all()
    assert [s.detail["kind"] for s in searches] == ["text", "like", "image", "text"]
    assert searches[0].actor == "alice" and searches[0].detail["query"] == "a yellow picture"
