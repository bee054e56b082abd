"""Search over stored embeddings, on SQLite and PostgreSQL: verdicts and embeddings written by the real
moderator and store, queries embedded by the test model's towers, and `moderation search` as a process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, update

from moderation.clip_scorer import ClipScorer
from moderation.moderator import Moderator
from moderation.policy import parse_policy
from moderation.search import ExactIndex, FaissIndex, Filters, SearchIndex
from moderation.search.queries import image_vector, text_vector
from moderation.settings import ImageSettings
from moderation.storage import VerdictStore, create_engine_for, upgrade
from moderation.storage.models import verdicts_table
from tests.support.cli import moderation
from tests.support.events import event
from tests.support.images import png
from tests.support.policies import colour_policy

# colour -> (count, source); red goes to review, yellow is blocked, the rest are safe under colour_policy().
TRAFFIC = {"red": (3, "uploads"), "yellow": (3, "chat"), "blue": (2, "uploads"), "green": (2, "chat"),
           "white": (1, "uploads"), "black": (1, "uploads")}
OLD = datetime(2026, 1, 1, tzinfo=timezone.utc)


def save(engine: Engine, scorer: ClipScorer, events: list) -> None:  # type: ignore[type-arg]
    moderator = Moderator(scorer, parse_policy(colour_policy("live-1")), ImageSettings(), loader_threads=2)
    try:
        VerdictStore(engine).save_batch(moderator.moderate(events))
    finally:
        moderator.close()


@pytest.fixture
def stored(database_url: str, scorer: ClipScorer) -> Iterator[Engine]:
    """The database with TRAFFIC's verdicts and embeddings; the blue ones were created long ago."""
    upgrade(database_url)
    engine = create_engine_for(database_url)
    events = [event(f"{colour}-{i}", png(colour, i), source) for colour, (n, source) in TRAFFIC.items()
              for i in range(n)]
    save(engine, scorer, events)
    with engine.begin() as conn:
        conn.execute(update(verdicts_table).where(verdicts_table.c.event_id.like("blue-%")).values(created_at=OLD))
    yield engine
    engine.dispose()


def colours(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [hit.row.event_id.split("-")[0] for hit in hits]


@pytest.mark.parametrize("factory", [ExactIndex, FaissIndex], ids=["exact", "faiss"])
def test_text_image_and_like_queries_find_their_colour_first(stored: Engine, scorer: ClipScorer, factory: type) -> None:
    index = SearchIndex(stored, scorer.stored_model_ids, factory)
    assert index.build() == 12 and index.size == 12
    assert colours(index.search(text_vector(scorer, "a red picture"), 3)) == ["red"] * 3
    assert colours(index.search(image_vector(scorer, png("red", 99)), 3)) == ["red"] * 3
    like = index.like("content-yellow-1")  # a content id; an event id works too
    assert like is not None and index.like("yellow-1") is not None
    hits = index.search(like, 3)
    assert colours(hits) == ["yellow"] * 3 and hits[0].row.event_id == "yellow-1"
    assert hits[0].score == pytest.approx(1.0, abs=1e-2) and hits[0].row.action == "block"
    assert index.like("no-such-content") is None


def test_filters_hold(stored: Engine, scorer: ClipScorer) -> None:
    index = SearchIndex(stored, scorer.stored_model_ids)
    index.build()
    red = text_vector(scorer, "a red picture")
    assert {h.row.source for h in index.search(red, 12, Filters(sources=("chat",)))} == {"chat"}
    assert set(colours(index.search(red, 12, Filters(flagged=True)))) == {"red", "yellow"}
    assert "red" not in colours(index.search(red, 12, Filters(flagged=False)))
    assert set(colours(index.search(red, 12, Filters(categories=("yellow",))))) == {"yellow"}
    assert set(colours(index.search(red, 12, Filters(until=OLD + timedelta(days=1))))) == {"blue"}
    recent = colours(index.search(red, 12, Filters(since=OLD + timedelta(days=1))))
    assert len(recent) == 10 and "blue" not in recent
    hostile = Filters(sources=("uploads' OR '1'='1", "x\"; DROP TABLE verdicts; --"), categories=("%",))
    assert index.search(red, 12, hostile) == []
    assert len(index.search(red, 12)) == 12  # nothing dropped


def test_approximate_index_agrees_with_the_exact_one(stored: Engine, scorer: ClipScorer) -> None:
    exact = SearchIndex(stored, scorer.stored_model_ids, ExactIndex)
    # Trained on the 12 rows at once (a real one waits for 39 per list): the IVF path, not the exact stand-in.
    approximate = SearchIndex(stored, scorer.stored_model_ids, lambda dim: FaissIndex(dim, 2, 2, min_train=8))
    exact.build(), approximate.build()
    for text in ("a red picture", "a yellow picture", "a blue picture"):
        query = text_vector(scorer, text)
        # Same colours in the same order; 8-bit codes may reorder near-ties between pictures of one colour.
        truth, found = exact.search(query, 5), approximate.search(query, 5)
        assert colours(found) == colours(truth)
        assert {h.row.event_id for h in found[:3]} == {h.row.event_id for h in truth[:3]}


def test_refresh_picks_up_a_newly_saved_verdict(stored: Engine, scorer: ClipScorer) -> None:
    index = SearchIndex(stored, scorer.stored_model_ids, refresh_every=0.0)
    index.build()
    assert index.refresh() == 0  # the overlap window re-reads recent rows but adds none twice
    save(stored, scorer, [event("late-red", png("red", 50), "uploads")])
    hits = index.search(image_vector(scorer, png("red", 50)), 1)  # refreshes first: refresh_every is 0
    assert index.size == 13 and hits[0].row.event_id == "late-red"


def env_for(url: str, model: Path) -> dict[str, str]:
    return {"MODERATION_DATABASE__URL": url, "MODERATION_MODEL__NAME_OR_PATH": str(model),
            "MODERATION_MODEL__DEVICE": "cpu"}


def test_search_command(stored: Engine, test_model_dir: Path, tmp_path: Path) -> None:
    env = env_for(stored.url.render_as_string(hide_password=False), test_model_dir)
    result = moderation("search", "a yellow picture", "-k", "3", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "score", "content"] and len(lines) == 4
    assert all("content-yellow-" in line and "chat" in line and "block" in line for line in lines[1:])
    assert "building the search index: 12 embeddings" in result.stderr

    picture = tmp_path / "query.png"
    picture.write_bytes(png("green", 7))
    result = moderation("search", "--image", str(picture), "-k", "2", "--json", "--exact", env=env)
    assert result.returncode == 0, result.stderr
    assert [hit["event_id"].split("-")[0] for hit in json.loads(result.stdout)] == ["green", "green"]

    result = moderation("search", "--like", "red-0", "--source", "chat", "--not-flagged", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert {(hit["source"], hit["flagged"]) for hit in json.loads(result.stdout)} == {("chat", False)}


def test_search_command_errors_are_one_line(stored: Engine, test_model_dir: Path, tmp_path: Path) -> None:
    env = env_for(stored.url.render_as_string(hide_password=False), test_model_dir)
    cases = {
        ("search",): "give exactly one query",
        ("search", "red", "--like", "red-0"): "give exactly one query",
        ("search", "--like", "nobody"): "no stored embedding for event or content id 'nobody'",
        ("search", "--image", str(tmp_path / "missing.png")): "cannot read image",
    }
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    cases[("search", "--image", str(garbage))] = "cannot use image"
    for args, message in cases.items():
        result = moderation(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(empty)
    result = moderation("search", "red", env=env_for(empty, test_model_dir))
    assert result.returncode == 1 and "no stored embeddings to search" in result.stderr.splitlines()[-1]
    result = moderation("search", "red", env=env_for(empty, tmp_path / "no-model"))
    first = result.stderr.splitlines()[0]  # the loader's own message, with its how-to-fix lines after it
    assert result.returncode != 0 and first.startswith("error: CLIP model") and "not found" in first


def test_query_vectors_are_normalised(scorer: ClipScorer) -> None:
    assert np.linalg.norm(text_vector(scorer, "a red picture")) == pytest.approx(1.0, abs=1e-3)
    assert np.linalg.norm(image_vector(scorer, png("red"))) == pytest.approx(1.0, abs=1e-2)
